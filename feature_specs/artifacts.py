"""The artifact formats preprocessing writes and training/serving/eval read: one definition for both sides.

Layout of a preprocessing output folder DIR:
    DIR/train-SSSSS-of-NNNNN.tfrecord.gz, DIR/eval-...   GZIP TFRecords of tf.train.Example (derive.record_fields)
    DIR/vocab/<feature>.txt                              one `token<TAB>count` line per token, most frequent first
    DIR/stats.json                                       numeric statistics (of feature_specs.numeric.pre_transform
                                                         of each value), vocabulary sizes, label rate
    DIR/spec.yaml                                        a verbatim copy of the spec the job ran with
    DIR/manifest.json                                    inputs, counts, spec hash, code version, options, times
    DIR/rejected/rejected-*.jsonl                        dead-lettered raw lines with their reason
Version bumps of this layout change ARTIFACT_VERSION; readers refuse a layout they do not know.
DIR may be local or any URL TensorFlow's file systems read (gs://, hdfs://, ram://): paths are `str`, built and
read through common.fs (the readers here run on the TF side; the Beam job writes through Beam's FileSystems).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from common import fs

ARTIFACT_VERSION = 1
SPLITS = ("train", "eval")
SHARD_SUFFIX = ".tfrecord.gz"


class ArtifactError(ValueError):
    """A preprocessing output is missing, incomplete, or from an incompatible layout version."""


@dataclass(frozen=True)
class NumericStats:
    count: int
    missing: int
    mean: float
    std: float
    min: float
    max: float
    boundaries: tuple[float, ...] = ()


@dataclass(frozen=True)
class Stats:
    version: int
    train_rows: int
    label_rate: float
    numeric: dict[str, NumericStats]
    vocab_sizes: dict[str, int]


def shard_pattern(data_dir: str | os.PathLike, split: str) -> str:
    if split not in SPLITS:
        raise ArtifactError(f"unknown split {split!r}; expected one of {SPLITS}")
    return fs.join(data_dir, f"{split}-*{SHARD_SUFFIX}")


def shard_prefix(data_dir: str | os.PathLike, split: str) -> str:
    return fs.join(data_dir, split)


def vocab_path(data_dir: str | os.PathLike, feature: str) -> str:
    return fs.join(data_dir, "vocab", f"{feature}.txt")


def stats_path(data_dir: str | os.PathLike) -> str:
    return fs.join(data_dir, "stats.json")


def manifest_path(data_dir: str | os.PathLike) -> str:
    return fs.join(data_dir, "manifest.json")


def spec_copy_path(data_dir: str | os.PathLike) -> str:
    return fs.join(data_dir, "spec.yaml")


def rejected_dir(data_dir: str | os.PathLike) -> str:
    return fs.join(data_dir, "rejected")


def format_vocab_line(token: str, count: int) -> str:
    if "\t" in token or "\n" in token:
        raise ArtifactError(f"vocabulary token {token!r} contains a tab or newline")
    return f"{token}\t{count}"


def read_vocab(data_dir: str | os.PathLike, feature: str) -> list[tuple[str, int]]:
    """(token, count) pairs, most frequent first."""
    p = vocab_path(data_dir, feature)
    if not fs.exists(p):
        raise ArtifactError(f"{p}: vocabulary for feature {feature!r} is missing (was preprocessing run "
                            f"with this spec?)")
    out = []
    for n, line in enumerate(fs.read_text(p).split("\n"), 1):
        if not line:
            continue
        token, sep, count = line.rpartition("\t")
        if not sep or not count.isdigit():
            raise ArtifactError(f"{p}:{n}: expected 'token<TAB>count', got {line!r}")
        out.append((token, int(count)))
    return out


def read_vocab_tokens(data_dir: str | os.PathLike, feature: str) -> list[str]:
    return [t for t, _ in read_vocab(data_dir, feature)]


def stats_to_json(stats: Stats) -> dict:
    return {"version": stats.version, "train_rows": stats.train_rows, "label_rate": stats.label_rate,
            "numeric": {k: {**v.__dict__, "boundaries": list(v.boundaries)} for k, v in stats.numeric.items()},
            "vocab_sizes": stats.vocab_sizes}


def read_stats(data_dir: str | os.PathLike) -> Stats:
    p = stats_path(data_dir)
    if not fs.exists(p):
        raise ArtifactError(f"{p}: stats.json is missing (was preprocessing run into {data_dir}?)")
    d = fs.read_json(p)
    if d.get("version") != ARTIFACT_VERSION:
        raise ArtifactError(f"{p}: artifact version {d.get('version')!r}, this code reads {ARTIFACT_VERSION}")
    numeric = {k: NumericStats(**{**v, "boundaries": tuple(v.get("boundaries", ()))})
               for k, v in d["numeric"].items()}
    return Stats(version=d["version"], train_rows=int(d["train_rows"]), label_rate=float(d["label_rate"]),
                 numeric=numeric, vocab_sizes={k: int(v) for k, v in d["vocab_sizes"].items()})


def read_manifest(data_dir: str | os.PathLike) -> dict:
    p = manifest_path(data_dir)
    if not fs.exists(p):
        raise ArtifactError(f"{p}: manifest.json is missing: {data_dir} is not a finished preprocessing output")
    return fs.read_json(p)


def list_shards(data_dir: str | os.PathLike, split: str) -> list[str]:
    files = fs.glob(shard_pattern(data_dir, split))
    if not files:
        raise ArtifactError(f"no {split} shards matching {shard_pattern(data_dir, split)}")
    return files
