"""THE preprocessing implementation: raw model inputs -> table row ids (+ scales / masks).

Training, evaluation and the serving export all call this one module, so a token is mapped to the same
row online and offline. Each feature becomes an `Encoded`: row ids inside the feature's own table slice,
a per-row scale for continuous numerics (the embedding is value * learned vector) and a padding mask
for sequences. Looking rows up in the (concatenated) tables is models.embeddings' job.

Artifact conventions (written by the Beam job, read here):
- vocab/<owner>.txt tokens -> StringLookup with the spec's oov_buckets (ids 0..oov-1 are OOV; "" maps to
  OOV too and is masked out of sequences); hashed features use Hashing(hash_buckets).
- stats.json numeric entries describe the value after clip_min/clip_max and signed log1p (when the
  transform has log1p): standardize uses their mean/std, bucketize their boundaries.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from feature_specs import artifacts, derive
from feature_specs.schema import Feature, FeatureSpec


@dataclass(frozen=True)
class Encoded:
    """One feature's lookup request: ids [N] or [N, L] (int64), scale [N] (numeric), mask [N, L] (sequence)."""

    ids: tf.Tensor
    scale: tf.Tensor | None = None
    mask: tf.Tensor | None = None


def signed_log1p(x: tf.Tensor) -> tf.Tensor:
    """log1p that is finite for any input (negative raw values happen in dirty logs)."""
    return tf.sign(x) * tf.math.log1p(tf.abs(x))


class TokenEncoder(tf.keras.layers.Layer):
    """Strings -> row ids of one table (a vocabulary owner or a hashed feature)."""

    def __init__(self, owner: Feature, tokens: list[str] | None, **kw):
        super().__init__(name=f"encode_{owner.name}", **kw)
        if owner.is_hashed:
            self.rows = int(owner.hash_buckets)
            self.lookup = tf.keras.layers.Hashing(num_bins=self.rows)
        else:
            oov = owner.vocab.oov_buckets if owner.vocab else 1
            self.rows = oov + len(tokens or [])
            # An empty vocabulary (a column that was always missing) still scores: every token is OOV.
            # The vocabulary goes in as an array: a python list would be wrapped and walked by Keras' attribute
            # tracking on every step (100k-token lists made fit 8x slower than the step itself).
            self.lookup = (tf.keras.layers.StringLookup(vocabulary=np.asarray(tokens, dtype=object),
                                                        num_oov_indices=oov, mask_token=None)
                           if tokens else tf.keras.layers.Hashing(num_bins=oov))

    def call(self, tokens: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.lookup(tokens), tf.int64)


class NumericEncoder(tf.keras.layers.Layer):
    """A float column -> (bucket id, 1) for bucketize, else (row 0, transformed value)."""

    def __init__(self, f: Feature, stats: artifacts.NumericStats | None, **kw):
        super().__init__(name=f"encode_{f.name}", **kw)
        self.feature = f
        if stats is None:
            raise artifacts.ArtifactError(f"stats.json has no numeric entry for feature {f.name!r}")
        self.bucketize = f.transform == "bucketize"
        if self.bucketize:
            bounds = list(stats.boundaries) or [math.inf]  # no data seen: one bucket for everything
            self.rows = len(bounds) + 1
            self.discretize = tf.keras.layers.Discretization(bin_boundaries=bounds)
        else:
            self.rows = 1
        # a constant column: centre it, do not blow it up
        standardize = not self.bucketize and "standardize" in f.transform
        self.mean = float(stats.mean) if standardize else 0.0
        self.std = (float(stats.std) if stats.std > 1e-12 else 1.0) if standardize else 1.0
        self.clip = (-math.inf if f.clip_min is None else float(f.clip_min),
                     math.inf if f.clip_max is None else float(f.clip_max))
        self.log1p = f.transform.startswith("log1p")

    def encode(self, x: tf.Tensor) -> Encoded:
        """One column alone (bucketize features; continuous ones go through encode_continuous in blocks)."""
        if not self.bucketize:
            return encode_continuous([self], [x])[0]
        x = _clean(tf.cast(x, tf.float32), [self])
        return Encoded(ids=tf.cast(self.discretize(x), tf.int64))


def _clean(x: tf.Tensor, encs: list[NumericEncoder]) -> tf.Tensor:
    """Non-finite -> the feature's default, clip, signed log1p: x is [N] (one encoder) or [N, k] (k encoders)."""
    def vec(values: list[float]) -> tf.Tensor:
        return tf.constant(values[0] if x.shape.rank == 1 else values, tf.float32)  # (a scalar broadcasts)
    x = tf.where(tf.math.is_finite(x), x, vec([float(e.feature.default) for e in encs]))
    lo, hi = [e.clip[0] for e in encs], [e.clip[1] for e in encs]
    if any(math.isfinite(v) for v in lo + hi):
        x = tf.clip_by_value(x, vec(lo), vec(hi))
    logs = [e.log1p for e in encs]
    if all(logs):
        x = signed_log1p(x)
    elif any(logs):
        x = tf.where(tf.constant(logs), signed_log1p(x), x)
    return x


