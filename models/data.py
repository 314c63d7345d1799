"""The training input pipeline: preprocessed TFRecord shards -> (features, labels, weights) batches.

Why it looks like this: parsing one example at a time costs a Python-free but per-element tf.data call, which
caps throughput far below what the model trains at; so records are batched first and parsed with one
vectorised `tf.io.parse_example` per batch (parse spec from `feature_specs.derive`, the single definition of
the record layout). Shards are read in parallel, interleaved, and prefetched so the input pipeline is not the
bottleneck (`rocketctr bench train` measures it alone).

Validation never touches the eval split (that one is only scored at the end): a deterministic slice of the
*train* split is held out the way the eval split is cut (models/holdout.py). Small data is parsed once and
kept in memory (models/data_cache.py); this streaming path is for data that does not fit.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf

from common import compression
from feature_specs import artifacts, derive
from feature_specs.schema import FeatureSpec
from models.holdout import Holdout, holdout_for  # noqa: F401  (re-exported: the slice every reader applies)



class CorruptShardError(RuntimeError):
    """A TFRecord shard is corrupt or truncated; the message names the file(s)."""


def shard_files(data_dir: str | os.PathLike, split: str) -> list[str]:
    """The split's shards in a stable order (raises ArtifactError naming the pattern when none exist)."""
    return artifacts.list_shards(data_dir, split)


def make_dataset(data_dir: str | os.PathLike, spec: FeatureSpec, split: str, batch_size: int,
                 shuffle: bool = False, epochs: int = 1, seed: int = 0, *,
                 shuffle_buffer: int = 10000, holdout: Holdout = Holdout(),
                 files: list[str] | None = None, skip_batches: int = 0, take_batches: int | None = None,
                 num_workers: int = 1, parallel_reads: int | None = None) -> tf.data.Dataset:
    """(features, labels [N] float32, weights [N] float32) batches of `split`.

    `files` overrides the shard list (e.g. after dropping corrupt shards); `skip_batches` skips already
    trained batches after a resume (exact: the order is a pure function of `seed`); `num_workers` picks the
    auto-shard policy a multi-worker strategy applies (by file when every worker gets one, else by record).
    """
    files = list(files) if files is not None else shard_files(data_dir, split)
    if not files:
        raise artifacts.ArtifactError(f"no {split} shards to read in {data_dir}")
    empty = [f for f in files if _is_empty(f)]
    if empty:  # the GZIP reader yields zero records for a 0-byte file: its rows would vanish silently
        raise corrupt_error([(f, EMPTY) for f in empty])
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle = max(1, min(len(files), parallel_reads or 4))

    def read(path: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path, compression_type="GZIP", buffer_size=1 << 20)

    ds = ds.interleave(read, cycle_length=cycle, block_length=16, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    if epochs > 1:
        ds = ds.repeat(epochs)
    ds = ds.batch(batch_size)
    ds = ds.map(batch_parser(spec, holdout), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if holdout.active:  # a batch can in principle lose every row to the mask; never hand the model an empty one
        ds = ds.filter(lambda x, y, w: tf.size(y) > 0)
    if skip_batches:
        ds = ds.skip(skip_batches)
    if take_batches is not None:
        ds = ds.take(take_batches)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    opts = tf.data.Options()
    opts.deterministic = True
    opts.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE if len(files) >= num_workers > 1
        else tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(opts)


def batch_parser(spec: FeatureSpec, holdout: Holdout = Holdout()):
    """A function: serialized [N] -> (features, labels, weights), vectorised over the batch."""
    pspec = derive.parse_spec(spec)

    def parse(serialized: tf.Tensor):
        parsed = tf.io.parse_example(serialized, pspec)
        if holdout.active:
            keep = holdout.in_slice(spec, serialized, parsed)
            if holdout.role == "train":
                keep = tf.logical_not(keep)
            parsed = holdout.as_unseen(spec, {k: mask_rows(v, keep) for k, v in parsed.items()})
        return to_batch(spec, parsed)

    return parse


def to_batch(spec: FeatureSpec, parsed: dict) -> tuple[dict, tf.Tensor, tf.Tensor]:
    """Parsed record fields -> (model features, labels float32 [N], weights float32 [N])."""
    features = derive.to_model_inputs(spec, parsed)
    labels = tf.cast(parsed[spec.label.name], tf.float32)
    weights = tf.cast(parsed[spec.weight], tf.float32) if spec.weight else tf.ones_like(labels)
    return features, labels, weights


def mask_rows(t, keep: tf.Tensor):
    """Rows of a parsed field (dense or ragged) where `keep` is True."""
    if isinstance(t, tf.RaggedTensor):
        return tf.ragged.boolean_mask(t, keep)
    return tf.boolean_mask(t, keep)


EMPTY = "empty file (0 bytes; a GZIP shard is never empty, even with zero records)"


def _is_empty(path: str) -> bool:
    return tf.io.gfile.stat(path).length == 0


def gzip_stream_error(path: str) -> str | None:
    """None when `path` is complete gzip data (one or more members); else what is wrong with it.

    Why: TensorFlow's GZIP reader treats a stream that stops early as a clean end of file whenever the cut
    falls on a record boundary, so a truncated shard (an interrupted copy, a full disk) would lose its tail
    without any error (common.compression; one decompression pass, about a second per 100 MB of shards here).
    """
    return compression.stream_error(lambda: tf.io.gfile.GFile(path, "rb"), "gzip", chunk_bytes=1 << 22)


def truncated_shards(files: list[str]) -> list[tuple[str, str]]:
    """(file, error) for every empty or incomplete gzip shard: the cheap check training runs before it starts
    (shards in parallel threads: zlib releases the interpreter lock)."""
    def check(f: str) -> str | None:
        return EMPTY if _is_empty(f) else gzip_stream_error(f)

    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1))) as pool:
        errors = list(pool.map(check, files))
    return [(f, err) for f, err in zip(files, errors) if err]


def find_corrupt_shards(files: list[str]) -> list[tuple[str, str]]:
    """(file, error) for every shard that cannot be read to the end: the slow, exact path used to name the
    culprit after a read error, or to drop bad shards up front when train.skip_corrupt_shards is set."""
    bad = []
    for f in files:
        if _is_empty(f):
            bad.append((f, EMPTY))
            continue
        try:
            for _ in tf.data.TFRecordDataset(f, compression_type="GZIP", buffer_size=1 << 20).batch(4096):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
            bad.append((f, _clean(e)))
            continue
        err = gzip_stream_error(f)  # read "cleanly" by TensorFlow, yet cut short
        if err:
            bad.append((f, err))
    return bad


def corrupt_error(bad: list[tuple[str, str]]) -> "CorruptShardError":
    names = "; ".join(f"{f}: {err}" for f, err in bad)
    return CorruptShardError(f"corrupt or truncated TFRecord shard(s): {names}. Re-run preprocessing, or set "
                             f"train.skip_corrupt_shards=true to train without them")


def _clean(e: Exception) -> str:
    """`{{function_node ...}} corrupted record at 506636 [Op:IteratorGetNext]` -> `corrupted record at 506636`."""
    text = (getattr(e, "message", None) or str(e)).strip().splitlines()[0]
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip()


def describe_corrupt(files: list[str], cause: Exception) -> CorruptShardError:
    """Turn an anonymous read error into one that names the bad shard(s) and the way out."""
    bad = find_corrupt_shards(files)
    if not bad:
        return CorruptShardError(f"reading the shards failed ({_clean(cause)}) but every shard reads cleanly now")
    return corrupt_error(bad)
