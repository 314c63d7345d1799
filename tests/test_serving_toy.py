"""A small tf.Module with the four serving signatures of the interface (models/saved.py), for serving tests.

The server and client must not depend on training a real model: this stand-in has the same signature
names, input names, dtypes, shapes and outputs (serving_default(examples) / predict_raw / score_candidates /
score_packed -> {ctr, logit}), built from the same feature spec via feature_specs.derive and .packed, and
deterministic scores that change with `seed` (so a new version is visibly different). The tests here check
the stand-in keeps the contract the real export must keep: all four signatures agree on the same rows.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import feature_specs
import numpy as np
import tensorflow as tf

from common import fs, versions
from feature_specs import derive, packed
from serving.export import warmup_requests
from serving.warmup import write_warmup

BUCKETS = 257


class ToyTower(tf.Module):
    """Hashed embeddings (1-d) + linear numerics: logit = sum of per-feature terms + bias."""

    def __init__(self, spec, seed: int = 0):
        super().__init__(name="light")
        rng = np.random.default_rng(seed)
        self.spec = spec
        self.emb = tf.Variable(rng.normal(0, 0.3, size=(BUCKETS,)).astype("float32"), name="light_emb")
        numerics = spec.by_kind("numeric")
        self.w = tf.Variable(rng.normal(0, 0.1, size=(len(numerics),)).astype("float32"), name="light_w")
        self.bias = tf.Variable(np.float32(rng.normal(0, 0.5)), name="light_bias")
        self.serving_default = tf.function(self._serve_examples,
                                           input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        self.predict_raw = tf.function(self._predict_raw).get_concrete_function(
            **derive.serving_input_specs(spec))
        self.score_candidates = tf.function(self._predict_raw).get_concrete_function(
            **derive.serving_input_specs(spec, sides=("user", "context"), batch=1),
            **derive.serving_input_specs(spec, sides=("item",)))
        layout = packed.packed_layout(spec)
        self.score_packed = tf.function(lambda **p: self._predict_raw(**{
            k: v for side in packed.unpack(layout, p) for k, v in side.items()})).get_concrete_function(
            **packed.packed_input_specs(spec))

    def _logit(self, x: dict[str, tf.Tensor]) -> tf.Tensor:
        n = None
        for f in self.spec.by_kind("categorical"):
            if f.side == "item":
                n = tf.shape(x[f.name])[0]
                break
        terms = []
        for f in self.spec.by_kind("categorical"):
            terms.append(tf.gather(self.emb, tf.strings.to_hash_bucket_fast(x[f.name], BUCKETS)))
        for i, f in enumerate(self.spec.by_kind("numeric")):
            terms.append(self.w[i] * tf.clip_by_value(x[f.name], -1e3, 1e3) * 1e-2)
        for f in self.spec.by_kind("sequence"):
            s = x[f.name]
            mask = tf.cast(tf.not_equal(s, derive.PAD), tf.float32)
            e = tf.gather(self.emb, tf.strings.to_hash_bucket_fast(s, BUCKETS)) * mask
            terms.append(tf.reduce_sum(e, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0))
        terms = [tf.broadcast_to(t, [n]) if n is not None else t for t in terms]
        return tf.add_n(terms) + self.bias

    def _out(self, logit: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"ctr": tf.sigmoid(logit), "logit": logit}

    def _serve_examples(self, examples):
        parsed = tf.io.parse_example(examples, derive.parse_spec(self.spec, features_only=True))
        return self._out(self._logit(derive.to_model_inputs(self.spec, parsed)))

    def _predict_raw(self, **x):
        return self._out(self._logit(x))


def save_toy(model_base: str | os.PathLike, version: int, seed: int = 0, spec=None,
             warmup: bool = True) -> str | Path:
    """Write a toy version into model_base/<version> (local or a URL), published like the real export
    (common.versions.publish_version), with warmup requests."""
    spec = spec or feature_specs.load_spec("synthetic")
    module = ToyTower(spec, seed)
    tmp = versions.staging_dir(model_base, uuid.uuid4().hex)
    fs.makedirs(fs.parent(tmp))
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serving_default,
                                                 "predict_raw": module.predict_raw,
                                                 "score_candidates": module.score_candidates,
                                                 packed.SIGNATURE: module.score_packed})
    if warmup:
        write_warmup(tmp, warmup_requests(spec, rows_to_examples(spec, toy_rows(spec, 4, seed=seed))))
    return fs.native(versions.publish_version(tmp, model_base, version))


def toy_rows(spec, n: int, seed: int = 0) -> list[dict]:
    """Raw feature rows (what a caller has before building a request): str / float / list[str]."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {}
        for f in spec.features:
            if f.kind == "categorical":
                row[f.name] = f"{f.name}_{rng.integers(0, 30)}"
            elif f.kind == "numeric":
                row[f.name] = float(np.round(rng.normal(5, 3), 3))
            else:
                row[f.name] = [f"c{rng.integers(0, 20)}" for _ in range(int(rng.integers(0, 5)))]
        rows.append(row)
    return rows


