"""The validation slice mirrors the eval split (time / row hash / group hash), the same rows whether the train
split is streamed or cached in memory, and the training job records which rule it used."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import feature_specs
import numpy as np
import pytest
import tensorflow as tf

from feature_specs import artifacts, derive
from feature_specs.schema import Split
from models.data import make_dataset
from models.data_cache import cached_dataset, load_train_cache
from models.holdout import HoldoutError, holdout_for, method_for, time_cutoff
from models.train import train
from tests.fixtures_data import synthetic_frame, write_fixture_dataset
from tests.train_helpers import fast_config

FRACTION = 0.25
METHODS = ("hash_group", "hash_row", "time_fraction")


def _dataset_with_split(tmp: Path, method: str, rows: int = 900):
    """A fixture data folder of the synthetic spec with a per-row timestamp and the given split method."""
    text = Path(feature_specs.load_spec("synthetic").path).read_text()
    text = text.replace("split: {method: hash_group,", f"timestamp: ts\nsplit: {{method: {method},")
    text = text.replace("columns: [req_id, ", "columns: [ts, req_id, ")
    p = tmp / "spec.yaml"
    p.write_text(text)
    spec = feature_specs.load_spec(p)
    df = synthetic_frame(spec, rows, 0)
    df["ts"] = 1_600_000_000 + 60 * np.random.default_rng(1).permutation(rows)  # unique: identifies a row
    return spec, write_fixture_dataset(spec, df, tmp / "data")


def _streamed(spec, data, role):
    """(timestamp, user) of each streamed row in `role` (the timestamp is read next to the model features)."""
    h = holdout_for(spec, FRACTION, role, data_dir=str(data))
    out = []
    for raw in tf.data.TFRecordDataset(artifacts.list_shards(data, "train"), compression_type="GZIP").batch(256):
        parsed = tf.io.parse_example(raw, derive.parse_spec(spec))
        keep = h.in_slice(spec, raw, parsed).numpy()
        keep = keep if role == "validation" else ~keep
        out += [(int(t), u.decode()) for t, u, k in zip(parsed["ts"].numpy(), parsed["user_id"].numpy(), keep) if k]
    return set(out), h


def _cached(spec, data):
    c = load_train_cache(artifacts.list_shards(data, "train"), spec, FRACTION, max_mb=100)
    pick = lambda part: {(int(t), u.decode()) for t, u in zip(part.columns["ts"].numpy(),
                                                              part.columns["user_id"].numpy())}
    return pick(c.train), pick(c.validation), c


@pytest.mark.parametrize("method", METHODS)
def test_the_slice_mirrors_the_split_and_is_the_same_streamed_or_cached(tmp_path, method):
    spec, data = _dataset_with_split(tmp_path, method)
    train_rows, h = _streamed(spec, data, "train")
    val_rows, _ = _streamed(spec, data, "validation")
    total = artifacts.read_stats(data).train_rows
    assert not train_rows & val_rows and len(train_rows) + len(val_rows) == total
    assert 0.12 * total < len(val_rows) < 0.4 * total
    c_train, c_val, cache = _cached(spec, data)
    assert (c_train, c_val) == (train_rows, val_rows)  # one rule, two paths
    assert cache.holdout == h.with_role("validation")
    users = lambda rows: {u for _, u in rows if u}
    if method == "hash_group":  # whole users held out, like the eval split
        assert h.method == "hash_group" and not users(train_rows) & users(val_rows)
    elif method == "hash_row":  # users recur on both sides, as they do in a row-split eval
        assert h.method == "hash_row" and len(users(train_rows) & users(val_rows)) > 20
    else:  # the latest part of the train split
        assert h.method == "time"
        assert min(t for t, _ in val_rows) >= h.cutoff > max(t for t, _ in train_rows)
        assert abs(len(val_rows) - FRACTION * total) <= 1


def test_the_streaming_dataset_applies_the_same_slice(tmp_path):
    spec, data = _dataset_with_split(tmp_path, "time_fraction")
    h = holdout_for(spec, FRACTION, "validation", data_dir=str(data))
    streamed = sum(int(y.shape[0]) for _, y, _ in make_dataset(data, spec, "train", 64, holdout=h))
    _, c_val, cache = _cached(spec, data)
    batched = sum(int(y.shape[0]) for _, y, _ in cached_dataset(cache.validation, spec, 64))
    assert streamed == batched == len(c_val)


@pytest.mark.parametrize("method", METHODS)
def test_held_out_users_are_scored_as_unseen_only_on_a_group_split(tmp_path, method):
    """On a group-hash slice the users' ids go through the OOV path, as the eval split's unseen users do; with
    other splits (users recur) and on the rows trained on, ids are untouched. Streamed and cached agree."""
    from models.holdout import UNSEEN_PREFIX

    spec, data = _dataset_with_split(tmp_path, method)
    _, _, cache = _cached(spec, data)
    h = cache.holdout

    def ids(ds):
        return sorted(u for f, _, _ in ds for u in f["user_id"].numpy().tolist())

    streamed_val = ids(make_dataset(data, spec, "train", 64, holdout=h.with_role("validation")))
    cached_val = ids(cached_dataset(cache.validation, spec, 64, holdout=h.with_role("validation")))
    train_ids = ids(make_dataset(data, spec, "train", 64, holdout=h.with_role("train")))
    assert streamed_val == cached_val and streamed_val
    renamed = [u for u in streamed_val if u.startswith(UNSEEN_PREFIX.encode())]
    assert not any(u.startswith(UNSEEN_PREFIX.encode()) for u in train_ids)
    if method != "hash_group":
        assert not renamed
        return
    assert len(renamed) == len(streamed_val)
    vocab = set(artifacts.read_vocab_tokens(data, "user_id"))
    original = {u.decode()[len(UNSEEN_PREFIX):] for u in renamed}
    assert original <= vocab  # the held-out users are in the train split's vocabulary (rows never trained) ...
    assert not {u.decode() for u in renamed} & vocab  # ... so they are renamed out of it: scored through OOV


def test_cached_batches_are_full_shuffled_by_seed_and_resume_exactly(tmp_path):
    spec, data = _dataset_with_split(tmp_path, "hash_row")
    _, _, cache = _cached(spec, data)
    labels = lambda **kw: [b[1].numpy().tolist() for b in cached_dataset(cache.train, spec, 50, **kw)]
    full = labels(shuffle=True, seed=3)
    assert all(len(b) == 50 for b in full[:-1]) and sum(map(len, full)) == cache.train.rows
    assert labels(shuffle=True, seed=3, skip_batches=4) == full[4:]
    assert labels(shuffle=True, seed=4) != full


def test_an_oversized_split_streams_instead(tmp_path):
    spec, data = _dataset_with_split(tmp_path, "hash_row")
    assert load_train_cache(artifacts.list_shards(data, "train"), spec, FRACTION, max_mb=0.01) is None
    assert load_train_cache(artifacts.list_shards(data, "train"), spec, FRACTION, max_mb=0) is None


def test_a_time_split_without_a_timestamp_is_refused():
    spec = feature_specs.load_spec("synthetic")
    bad = dataclasses.replace(spec, split=Split(method="time_fraction"))
    with pytest.raises(HoldoutError, match="timestamp"):
        method_for(bad)
    assert method_for(dataclasses.replace(spec, group_key=None)) == "hash_row"


def test_time_cutoff_keeps_the_latest_fraction():
    ts = np.arange(100)
    assert time_cutoff(ts, 0.1) == 90 and time_cutoff(ts[::-1], 0.25) == 75
    with pytest.raises(HoldoutError):
        time_cutoff(np.zeros(0), 0.1)


@pytest.mark.parametrize("cache_mb", [100.0, 0.0])
def test_training_records_the_rule_it_validated_on(tmp_path, cache_mb):
    spec, data = _dataset_with_split(tmp_path, "time_fraction")
    cfg = fast_config("light", validation_fraction=FRACTION, epochs=2, early_stopping_patience=1,
                      cache_max_mb=cache_mb)
    cfg = dataclasses.replace(cfg, spec=str(spec.path))
    run = train(cfg, data, tmp_path / "run", verbose=0)
    m = json.loads((run / "metrics.json").read_text())
    v = m["validation"]
    assert v["method"] == "time" and v["cutoff"] == holdout_for(spec, FRACTION, data_dir=str(data)).cutoff
    assert v["cached"] is (cache_mb > 0) and 0.0 < v["best"] < 1.0
    if cache_mb > 0 and m["epochs_completed"] == 2:  # cached: every trained row counted exactly, once per epoch
        total = artifacts.read_stats(data).train_rows
        assert m["examples"] == 2 * (total - v["rows"])