def encode_continuous(encs: list[NumericEncoder], xs: list[tf.Tensor]) -> list[Encoded]:
    """Continuous numeric columns transformed as ONE [N, k] block: the same arithmetic as per column with a
    tenth of the ops (a request graph's fixed cost is mostly per-op overhead: ~10 ops per column before)."""
    one = len(encs) == 1
    x = tf.cast(xs[0], tf.float32) if one else tf.stack([tf.cast(v, tf.float32) for v in xs], axis=1)
    x = _clean(x, encs)
    means, stds = [e.mean for e in encs], [e.std for e in encs]
    if any(m != 0.0 for m in means) or any(s != 1.0 for s in stds):
        x = (x - tf.constant(means[0] if one else means)) / tf.constant(stds[0] if one else stds)
    cols = [x] if one else tf.unstack(x, axis=1)
    zeros = tf.zeros_like(cols[0], tf.int64)  # each feature's single table row (its slice offset comes later)
    return [Encoded(ids=zeros, scale=c) for c in cols]


class FeatureInputs(tf.keras.layers.Layer):
    """The input layer: per-feature encoders built from the spec and the preprocessing artifacts.

    Sequences that share another feature's embedding use that feature's encoder (one vocabulary, one
    table slice). `subset(names)` gives a view tracking only some features' encoders (the light export).
    """

    def __init__(self, spec: FeatureSpec, encoders: dict[str, tf.keras.layers.Layer], names: tuple[str, ...],
                 **kw):
        super().__init__(**kw)
        self.spec = spec
        self.names = tuple(names)
        self.encoders = dict(encoders)  # table key (vocab owner or numeric feature) -> encoder

    def subset(self, names: tuple[str, ...] | list[str]) -> "FeatureInputs":
        keys = {table_key(self.spec.feature(n)) for n in names}
        return FeatureInputs(self.spec, {k: v for k, v in self.encoders.items() if k in keys},
                             tuple(n for n in self.names if n in set(names)), name=f"{self.name}_subset")

    def rows(self, key: str) -> int:
        """How many table rows the table `key` needs."""
        return self.encoders[key].rows

    def encode(self, features: dict[str, tf.Tensor], names: tuple[str, ...] | None = None) -> dict[str, Encoded]:
        out, continuous = {}, []
        for name in names or self.names:
            f = self.spec.feature(name)
            if name not in features:
                raise KeyError(f"model input {name!r} is missing (have {sorted(features)})")
            x = features[name]
            enc = self.encoders[table_key(f)]
            if f.kind == "numeric" and not enc.bucketize:
                continuous.append(name)
            elif f.kind == "numeric":
                out[name] = enc.encode(_flat(x))
            elif f.kind == "categorical":
                out[name] = Encoded(ids=enc(_flat(x)))
            else:
                x = derive.truncate_sequence(x, f)
                out[name] = Encoded(ids=enc(x), mask=tf.cast(tf.not_equal(x, derive.PAD), tf.float32))
        if continuous:
            encoded = encode_continuous([self.encoders[n] for n in continuous],
                                        [_flat(features[n]) for n in continuous])
            out.update(zip(continuous, encoded))
        return out


def _flat(x: tf.Tensor) -> tf.Tensor:
    """[N] as is (no op: a request graph has ~40 of these), anything else reshaped to [N]."""
    return x if isinstance(x, tf.Tensor) and x.shape.rank == 1 else tf.reshape(x, [-1])


def table_key(f: Feature) -> str:
    """The table a feature reads: its vocabulary owner (categorical / sequence) or itself (numeric)."""
    return f.name if f.kind == "numeric" else f.vocab_owner


def build_feature_inputs(spec: FeatureSpec, data_dir: str | os.PathLike,
                         names: tuple[str, ...] | None = None) -> FeatureInputs:
    """Read vocabularies and stats from a preprocessing output and build the encoders for `names`."""
    names = tuple(names or spec.feature_names)
    stats = artifacts.read_stats(data_dir)
    encoders: dict[str, tf.keras.layers.Layer] = {}
    for name in names:
        f = spec.feature(name)
        key = table_key(f)
        if key in encoders:
            continue
        if f.kind == "numeric":
            encoders[key] = NumericEncoder(f, stats.numeric.get(f.name))
        else:
            owner = spec.feature(key)
            tokens = None if owner.is_hashed else artifacts.read_vocab_tokens(data_dir, owner.name)
            encoders[key] = TokenEncoder(owner, tokens)
    return FeatureInputs(spec, encoders, names, name="inputs")