def rows_to_examples(spec, rows: list[dict], label: bool = True) -> list[bytes]:
    out = []
    for r in rows:
        feat = {}
        for f in spec.features:
            v = r[f.name]
            if f.kind == "numeric":
                feat[f.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
            else:
                vals = v if isinstance(v, list) else [v]
                feat[f.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[s.encode() for s in vals]))
        if label:
            feat[spec.label.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
    return out


def rows_to_inputs(spec, rows: list[dict]) -> dict[str, np.ndarray]:
    """The dense numpy inputs of predict_raw (sequences padded with "")."""
    out = {}
    for f in spec.features:
        vals = [r[f.name] for r in rows]
        if f.kind == "numeric":
            out[f.name] = np.asarray(vals, dtype=np.float32)
        elif f.kind == "categorical":
            out[f.name] = np.asarray([v.encode() for v in vals], dtype=object)
        else:
            width = max(1, max(len(v) for v in vals))
            out[f.name] = np.asarray([[s.encode() for s in v] + [b""] * (width - len(v)) for v in vals],
                                     dtype=object)
    return out


# ---- the stand-in keeps the contract ----------------------------------------------------------------------

def test_toy_signatures_agree(tmp_path, synthetic_spec):
    path = save_toy(tmp_path, 1, seed=3)
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {"serving_default", "predict_raw", "score_candidates", "score_packed"}
    rows = toy_rows(synthetic_spec, 7, seed=1)
    user = {f.name: rows[0][f.name] for f in synthetic_spec.features if f.side != "item"}
    rows = [{**r, **user} for r in rows]
    a = loaded.signatures["serving_default"](examples=tf.constant(rows_to_examples(synthetic_spec, rows)))
    x = rows_to_inputs(synthetic_spec, rows)
    b = loaded.signatures["predict_raw"](**{k: tf.constant(v) for k, v in x.items()})
    side = {f.name: f.side for f in synthetic_spec.features}
    c = loaded.signatures["score_candidates"](**{k: tf.constant(v[:1] if side[k] != "item" else v)
                                                 for k, v in x.items()})
    np.testing.assert_allclose(a["ctr"].numpy(), b["ctr"].numpy(), atol=1e-6)
    np.testing.assert_allclose(a["ctr"].numpy(), c["ctr"].numpy(), atol=1e-6)
    user_x = {k: v[:1] for k, v in x.items() if side[k] != "item"}
    d = loaded.signatures["score_packed"](**{k: tf.constant(v) for k, v in packed.pack(
        packed.packed_layout(synthetic_spec), user_x, {k: v for k, v in x.items() if side[k] == "item"}).items()})
    np.testing.assert_allclose(a["ctr"].numpy(), d["ctr"].numpy(), atol=1e-6)
    assert a["ctr"].shape == (7,)
