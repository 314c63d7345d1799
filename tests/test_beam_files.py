"""pipeline.beam_files: the Beam-side file helpers keep URLs intact, publish whole files, and delete overlapping
listings without tripping over what is already gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import beam_files


def test_urls_are_never_folded_by_pathlib():
    url = "gs://bucket/runs/eval"
    assert not beam_files.is_local(url) and beam_files.is_local("/tmp/x") and beam_files.is_local("rel/x")
    assert beam_files.native(url) == url and isinstance(beam_files.native("/tmp/x"), Path)
    assert beam_files.absolute(url) == url and beam_files.absolute("rel").startswith("/")
    assert beam_files.join(url, "metrics.json") == "gs://bucket/runs/eval/metrics.json"
    assert beam_files.join("gs://bucket/runs/", "vocab", "a.txt") == "gs://bucket/runs/vocab/a.txt"


def test_publish_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "doc.json"
    beam_files.publish_json(path, {"a": 1})
    beam_files.publish_json(path, {"a": 2})
    assert beam_files.read_json(path) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["doc.json"]
    assert not any(beam_files.TMP_SUFFIX in p.name for p in tmp_path.rglob("*"))


def test_match_sorted_and_empty(tmp_path):
    for name in ("b.txt", "a.txt", "c.csv"):
        beam_files.write_text(tmp_path / name, name)
    assert beam_files.match(tmp_path / "*.txt") == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert beam_files.match(tmp_path / "nothing-*") == []


def test_delete_tolerates_overlap_and_missing(tmp_path):
    beam_files.write_text(tmp_path / "s" / "vocab" / "a.txt", "x")
    beam_files.write_text(tmp_path / "s" / "counts.json", "{}")
    listing = (beam_files.match(tmp_path / "s" / "vocab" / "*") + beam_files.match(tmp_path / "s" / "*")
               + [str(tmp_path / "s"), str(tmp_path / "s" / "counts.json"), str(tmp_path / "gone")])
    beam_files.delete(listing)
    assert not (tmp_path / "s").exists()


def test_mkdirs_local_and_missing_read_raises(tmp_path):
    beam_files.mkdirs(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    with pytest.raises(Exception, match="nope"):
        beam_files.read_text(tmp_path / "nope.txt")
