"""Reliability of the preprocessing job on hostile input, through the library and the `rocketctr` CLI.

One CSV mixes good simulator rows with every kind of bad row (each planted row carries a marker in req_id,
so its dead letter can be found and its reason checked), then: under the bad-row threshold the job succeeds
and accounts for every row; over it the CLI exits non-zero saying why; a missing or unreadable input fails
up front with a message naming it (never a traceback from deep inside Beam).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from feature_specs import load_spec
from feature_specs.artifacts import read_manifest
from pipeline.simulator.click_logs import simulate
from rocketctr import cli

IN_PROCESS = ["--runner=FnApiRunner"]
COLUMNS = load_spec("synthetic").format.columns
COL = {c: i for i, c in enumerate(COLUMNS)}
MB_FIELD = 3 * 1024 * 1024  # a 3 MB sequence field (limit: --max-field-chars 65536)


def _with(fields: list[bytes], **values: bytes) -> bytes:
    out = list(fields)
    for col, v in values.items():
        out[COL[col]] = v
    return b",".join(out)


def planted_rows(good: list[bytes]) -> dict[str, tuple[bytes, str]]:
    """marker -> (raw line, expected rejection reason); the marker is the row's req_id."""
    rows: dict[str, tuple[bytes, str]] = {}

    def row(marker: str, reason: str, i: int, **values: bytes) -> None:
        fields = good[i].split(b",")
        fields[COL["req_id"]] = marker.encode()
        rows[marker] = (_with(fields, **values), reason)

    row("bad-nonnumeric-price", "bad_number", 0, ad_price=b"12.5abc")
    row("bad-nonnumeric-bid", "bad_number", 1, bid=b"one")
    row("bad-overflow-number", "bad_number", 2, ad_quality=b"1e999")
    row("bad-inf-number", "bad_number", 3, user_activity=b"-inf")
    row("bad-nan-number", "bad_number", 4, ad_hist_ctr=b"nan")
    row("bad-label-2", "bad_label", 5, clk=b"2")
    row("bad-label-minus1", "bad_label", 6, clk=b"-1")
    row("bad-label-half", "bad_label", 7, clk=b"0.5")
    row("bad-label-word", "bad_label", 8, clk=b"yes")
    row("bad-label-missing", "missing_label", 9, clk=b"")
    row("bad-utf8", "invalid_encoding", 10, u_city=b"caf\xe9\xff")
    row("bad-utf8-truncated-sequence", "invalid_encoding", 11, ad_brand=b"\xe2\x82")
    row("bad-huge-field", "oversized_field", 12, hist_cate=b"|".join([b"c1"] * (MB_FIELD // 3)))
    row("bad-no-user", "missing_group_key", 13, user_id=b"NULL")
    for marker, i, cut in (("bad-truncated-half", 14, 0.5), ("bad-truncated-short", 15, 0.1)):
        fields = good[i].split(b",")
        fields[COL["req_id"]] = marker.encode()
        line = b",".join(fields)
        rows[marker] = (line[: int(len(line) * cut)], "column_count")
    row("bad-extra-column", "column_count", 16)
    rows["bad-extra-column"] = (rows["bad-extra-column"][0] + b",surplus", "column_count")
    row("bad-extra-columns-many", "column_count", 17)
    rows["bad-extra-columns-many"] = (rows["bad-extra-columns-many"][0] + b",a,b,c,d", "column_count")
    for marker, i, delim in (("bad-semicolons", 18, b";"), ("bad-tabs", 19, b"\t"), ("bad-pipes", 20, b"|")):
        fields = good[i].split(b",")
        fields[COL["req_id"]] = marker.encode()
        rows[marker] = (delim.join(fields), "column_count")
    return rows


EMPTY_LINES = [b"", b"   ", b"\t", b""]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    """2,000 simulator rows with the planted rows spread through them (header from the synthetic spec)."""
    d = tmp_path_factory.mktemp("hostile")
    res = simulate(2000, d / "sim", seed=11)
    header, *good = res.click_files[0].read_bytes().rstrip(b"\n").split(b"\n")
    assert header.decode().split(",") == list(COLUMNS)
    planted = planted_rows(good)
    bad = [line for line, _ in planted.values()] + EMPTY_LINES
    mixed = list(good)
    for k, line in enumerate(bad):  # spread through the file, not bunched at one end
        mixed.insert((k * 97 + 13) % len(mixed), line)
    path = d / "clicks.csv"
    path.write_bytes(b"\n".join([header, *mixed]) + b"\n")
    return {"path": path, "dir": d, "good": len(good), "planted": planted, "header": header, "good_rows": good}


@pytest.fixture(scope="module")
def job(hostile) -> Path:
    out = hostile["dir"] / "prep"
    assert cli.main(["preprocess", "--spec", "synthetic", "--input", str(hostile["path"]), "--output", str(out),
                     "--max-bad-fraction", "0.02", "--", *IN_PROCESS]) == 0  # 25 of 2,025 rows: 1.2%
    return out


def _rejected(out: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "rejected").glob("*.jsonl"))
            for line in f.read_text(encoding="utf-8").splitlines()]


def test_every_planted_row_is_rejected_with_its_reason(job, hostile):
    rejected = _rejected(job)
    planted = hostile["planted"]
    by_marker: dict[str, dict] = {}
    for r in rejected:
        assert r["file"] == str(hostile["path"]) and r["detail"]
        marker = re.split(r"[,;|\t]", r["line"], maxsplit=1)[0]  # req_id, whatever the delimiter
        if marker in planted:
            assert marker not in by_marker, f"{marker} rejected twice"
            by_marker[marker] = r
    missing = sorted(set(planted) - set(by_marker))
    assert not missing, f"planted rows not found in rejected/: {missing}"
    wrong = {m: (r["reason"], planted[m][1]) for m, r in by_marker.items() if r["reason"] != planted[m][1]}
    assert not wrong, f"marker: (got, expected) {wrong}"
    empties = [r for r in rejected if r["reason"] == "empty_line"]
    assert len(empties) == len(EMPTY_LINES) and all(not r["line"].strip() for r in empties)
    assert len(rejected) == len(planted) + len(EMPTY_LINES)  # no good row rejected
    huge = by_marker["bad-huge-field"]
    assert "hist_cate" in huge["detail"] and "65536" in huge["detail"]
    assert len(huge["line"]) > MB_FIELD  # the raw line is kept whole: nothing lost silently
    assert "\ufffd" in by_marker["bad-utf8"]["line"]
    assert "ad_price" in by_marker["bad-nonnumeric-price"]["detail"]
    assert "expected 40 columns" in by_marker["bad-semicolons"]["detail"]


def test_rows_are_accounted_for(job, hostile, capsys):
    rows = read_manifest(job)["rows"]
    n_bad = len(hostile["planted"]) + len(EMPTY_LINES)
    assert rows["read"] == hostile["good"] + n_bad
    assert rows["rejected_total"] == n_bad
    assert rows["written"]["train"] + rows["written"]["eval"] == hostile["good"]
    assert rows["read"] == rows["written"]["train"] + rows["written"]["eval"] + rows["rejected_total"]
    want: dict[str, int] = {"empty_line": len(EMPTY_LINES)}
    for _, reason in hostile["planted"].values():
        want[reason] = want.get(reason, 0) + 1
    assert rows["rejected"] == want
    print(f"\nhostile preprocess: {rows['read']} rows read = {rows['written']['train']} train + "
          f"{rows['written']['eval']} eval + {rows['rejected_total']} rejected {rows['rejected']}")


def test_over_the_threshold_the_cli_fails_with_the_counts(hostile, tmp_path, capsys):
    """20 good rows + the planted ones: far over the default 1% threshold."""
    bad = [line for line, _ in hostile["planted"].values()] + EMPTY_LINES
    path = tmp_path / "mostly-bad.csv"
    path.write_bytes(b"\n".join([hostile["header"], *hostile["good_rows"][:20], *bad]) + b"\n")
    out = tmp_path / "o"
    code = cli.main(["preprocess", "--spec", "synthetic", "--input", str(path), "--output", str(out),
                     "--", *IN_PROCESS])
    err = capsys.readouterr().err
    assert code != 0
    n = len(bad)
    assert f"{n} of {n + 20} rows rejected" in err and "--max-bad-fraction" in err, err
    assert "column_count" in err and "bad_label" in err
    assert "Traceback" not in err
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("kind", ["missing", "missing_glob", "directory", "not_gzip", "broken_symlink"])
def test_missing_or_unreadable_input_is_a_clear_cli_error(kind, hostile, tmp_path, capsys):
    target = {"missing": tmp_path / "nope.csv", "missing_glob": tmp_path / "nope-*.csv",
              "directory": tmp_path / "a_folder.csv", "not_gzip": tmp_path / "clicks.csv.gz",
              "broken_symlink": tmp_path / "link.csv"}[kind]
    if kind == "directory":
        target.mkdir()
    elif kind == "not_gzip":
        target.write_bytes(hostile["header"] + b"\n" + hostile["good_rows"][0] + b"\n")  # plain text named .gz
    elif kind == "broken_symlink":
        target.symlink_to(tmp_path / "gone.csv")
    code = cli.main(["preprocess", "--spec", "synthetic", "--input", str(target), "--output", str(tmp_path / "o"),
                     "--", *IN_PROCESS])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "preprocess failed" in err and str(target) in err, err
    assert "Traceback" not in err


def test_truncated_gzip_input_is_a_clear_cli_error(hostile, tmp_path, capsys):
    """A .gz cut in the middle (a half-copied file): readable at the start, broken further in."""
    blob = gzip.compress(b"\n".join([hostile["header"], *hostile["good_rows"][:400]]) + b"\n")
    target = tmp_path / "cut.csv.gz"
    target.write_bytes(blob[: len(blob) // 2])
    code = cli.main(["preprocess", "--spec", "synthetic", "--input", str(target), "--output", str(tmp_path / "o"),
                     "--", *IN_PROCESS])
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    assert "preprocess failed" in err and str(target) in err, err[-3000:]
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_compressed_stream_check_finds_cuts_and_accepts_concatenated_members(tmp_path):
    import bz2

    from pipeline.preprocess.log_reader import compressed_stream_error

    text = b"".join(b"row %d,1,2,3\n" % i for i in range(20_000))
    whole = tmp_path / "a.csv.gz"
    whole.write_bytes(gzip.compress(text[:1000]) + gzip.compress(text[1000:]))  # two members: valid
    assert compressed_stream_error(str(whole)) is None
    assert compressed_stream_error(str(whole), chunk_bytes=7) is None
    for name, blob in (("b.csv.gz", gzip.compress(text)), ("c.csv.bz2", bz2.compress(text))):
        cut = tmp_path / name
        cut.write_bytes(blob[: len(blob) - 9])
        assert "truncated" in compressed_stream_error(str(cut))
    junk = tmp_path / "d.csv.bz2"
    junk.write_bytes(b"BZh9 not really")
    assert "corrupt bzip2" in compressed_stream_error(str(junk))
    plain = tmp_path / "e.csv"
    plain.write_bytes(text[:100])
    assert compressed_stream_error(str(plain)) is None
