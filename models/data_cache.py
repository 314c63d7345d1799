"""The train split parsed once and kept in memory, when it fits: what makes a multi-epoch search fast.

Why: streaming re-reads, decompresses and parses every record on every epoch, and the validation slice was cut
by masking each parsed batch (half the parsed rows thrown away on a validation pass, the rest on a training
pass). On a ~70k-row log that bookkeeping, not the model, set the speed (27k ex/s against 50-54k with the slice
off). Here the shards are parsed once, the slice is cut once (models/holdout.py: the same rule the streaming
path applies), and every epoch gathers shuffled rows from the in-memory columns. Data larger than
`train.cache_max_mb` keeps the streaming path (models/data.py); the choice is logged with the size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from feature_specs import derive
from feature_specs.schema import FeatureSpec
from models.data import mask_rows, to_batch
from models.holdout import Holdout, holdout_for

log = logging.getLogger("rocketctr.data")
_READ_BATCH = 8192
_TSTRING_BYTES = 32  # what one tf.string element costs in memory besides its characters


@dataclass(frozen=True)
class CachedRows:
    """Parsed record fields of some rows, one tensor (dense or ragged) per record key."""

    columns: dict
    rows: int

    def take(self, keep: np.ndarray) -> "CachedRows":
        keep_t = tf.constant(keep)
        return CachedRows({k: mask_rows(v, keep_t) for k, v in self.columns.items()}, int(keep.sum()))


@dataclass(frozen=True)
class CachedSplit:
    """The train split in memory, cut into the part trained on and the validation slice."""

    train: CachedRows
    validation: CachedRows
    holdout: Holdout
    nbytes: int


def _nbytes(t) -> int:
    if isinstance(t, tf.RaggedTensor):
        return _nbytes(t.flat_values) + int(t.row_splits.shape[0]) * 8
    if t.dtype == tf.string:
        return int(tf.reduce_sum(tf.strings.length(t)).numpy()) + _TSTRING_BYTES * int(tf.size(t))
    return int(tf.size(t)) * t.dtype.size


def _concat(parts: list):
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)


def load_train_cache(files: list[str], spec: FeatureSpec, fraction: float, max_mb: float,
                     echo=log.info) -> CachedSplit | None:
    """Parse every train record once and cut the validation slice; None (stream instead) when the parsed rows
    would exceed `max_mb`, checked while reading so a large split is abandoned early."""
    if max_mb <= 0:
        return None
    start, limit = time.monotonic(), max_mb * (1 << 20)
    pspec = derive.parse_spec(spec)
    probe = Holdout(fraction, "validation", "hash_row")  # serialized rows are only needed for a row hash

    def parse(serialized: tf.Tensor):
        parsed = tf.io.parse_example(serialized, pspec)
        return parsed, probe.in_slice(spec, serialized, parsed)

    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", buffer_size=1 << 20, num_parallel_reads=4)
    ds = ds.batch(_READ_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)
    parts: dict[str, list] = {}
    row_hash: list[np.ndarray] = []
    used = rows = 0
    for parsed, in_row_slice in ds:
        for k, v in parsed.items():
            parts.setdefault(k, []).append(v)
            used += _nbytes(v)
        row_hash.append(in_row_slice.numpy())
        rows += int(in_row_slice.shape[0])
        if used > limit:
            echo(f"train split does not fit the in-memory cache (> {max_mb:.0f} MB after {rows:,} rows: "
                 f"train.cache_max_mb); streaming it from the shards every epoch")
            return None
    if not rows:
        return None
    columns = {k: _concat(v) for k, v in parts.items()}
    holdout, in_slice = _slice(spec, fraction, columns, np.concatenate(row_hash))
    cached = CachedSplit(CachedRows(columns, rows).take(~in_slice), CachedRows(columns, rows).take(in_slice),
                         holdout, used)
    echo(f"train split cached in memory: {rows:,} rows, {used / (1 << 20):.1f} MB (limit {max_mb:.0f} MB), "
         f"{cached.validation.rows:,} in the validation slice ({holdout.method}); "
         f"{time.monotonic() - start:.1f} s")
    return cached


def _slice(spec: FeatureSpec, fraction: float, columns: dict, row_hash: np.ndarray) -> tuple[Holdout, np.ndarray]:
    """The holdout rule for the cached rows and its boolean mask (the same rule as the streaming path)."""
    ts = columns[spec.timestamp].numpy() if spec.timestamp in columns else None
    holdout = holdout_for(spec, fraction, "validation", timestamps=ts)
    if not holdout.active:
        return holdout, np.zeros(len(row_hash), dtype=bool)
    if holdout.method == "hash_row":
        return holdout, row_hash
    return holdout, holdout.in_slice(spec, None, columns).numpy()


def cached_dataset(part: CachedRows, spec: FeatureSpec, batch_size: int, shuffle: bool = False, seed: int = 0,
                   skip_batches: int = 0, take_batches: int | None = None,
                   holdout: Holdout = Holdout()) -> tf.data.Dataset:
    """(features, labels, weights) batches gathered from memory; the order is a pure function of `seed` (what an
    exact resume needs), every batch full except the last. `holdout` (the slice's rule with its role) renames
    what the streaming path renames (`Holdout.as_unseen`)."""
    order = np.random.default_rng(seed).permutation(part.rows) if shuffle else np.arange(part.rows)
    order_t = tf.constant(order, tf.int64)
    n_batches = -(-part.rows // batch_size)
    columns = part.columns

    def gather(i: tf.Tensor):
        ids = order_t[i * batch_size: tf.minimum((i + 1) * batch_size, part.rows)]
        return to_batch(spec, holdout.as_unseen(spec, {k: tf.gather(v, ids) for k, v in columns.items()}))

    ds = tf.data.Dataset.range(n_batches)
    if skip_batches:
        ds = ds.skip(skip_batches)
    if take_batches is not None:
        ds = ds.take(take_batches)
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = True
    return ds.with_options(opts)
