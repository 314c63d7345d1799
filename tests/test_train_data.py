"""The training input pipeline: vectorised parsing into the model's input specs, the validation holdout,
exact skip-on-resume, and corrupt shards (a clear error naming the file, or skipped and counted)."""

from __future__ import annotations

import json
import struct
import zlib

import feature_specs
import pytest
import tensorflow as tf

from feature_specs import derive
from models.data import (CorruptShardError, Holdout, find_corrupt_shards, make_dataset, shard_files,
                         truncated_shards)
from models.train import train
from tests.train_helpers import fast_config, fixture_data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return fixture_data(tmp_path_factory.mktemp("train_data") / "data", rows=600)


def _labels(ds) -> list[float]:
    return [v for _, y, _ in ds for v in y.numpy().tolist()]


def test_batches_match_the_model_input_specs(data_dir, spec):
    x, y, w = next(iter(make_dataset(data_dir, spec, "train", 32, shuffle=True, seed=1)))
    specs = derive.model_input_specs(spec)
    assert set(x) == set(specs)
    for name, ts in specs.items():
        assert ts.is_compatible_with(x[name]), (name, x[name].shape, x[name].dtype)
    assert y.shape == (32,) and w.shape == (32,) and set(y.numpy().tolist()) <= {0.0, 1.0}
    assert x["hist_cate"].shape[1] <= spec.feature("hist_cate").max_length


def test_holdout_partitions_the_train_split_deterministically(data_dir, spec):
    total = len(_labels(make_dataset(data_dir, spec, "train", 64)))
    tr = len(_labels(make_dataset(data_dir, spec, "train", 64, holdout=Holdout(0.2, "train"))))
    va = len(_labels(make_dataset(data_dir, spec, "train", 64, holdout=Holdout(0.2, "validation"))))
    assert tr + va == total and 0.08 * total < va < 0.35 * total
    again = len(_labels(make_dataset(data_dir, spec, "train", 64, holdout=Holdout(0.2, "validation"))))
    assert again == va


def test_holdout_keeps_whole_users_together(data_dir, spec):
    users = lambda role: {u for x, _, _ in make_dataset(data_dir, spec, "train", 64, holdout=Holdout(0.3, role))
                          for u in x["user_id"].numpy().tolist() if u}
    assert not users("train") & users("validation")


def test_skip_resumes_the_same_shuffled_order(data_dir, spec):
    full = [b[1].numpy().tolist() for b in make_dataset(data_dir, spec, "train", 16, shuffle=True, seed=7)]
    rest = [b[1].numpy().tolist() for b in make_dataset(data_dir, spec, "train", 16, shuffle=True, seed=7,
                                                         skip_batches=5)]
    assert rest == full[5:]
    other = [b[1].numpy().tolist() for b in make_dataset(data_dir, spec, "train", 16, shuffle=True, seed=8)]
    assert other != full


def test_missing_split_names_the_pattern(tmp_path, spec):
    with pytest.raises(feature_specs.artifacts.ArtifactError, match="train"):
        make_dataset(tmp_path, spec, "train", 8)


def _truncate(path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


@pytest.fixture
def corrupt_dir(tmp_path, data_dir):
    import shutil

    out = tmp_path / "data"
    shutil.copytree(data_dir, out)
    bad = sorted(out.glob("train-*"))[1]
    _truncate(bad)
    return out, bad


def test_corrupt_shard_is_found_and_named(corrupt_dir):
    out, bad = corrupt_dir
    found = find_corrupt_shards(shard_files(out, "train"))
    assert [f for f, _ in found] == [str(bad)] and "record" in found[0][1]


def test_a_gzip_shard_cut_on_a_record_boundary_is_still_caught(tmp_path, data_dir):
    """TensorFlow's GZIP reader ends such a stream cleanly (the flake this test pins down): the records after
    the cut would vanish. The gzip end-of-stream check names the file before training starts."""
    import gzip
    import shutil

    out = tmp_path / "data"
    shutil.copytree(data_dir, out)
    bad = sorted(out.glob("train-*"))[0]
    raw = gzip.decompress(bad.read_bytes())
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    bad.write_bytes(z.compress(raw[:_record_boundary(raw)]) + z.flush(zlib.Z_SYNC_FLUSH))  # no end marker
    assert len(list(tf.data.TFRecordDataset(str(bad), compression_type="GZIP"))) > 0  # TF reads it "fine"
    assert [f for f, _ in truncated_shards(shard_files(out, "train"))] == [str(bad)]
    assert "truncated" in dict(find_corrupt_shards(shard_files(out, "train")))[str(bad)]
    with pytest.raises(CorruptShardError, match=bad.name):
        train(fast_config("light", max_steps=3, epochs=1), out, tmp_path / "run", verbose=0)


def _record_boundary(raw: bytes) -> int:
    """Offset just after the first half of the TFRecords in raw (8-byte length, 4 crc, data, 4 crc)."""
    offsets, at = [], 0
    while at < len(raw):
        at += 16 + struct.unpack("<Q", raw[at:at + 8])[0]
        offsets.append(at)
    return offsets[len(offsets) // 2]


def test_training_on_a_corrupt_shard_fails_naming_it(corrupt_dir, tmp_path):
    out, bad = corrupt_dir
    with pytest.raises(CorruptShardError, match=bad.name) as e:
        train(fast_config("light", max_steps=30, epochs=1), out, tmp_path / "run", verbose=0)
    assert "skip_corrupt_shards" in str(e.value)


def test_skip_corrupt_shards_trains_on_the_rest_and_counts(corrupt_dir, tmp_path):
    out, bad = corrupt_dir
    run = train(fast_config("light", max_steps=3, epochs=1, skip_corrupt_shards=True), out, tmp_path / "run",
                verbose=0)
    m = json.loads((run / "metrics.json").read_text())
    assert [s["file"] for s in m["skipped_shards"]] == [str(bad)] and m["steps"] == 3


def test_early_stopping_on_the_validation_slice(data_dir, tmp_path):
    """High learning rates overfit 600 rows within a few epochs: the light net's validation AUC stalls, the job
    stops after `patience` bad epochs, and the best epoch's weights are the final ones."""
    fast = {"name": "adam", "learning_rate": 0.05}
    cfg = fast_config("rocket", epochs=8, early_stopping_patience=1, validation_fraction=0.25,
                      per_tower_early_stopping=True, light_optimizer=fast, booster_optimizer=fast)
    run = train(cfg, data_dir, tmp_path / "run", verbose=0)
    m = json.loads((run / "metrics.json").read_text())
    v = m["validation"]
    assert m["stopped_early"] and m["epochs_completed"] < 8
    assert v["metric"] == "light_auc" and 1 <= v["best_epoch"] < m["epochs_completed"] and v["best"] is not None
    assert list((run / "checkpoints" / "best").glob("ckpt-*.index"))
