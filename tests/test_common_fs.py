"""common.fs (the TF-side file-system layer) and common.versions (the version scan and publish rule), on the local
disk and on TensorFlow's `ram://` file system, which behaves like an object store where it matters here: a folder
rename does not move the folder's files, and its rmtree leaves them behind."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import tensorflow as tf

from common import fs, versions


@pytest.fixture
def ram() -> str:
    root = f"ram://fs-test-{uuid.uuid4().hex}"
    yield root
    fs.rmtree(root)


@pytest.mark.parametrize("base, parts, want", [
    ("gs://bucket", ("a", "b.json"), "gs://bucket/a/b.json"),
    ("gs://bucket/", ("/a/", "b"), "gs://bucket/a/b"),
    ("hdfs://nn:8020/x", ("y",), "hdfs://nn:8020/x/y"),
    ("ram://", ("m", "1"), "ram://m/1"),
    ("/tmp/x", ("y", "z"), "/tmp/x/y/z"),
    (Path("rel/dir"), ("f",), "rel/dir/f"),
])
def test_join_keeps_the_scheme(base, parts, want):
    assert fs.join(base, *parts) == want


def test_names_of_urls_and_local_paths(tmp_path):
    assert fs.parent("gs://b/models/3") == "gs://b/models" and fs.basename("gs://b/models/3/") == "3"
    assert fs.scheme("gs://b/x") == "gs" and fs.scheme("/x") == "" and fs.is_local("file:///tmp/a")
    assert fs.as_str("file:///tmp/a") == "/tmp/a"
    assert fs.absolute("gs://b/x") == "gs://b/x" and fs.absolute(tmp_path / "a") == str((tmp_path / "a").resolve())
    assert fs.native(tmp_path) == tmp_path and fs.native("ram://x") == "ram://x"
    with pytest.raises(TypeError, match="path must be str"):
        fs.as_str(b"/tmp")


@pytest.mark.parametrize("where", ["local", "ram"])
def test_write_read_list_copy_remove(where, tmp_path, ram):
    root = str(tmp_path) if where == "local" else ram
    p = fs.join(root, "deep", "er", "doc.json")
    fs.write_json(p, {"a": 1})  # parents created
    assert fs.read_json(p) == {"a": 1} and fs.isfile(p) and not fs.isdir(p)
    fs.write_text(p, "replaced")
    assert fs.read_text(p) == "replaced" and fs.size(p) == 8
    assert fs.listdir(fs.join(root, "deep", "er")) == ["doc.json"]  # no temporary sibling left behind
    fs.copy(p, fs.join(root, "other", "copy.txt"))
    assert fs.listdir(root) == ["deep", "other"]
    assert fs.glob(fs.join(root, "*", "*.txt")) == [fs.join(root, "other", "copy.txt")]
    assert fs.walk_files(root) == ["deep/er/doc.json", "other/copy.txt"]
    assert fs.listdir(fs.join(root, "absent")) == []
    fs.rmtree(fs.join(root, "deep"))
    assert not fs.exists(p) and fs.walk_files(root) == ["other/copy.txt"]
    fs.rmtree(fs.join(root, "absent"))  # missing_ok
    with pytest.raises(FileNotFoundError):
        fs.rmtree(fs.join(root, "absent"), missing_ok=False)


def test_ram_rmtree_really_deletes_the_files(ram):
    """TensorFlow's own rmtree on ram:// drops the folder entry but keeps its files: fs.rmtree must not."""
    f = fs.join(ram, "a", "b", "f.txt")
    fs.write_text(f, "x")
    fs.rmtree(fs.join(ram, "a"))
    assert not tf.io.gfile.exists(f)


def _staged_model(base: str) -> str:
    """A small real SavedModel in a staging folder, with an assets.extra file like the export's."""
    m = tf.Module()
    m.v = tf.Variable(2.0)
    m.f = tf.function(lambda x: x * m.v, input_signature=[tf.TensorSpec([None], tf.float32)])
    staged = versions.staging_dir(base, uuid.uuid4().hex)
    tf.saved_model.save(m, staged)
    fs.write_text(fs.join(staged, "assets.extra", "rocketctr.json"), "{}")
    return staged


def test_version_scan_needs_saved_model_and_marker(tmp_path):
    base = str(tmp_path)
    versions.publish_version(_staged_model(base), base, 2)
    fs.write_text(fs.join(base, "5", "saved_model.pb"), "x")  # no marker: a copy in flight
    fs.write_text(fs.join(base, "7", versions.COMPLETE_MARKER), "")  # marker without the model
    fs.makedirs(fs.join(base, "notes"))
    assert list(versions.scan_versions(base)) == [2]
    assert sorted(versions.version_folders(base)) == [2, 5, 7]
    assert versions.missing_parts(fs.join(base, "5")) == [versions.COMPLETE_MARKER]
    assert versions.newest_version(base) == (2, fs.join(base, "2"))
    assert versions.next_version(base) == 8  # never reuses a number an unfinished copy holds
    assert versions.scan_versions(fs.join(base, "absent")) == {} and versions.next_version(tmp_path / "x") == 1


def test_local_publish_is_one_rename(tmp_path):
    base = str(tmp_path)
    staged = _staged_model(base)
    out = versions.publish_version(staged, base, 1)
    assert out == fs.join(base, "1") and not fs.exists(staged)
    assert versions.is_complete(out) and fs.listdir(base) == ["1"]
    with pytest.raises(versions.PublishError, match="already exists"):
        versions.publish_version(_staged_model(base), base, 1)
    with pytest.raises(versions.PublishError, match="no saved_model.pb"):
        versions.publish_version(str(tmp_path / "empty"), base, 9)


def test_object_store_publish_never_shows_a_half_version(ram, monkeypatch):
    """On ram:// every file is copied one by one. Before each copy, the state a poller could see is checked:
    our scan sees no version until the marker lands, and saved_model.pb (what stock TF Serving waits for) only
    appears once every other file is in place."""
    base = fs.join(ram, "models")
    staged = _staged_model(base)
    others = [f for f in fs.walk_files(staged) if f != versions.SAVED_MODEL]
    final = fs.join(base, "1")
    copied: list[str] = []
    real_copy = fs.copy

    def observed_copy(src, dst, overwrite=False):
        assert versions.scan_versions(base) == {}, f"a version was visible before {dst} was copied"
        if fs.exists(fs.join(final, versions.SAVED_MODEL)):
            assert all(fs.exists(fs.join(final, f)) for f in others)
        copied.append(fs.as_str(dst)[len(final) + 1:])
        real_copy(src, dst, overwrite)

    monkeypatch.setattr(fs, "copy", observed_copy)
    assert versions.publish_version(staged, base, 1) == final
    assert copied[-2:] == [versions.SAVED_MODEL, versions.COMPLETE_MARKER]
    assert sorted(copied) == sorted([*others, versions.SAVED_MODEL, versions.COMPLETE_MARKER])
    assert list(versions.scan_versions(base)) == [1] and not fs.exists(staged)
    loaded = tf.saved_model.load(final)
    assert float(loaded.f(tf.constant([3.0]))[0]) == 6.0
