"""Integration tests of the whole preprocessing job on simulator rows with planted bad rows, and on real data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import feature_specs
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from conftest import shared_data
from feature_specs import load_spec
from feature_specs.numeric import pre_transform
from feature_specs.artifacts import list_shards, read_manifest, read_stats, read_vocab
from feature_specs.derive import parse_spec
from pipeline.preprocess.preprocess_job import PreprocessError, preprocess, run
from pipeline.simulator.click_logs import simulate
from pipeline.preprocess.train_eval_split import hash_fraction

IN_PROCESS = ["--runner=FnApiRunner"]
PLANTED = {"empty_line": 2, "column_count": 2, "bad_number": 1, "bad_label": 1, "invalid_encoding": 1,
           "missing_group_key": 1}


@pytest.fixture(scope="module")
def sim_input(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """1,500 simulator rows (gzipped, to exercise transparent decompression) plus planted bad lines."""
    d = tmp_path_factory.mktemp("sim")
    res = simulate(1500, d / "raw", seed=3)
    text = res.click_files[0].read_bytes()
    header, *lines = text.rstrip(b"\n").split(b"\n")
    good = lines[0].split(b",")
    bad = [b"", b"   ", b"1,2,3", lines[1] + b",extra",
           b",".join(good[:28] + [b"not-a-number"] + good[29:]),   # ad_price
           b",".join(good[:1] + [b"7"] + good[2:]),                # clk = 7
           b",".join(good[:3] + [b"\xff\xfe"] + good[4:]),         # u_gender not UTF-8
           b",".join(good[:2] + [b"NULL"] + good[3:])]             # user_id missing
    mixed = lines[:700] + bad + lines[700:]
    path = d / "clicks-00000.csv.gz"
    path.write_bytes(gzip.compress(b"\n".join([header, *mixed]) + b"\n"))
    frame = pd.read_csv(res.click_files[0], dtype=str, keep_default_na=False)
    return path, frame


@pytest.fixture(scope="module")
def job(sim_input, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "prep"
    preprocess("synthetic", str(sim_input[0]), str(out), beam_args=IN_PROCESS)
    return out


def read_records(out: Path, split: str) -> dict:
    spec = load_spec("synthetic")
    ds = tf.data.TFRecordDataset(list_shards(out, split), compression_type="GZIP").batch(100_000)
    return {k: v for k, v in tf.io.parse_example(next(iter(ds)), parse_spec(spec)).items()}


def test_counts_add_up_and_manifest(job, sim_input):
    m = read_manifest(job)
    rows = m["rows"]
    assert rows["read"] == 1500 + sum(PLANTED.values())
    assert rows["rejected"] == PLANTED
    assert rows["read"] == rows["written"]["train"] + rows["written"]["eval"] + rows["rejected_total"]
    assert m["spec_hash"] == feature_specs.spec_hash(load_spec("synthetic"))
    assert m["split"]["method"] == "hash_group" and m["inputs"]["files"] == [str(sim_input[0])]
    assert m["metrics"]["rejected_empty_line"] == 2 and m["metrics"]["rows_in"] == rows["read"]
    assert (job / "spec.yaml").read_text() == Path(load_spec("synthetic").path).read_text()
    assert not (job / "_staging").exists()
    rejected = [json.loads(line) for f in sorted((job / "rejected").glob("*.jsonl")) for line in f.open()]
    assert sorted(r["reason"] for r in rejected) == sorted(k for k, n in PLANTED.items() for _ in range(n))
    enc = next(r for r in rejected if r["reason"] == "invalid_encoding")
    assert "\ufffd" in enc["line"] and enc["file"] == str(sim_input[0])


def test_vocab_and_stats_equal_pandas_on_train_rows(job, sim_input):
    spec = load_spec("synthetic")
    df = sim_input[1]
    train = df[[hash_fraction(spec.split.seed, u) >= spec.split.eval_fraction for u in df["user_id"]]]
    stats = read_stats(job)
    assert stats.train_rows == len(train) == read_manifest(job)["rows"]["written"]["train"]
    assert stats.label_rate == pytest.approx(train["clk"].astype(float).mean(), rel=1e-12)
    for f in spec.by_kind("numeric"):
        raw = pd.to_numeric(train[f.source].replace("NULL", ""), errors="coerce")
        col = pd.Series(pre_transform(f, raw), index=raw.index)  # stats describe the model's transform input
        s = stats.numeric[f.name]
        assert (s.count, s.missing) == (col.notna().sum(), col.isna().sum())
        assert s.mean == pytest.approx(col.mean(), rel=1e-9) and s.std == pytest.approx(col.std(ddof=0), rel=1e-9)
        assert (s.min, s.max) == (col.min(), col.max())
        if f.transform == "bucketize":
            assert len(s.boundaries) >= f.num_buckets // 2
            for i, b in enumerate(s.boundaries[:3], 1):  # exact quantiles on data this small
                assert (col <= b).mean() == pytest.approx(i / f.num_buckets, abs=0.05)
    for f in spec.vocab_features:
        tokens = [t for t in train[f.source] if t not in ("", "NULL")]
        for g in spec.features:
            if g.shares_embedding_with == f.name:
                for seq in train[g.source]:
                    toks = [t for t in seq.split(g.delimiter) if t not in ("", "NULL")]
                    tokens.extend(toks[-g.max_length:])
        counts = pd.Series(tokens, dtype=object).value_counts()
        expected = sorted(((t, int(c)) for t, c in counts.items() if c >= f.vocab.min_count),
                          key=lambda tc: (-tc[1], tc[0]))[:f.vocab.top_k]
        assert read_vocab(job, f.name) == expected, f.name
        assert stats.vocab_sizes[f.name] == len(expected)


def test_splits_disjoint_by_user_and_records_parse_back(job, sim_input):
    train, ev = read_records(job, "train"), read_records(job, "eval")
    tu, eu = set(train["user_id"].numpy()), set(ev["user_id"].numpy())
    assert tu and eu and not (tu & eu)
    df = sim_input[1].set_index("req_id")
    got = pd.DataFrame({"user_id": train["user_id"].numpy().astype(str), "ad_id": train["ad_id"].numpy().astype(str),
                        "ad_price": train["ad_price"].numpy(), "clk": train["clk"].numpy(),
                        "hist_cate": [[t.decode() for t in r] for r in train["hist_cate"].to_list()]})
    want = df[[hash_fraction(0, u) >= 0.1 for u in df["user_id"]]]
    assert sorted(got["user_id"]) == sorted(want["user_id"])
    key = lambda fr: fr.sort_values(["user_id", "ad_id", "clk"]).reset_index(drop=True)  # noqa: E731
    g, w = key(got), key(want.assign(clk=want["clk"].astype(float)))
    np.testing.assert_allclose(g["ad_price"], pd.to_numeric(w["ad_price"].replace("NULL", "")).fillna(0.0)
                               .astype(np.float32), rtol=1e-6)
    assert g["hist_cate"].tolist() == [[t for t in s.split("|") if t][-20:] for s in w["hist_cate"]]


def test_too_many_rejects_fails_with_counts(sim_input, tmp_path):
    with pytest.raises(PreprocessError, match=r"8 of 1508 rows rejected .*empty_line: 2"):
        preprocess("synthetic", str(sim_input[0]), str(tmp_path / "o"), beam_args=IN_PROCESS,
                   max_bad_fraction=0.001)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_existing_output_needs_overwrite(job, sim_input, capsys):
    argv = ["--spec", "synthetic", "--input", str(sim_input[0]), "--output", str(job), *IN_PROCESS]
    assert run(argv) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_header_mismatch_and_missing_input(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        preprocess("synthetic", str(tmp_path / "x.csv"), str(tmp_path / "o"), beam_args=IN_PROCESS)
    with pytest.raises(ValueError, match="matches no file"):
        preprocess("synthetic", str(tmp_path / "nothing-*.csv"), str(tmp_path / "o"), beam_args=IN_PROCESS)


@pytest.mark.slow
def test_multi_process_runner_gives_the_same_artifacts(job, sim_input, tmp_path):
    out = preprocess("synthetic", str(sim_input[0]), str(tmp_path / "mp"), num_shards=3)  # CLI default runner
    assert read_manifest(out)["rows"] == read_manifest(job)["rows"]
    assert len(list_shards(out, "train")) == 3
    assert read_stats(out) == read_stats(job)
    for f in load_spec("synthetic").vocab_features:
        assert read_vocab(out, f.name) == read_vocab(job, f.name)


# ---- real data ------------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_taobao_real_data(tmp_path):
    path = shared_data("taobao_easyrec/taobao_test_data")
    out = preprocess("taobao", str(path), str(tmp_path / "tb"), beam_args=IN_PROCESS)
    m = read_manifest(out)
    assert m["rows"]["read"] == 10_000 and m["rows"]["rejected_fraction"] < 0.01
    assert 8500 < m["rows"]["written"]["train"] < 9500
    assert 0.03 < read_stats(out).label_rate < 0.08
    spec = load_spec("taobao")
    assert "buy" not in parse_spec(spec)
    rec = read_records_for(spec, out, "eval")
    assert rec["tag_category_list"].row_lengths().numpy().max() <= 50


@pytest.mark.realdata
def test_movielens_real_data_with_joins(tmp_path):
    folder = shared_data("movielens_100k")
    if not (folder / "u.user").exists():
        pytest.skip(f"{folder / 'u.user'} is absent")
    out = preprocess("movielens", str(folder / "u.data"), str(tmp_path / "ml"), beam_args=IN_PROCESS)
    m = read_manifest(out)
    assert m["rows"]["read"] == 100_000 and m["rows"]["rejected_total"] == 0
    assert m["split"]["method"] == "time_fraction" and m["split"]["cutoff"] > 8.7e8
    assert m["rows"]["written"]["eval"] == pytest.approx(10_000, rel=0.05)
    assert read_stats(out).label_rate == pytest.approx(0.554, abs=0.02)
    spec = load_spec("movielens")
    ev = read_records_for(spec, out, "eval")
    assert ev["timestamp"].numpy().min() >= m["split"]["cutoff"]
    assert set(ev["gender"].numpy()) <= {b"M", b"F"} and ev["g_drama"].numpy().max() == 1.0


def read_records_for(spec, out: Path, split: str) -> dict:
    ds = tf.data.TFRecordDataset(list_shards(out, split), compression_type="GZIP").batch(1_000_000)
    return tf.io.parse_example(next(iter(ds)), parse_spec(spec))


@pytest.mark.realdata
def test_criteo_sample_with_delimiter_override(tmp_path):
    path = shared_data("criteo_deepctr_sample/criteo_sample.txt")
    out = preprocess("criteo", str(path), str(tmp_path / "c"), beam_args=IN_PROCESS, delimiter=",", header=True)
    m = read_manifest(out)
    assert m["rows"]["read"] == 200 and m["rows"]["rejected_total"] == 0
    assert m["format_overrides"] == {"delimiter": ",", "header": True}

