"""Typed, frozen dataclasses for a feature spec: the single source of truth for every stage.

The Beam job, the tf.Example parse spec, the Keras inputs and the serving signatures are all derived from
these objects (see `feature_specs.derive`), so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["categorical", "numeric", "sequence"]
Side = Literal["user", "item", "context"]
Tower = Literal["light", "booster"]

KINDS: tuple[str, ...] = ("categorical", "numeric", "sequence")
SIDES: tuple[str, ...] = ("user", "item", "context")
TOWERS: tuple[str, ...] = ("light", "booster")
NUMERIC_TRANSFORMS: tuple[str, ...] = ("none", "log1p", "standardize", "log1p_standardize", "bucketize")
POOLINGS: tuple[str, ...] = ("mean", "sum", "max")
DTYPES: tuple[str, ...] = ("string", "int")


@dataclass(frozen=True)
class Vocabulary:
    """How the Beam job builds a vocabulary: tokens seen >= min_count times, the top_k most frequent."""

    min_count: int = 1
    top_k: int | None = None
    oov_buckets: int = 1


@dataclass(frozen=True)
class Feature:
    """One model input. `source` is the raw column it is read from (defaults to `name`)."""

    name: str
    kind: Kind
    side: Side
    source: str
    towers: tuple[str, ...] = TOWERS
    embedding_dim: int = 8
    # categorical / sequence
    dtype: str = "string"
    vocab: Vocabulary | None = None
    hash_buckets: int | None = None
    shares_embedding_with: str | None = None
    # sequence
    delimiter: str = "|"
    max_length: int = 0
    pooling: str = "mean"
    # numeric
    transform: str = "none"
    num_buckets: int = 0
    default: float = 0.0
    clip_min: float | None = None
    clip_max: float | None = None

    @property
    def is_hashed(self) -> bool:
        return self.hash_buckets is not None

    @property
    def vocab_owner(self) -> str:
        """The feature whose vocabulary and embedding table this feature uses."""
        return self.shares_embedding_with or self.name


@dataclass(frozen=True)
class Label:
    """The click label. Either the column holds 0/1, or a threshold turns a rating into 0/1."""

    name: str
    source: str
    threshold: float | None = None
    op: str = ">="  # how `threshold` is applied: value >= threshold or value > threshold


@dataclass(frozen=True)
class SideTable:
    """A table joined to the main log on `key` (a column present in both)."""

    name: str
    file: str  # path relative to the main input's folder, or absolute
    key: str
    columns: tuple[str, ...]
    delimiter: str = ","
    header: bool = False
    encoding: str = "utf-8"


@dataclass(frozen=True)
class Split:
    """Deterministic train/eval split: by time when a timestamp exists, else by a stable hash."""

    method: str = "hash_group"  # hash_group | hash_row | time_fraction | time_last_day
    eval_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class InputFormat:
    delimiter: str = ","
    header: bool = False
    columns: tuple[str, ...] = ()
    missing_values: tuple[str, ...] = ("", "NULL")
    encoding: str = "utf-8"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    path: str
    format: InputFormat
    label: Label
    features: tuple[Feature, ...]
    group_key: str | None = None
    weight: str | None = None
    timestamp: str | None = None
    side_tables: tuple[SideTable, ...] = ()
    split: Split = field(default_factory=Split)
    description: str = ""
    # Probability with which the preprocessing job keeps each TRAIN-split negative (1.0: no down-sampling).
    # The eval split is never sampled; the exported CTR undoes the sampling with logit += log(rate).
    negative_sampling_rate: float = 1.0

    # ---- convenient views used by every stage -------------------------------------------------
    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"{self.path}: no feature named {name!r}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def by_kind(self, kind: str) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == kind)

    def by_side(self, side: str) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.side == side)

    def for_tower(self, tower: str) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if tower in f.towers)

    @property
    def vocab_features(self) -> tuple[Feature, ...]:
        """Features that own a vocabulary file (not hashed, not borrowing another feature's table)."""
        return tuple(f for f in self.features
                     if f.kind in ("categorical", "sequence") and not f.is_hashed and f.shares_embedding_with is None)

    @property
    def all_columns(self) -> tuple[str, ...]:
        """Columns of the joined row: the main file's columns plus each side table's non-key columns."""
        cols = list(self.format.columns)
        for t in self.side_tables:
            cols.extend(c for c in t.columns if c != t.key and c not in cols)
        return tuple(cols)
