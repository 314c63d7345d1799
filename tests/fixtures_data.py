"""Test-only stand-in for the Beam preprocessing job: a pandas frame -> a preprocessing output folder.

It writes exactly the layout of `feature_specs.artifacts` (GZIP TFRecord shards with the
`feature_specs.derive.record_fields` keys, vocab/<f>.txt, stats.json, spec.yaml, manifest.json) in pure
python, so model / training / serving / eval tests do not need a Beam run. It is NOT the production job:
only the layout and the conventions below must agree with it.

Conventions shared with the real job (and with models.inputs, which reads them):
- vocabularies are counted on the train split; a table shared through `shares_embedding_with` counts the
  owner's and all sharers' tokens; min_count then top_k; most frequent first, ties by token.
- stats.numeric[f] describe the value the standardisation/bucketisation sees: the raw value clipped to
  [clip_min, clip_max], then signed log1p when the transform has log1p; missing values are only counted.
  bucketize boundaries are the i/num_buckets quantiles of that value (deduplicated).

`synthetic_frame` makes a random frame for any spec with a planted learnable signal (per-token effects
that LR can learn) and a three-way parity interaction plus a behaviour-sequence match (that only a
nonlinear tower can learn), so the booster can beat the light net.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from common import fs
from feature_specs import artifacts, derive
from feature_specs.loader import spec_hash
from feature_specs.numeric import pre_transform
from feature_specs.runtime import code_version
from feature_specs.schema import Feature, FeatureSpec

TRAIN_SHARDS = 2


# ---------------------------------------------------------------------------------------------- values
def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v == ""


def _token(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _sequence(v: Any, f: Feature) -> list[str]:
    """A list/array of tokens or a delimited string; the most recent max_length kept (like the job)."""
    if isinstance(v, (list, tuple, np.ndarray)):
        toks = [_token(t) for t in v if not _missing(t)]
    elif _missing(v):
        toks = []
    else:
        toks = [t for t in str(v).split(f.delimiter) if t != ""]
    return toks[-f.max_length:] if f.max_length else toks


def _column(df: pd.DataFrame, name: str, source: str | None = None) -> pd.Series:
    for col in (name, source):
        if col is not None and col in df.columns:
            return df[col]
    raise KeyError(f"fixture frame has no column {name!r}" + (f" (nor {source!r})" if source else "")
                   + f"; columns are {list(df.columns)}")


def _labels(spec: FeatureSpec, df: pd.DataFrame) -> np.ndarray:
    lab = spec.label
    if lab.name in df.columns:
        y = pd.to_numeric(df[lab.name]).to_numpy(dtype=float)
    else:
        raw = pd.to_numeric(_column(df, lab.source)).to_numpy(dtype=float)
        if lab.threshold is None:
            y = raw
        else:
            y = (raw >= lab.threshold) if lab.op == ">=" else (raw > lab.threshold)
    y = np.asarray(y, dtype=np.float32)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"label {lab.name!r}: expected 0/1 values, got {sorted(set(y.tolist()))[:5]}")
    return y


def numeric_base(f: Feature, x: np.ndarray) -> np.ndarray:
    """The value stats.json describes: the shared definition in feature_specs.numeric."""
    return pre_transform(f, x)


def _rows(spec: FeatureSpec, df: pd.DataFrame) -> list[dict[str, Any]]:
    """Cleaned per-row values keyed by record field (None = missing)."""
    fields = derive.record_fields(spec)
    y = _labels(spec, df)
    cols: dict[str, list] = {}
    for f in spec.features:
        s = _column(df, f.name, f.source).tolist()
        if f.kind == "sequence":
            cols[f.name] = [_sequence(v, f) for v in s]
        elif f.kind == "numeric":
            cols[f.name] = [None if _missing(v) else float(v) for v in s]
        else:
            cols[f.name] = [None if _missing(v) else _token(v) for v in s]
    extra = {k: rf for k, rf in fields.items() if rf.role in ("group_key", "weight", "timestamp")
             and k not in cols}
    for k, rf in extra.items():
        s = _column(df, k).tolist()
        if rf.role == "group_key":
            cols[k] = [None if _missing(v) else _token(v) for v in s]
        elif rf.role == "weight":
            cols[k] = [1.0 if _missing(v) else float(v) for v in s]
        else:
            cols[k] = [0 if _missing(v) else int(v) for v in s]
    cols[spec.label.name] = y.tolist()
    return [{k: v[i] for k, v in cols.items()} for i in range(len(df))]


def _example(spec: FeatureSpec, row: dict[str, Any]) -> bytes:
    feats = {}
    for key, rf in derive.record_fields(spec).items():
        v = row.get(key)
        if v is None:
            continue  # absent -> the parse spec's default ("" or the numeric default)
        if rf.wire == "bytes":
            vals = v if rf.varlen else [v]
            feats[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode() for t in vals]))
        elif rf.wire == "int64":
            feats[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
        else:
            feats[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _split(spec: FeatureSpec, rows: list[dict], eval_fraction: float, seed: int) -> tuple[list, list]:
    """Whole groups (users) go to eval when the spec has a group key; both splits are non-empty."""
    keys = [str(r.get(spec.group_key)) if spec.group_key else str(i) for i, r in enumerate(rows)]
    uniq = sorted(set(keys), key=lambda k: zlib.crc32(f"{seed}:{k}".encode()))
    if len(uniq) < 2:
        uniq, keys = [str(i) for i in range(len(rows))], [str(i) for i in range(len(rows))]
    n_eval = min(len(uniq) - 1, max(1, round(eval_fraction * len(uniq))))
    eval_keys = set(uniq[:n_eval])
    train = [r for r, k in zip(rows, keys) if k not in eval_keys]
    ev = [r for r, k in zip(rows, keys) if k in eval_keys]
    return train, ev


def _write_shards(spec: FeatureSpec, rows: list[dict], out: Path, split: str, shards: int) -> None:
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    shards = max(1, min(shards, len(rows)))
    for s in range(shards):
        path = f"{artifacts.shard_prefix(out, split)}-{s:05d}-of-{shards:05d}{artifacts.SHARD_SUFFIX}"
        with tf.io.TFRecordWriter(path, opts) as w:
            for r in rows[s::shards]:
                w.write(_example(spec, r))


# ---------------------------------------------------------------------------------------------- analysis
def _vocabs(spec: FeatureSpec, rows: list[dict]) -> dict[str, list[tuple[str, int]]]:
    out = {}
    for owner in spec.vocab_features:
        users = [f for f in spec.features if f.vocab_owner == owner.name and not f.is_hashed]
        counts: Counter = Counter()
        for r in rows:
            for f in users:
                v = r[f.name]
                if f.kind == "sequence":
                    counts.update(v)
                elif v is not None:
                    counts[v] += 1
        voc = owner.vocab
        items = sorted(((t, c) for t, c in counts.items() if c >= voc.min_count), key=lambda tc: (-tc[1], tc[0]))
        out[owner.name] = items[:voc.top_k] if voc.top_k else items
    return out


def _stats(spec: FeatureSpec, rows: list[dict], vocabs: dict) -> artifacts.Stats:
    numeric = {}
    for f in spec.by_kind("numeric"):
        raw = np.array([r[f.name] for r in rows if r[f.name] is not None], dtype=np.float64)
        x = numeric_base(f, raw)
        bounds: tuple[float, ...] = ()
        if f.transform == "bucketize" and len(x):
            qs = np.quantile(x, [i / f.num_buckets for i in range(1, f.num_buckets)])
            bounds = tuple(float(b) for b in sorted(set(qs.tolist())))
        numeric[f.name] = artifacts.NumericStats(
            count=int(len(x)), missing=int(len(rows) - len(x)),
            mean=float(x.mean()) if len(x) else 0.0, std=float(x.std()) if len(x) else 0.0,
            min=float(x.min()) if len(x) else 0.0, max=float(x.max()) if len(x) else 0.0, boundaries=bounds)
    y = [r[spec.label.name] for r in rows]
    return artifacts.Stats(version=artifacts.ARTIFACT_VERSION, train_rows=len(rows),
                           label_rate=float(np.mean(y)) if y else 0.0, numeric=numeric,
                           vocab_sizes={k: len(v) for k, v in vocabs.items()})


def _spec_text(spec: FeatureSpec) -> str:
    p = Path(spec.path)
    if p.is_file():
        return p.read_text(encoding="utf-8")
    raise ValueError(f"fixture: spec {spec.name!r} has no file at {spec.path!r} to copy into spec.yaml")


# ---------------------------------------------------------------------------------------------- public
def write_fixture_dataset(spec: FeatureSpec, df: pd.DataFrame, out_dir, eval_fraction: float = 0.2,
                          seed: int = 0) -> Path:
    """Write a preprocessing-output folder for `df` (cleaned raw values keyed by feature name or source)."""
    out = Path(out_dir)
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    rows = _rows(spec, df)
    train, ev = _split(spec, rows, eval_fraction, seed)
    if spec.negative_sampling_rate < 1.0:  # like the job: train negatives kept with probability r, eval untouched
        keep = np.random.default_rng(seed + 7).random(len(train)) < spec.negative_sampling_rate
        train = [r for r, k in zip(train, keep) if k or r[spec.label.name] == 1.0]
    _write_shards(spec, train, out, "train", TRAIN_SHARDS)
    _write_shards(spec, ev, out, "eval", 1)
    vocabs = _vocabs(spec, train)
    for name, items in vocabs.items():
        lines = [artifacts.format_vocab_line(t, c) for t, c in items]
        fs.write_text(artifacts.vocab_path(out, name), "".join(line + "\n" for line in lines))
    stats = _stats(spec, train, vocabs)
    fs.write_text(artifacts.stats_path(out), json.dumps(artifacts.stats_to_json(stats), indent=1))
    fs.write_text(artifacts.spec_copy_path(out), _spec_text(spec))
    manifest = {"artifact_version": artifacts.ARTIFACT_VERSION, "spec_name": spec.name, "spec_hash": spec_hash(spec),
                "code_version": code_version(), "producer": "tests/fixtures_data.py (test stand-in for the Beam job)",
                "counts": {"input": len(rows), "train": len(train), "eval": len(ev), "rejected": 0},
                "options": {"eval_fraction": eval_fraction, "seed": seed, "train_shards": TRAIN_SHARDS}}
    fs.write_text(artifacts.manifest_path(out), json.dumps(manifest, indent=1))
    return out


def _cardinality(spec: FeatureSpec, f: Feature, rows: int) -> int:
    if f.name == spec.group_key:
        return max(4, rows // 8)
    return 12 if f.hash_buckets is None else min(12, f.hash_buckets * 2)


def synthetic_frame(spec: FeatureSpec, rows: int, seed: int) -> pd.DataFrame:
    """A random frame for any spec with a learnable signal; columns are the record keys (feature names)."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    logit = np.full(rows, -0.8)
    effect_scale = 1.2 / math.sqrt(max(1, len(spec.by_kind("categorical"))))
    bits = []
    token_ids: dict[str, np.ndarray] = {}
    for f in spec.features:
        owner = spec.feature(f.vocab_owner) if f.kind != "numeric" else f
        if f.kind == "categorical":
            card = _cardinality(spec, owner, rows)
            ids = rng.integers(0, card, rows)
            token_ids[f.name] = ids
            effect = rng.normal(0, effect_scale, card)
            logit += effect[ids]
            vals = np.array([f"{owner.name}_{i}" if owner.dtype == "string" else str(i) for i in ids], dtype=object)
            vals[rng.random(rows) < 0.03] = None
            cols[f.name] = vals
            if len(bits) < 3 and f.name != spec.group_key and card <= 12:  # a parity MLPs can learn
                bits.append(ids % 2)
        elif f.kind == "numeric":
            x = rng.lognormal(0.0, 1.0, rows) if f.transform.startswith("log1p") else rng.normal(2.0, 3.0, rows)
            logit += 0.3 * np.tanh((np.log1p(x) if f.transform.startswith("log1p") else x / 3.0) - 0.5)
            x = x.astype(object)
            x[rng.random(rows) < 0.03] = None
            cols[f.name] = x
        else:
            cols[f.name] = None  # filled below, once the target items are known
    if len(bits) == 3:
        logit += 1.5 * np.where((bits[0] ^ bits[1] ^ bits[2]) == 1, 1.0, -1.0)
    for f in spec.by_kind("sequence"):
        owner = spec.feature(f.vocab_owner)
        card = _cardinality(spec, owner, rows)
        target = next((g for g in spec.by_kind("categorical") if g.vocab_owner == f.vocab_owner), None)
        seqs = []
        for i in range(rows):
            n = int(rng.integers(0, f.max_length + 1)) if rng.random() > 0.1 else 0
            ids = list(rng.integers(0, card, n))
            if target is not None and n and rng.random() < 0.5:
                ids[-1] = token_ids[target.name][i]
            seqs.append([f"{owner.name}_{j}" if owner.dtype == "string" else str(j) for j in ids])
            if target is not None and cols[target.name][i] is not None and cols[target.name][i] in seqs[-1]:
                logit[i] += 1.0
        cols[f.name] = seqs
    cols[spec.label.name] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    if spec.group_key and spec.group_key not in cols:
        cols[spec.group_key] = [f"g{i}" for i in rng.integers(0, max(4, rows // 8), rows)]
    if spec.weight and spec.weight not in cols:
        cols[spec.weight] = rng.uniform(0.5, 2.0, rows)
    if spec.timestamp and spec.timestamp not in cols:
        cols[spec.timestamp] = 1_700_000_000 + np.sort(rng.integers(0, 7 * 86400, rows))
    return pd.DataFrame(cols)



# A small spec exercising every table placement (shared / light-only / booster-only), hashing, both
# numeric paths, a shared-table sequence (DIN target) and an own-vocabulary sequence. Tests load it with
# tiny_spec(tmp_dir) so its spec.yaml copy exists like a shipped spec's.
TINY_SPEC_YAML = """
name: tiny
description: test-only spec covering every feature kind and tower placement
format:
  header: true
  columns: [clk, user_id, u_city, u_age, ad_id, ad_cate, ad_price, page, hist_cate, hist_shop]
label: {name: clk}
group_key: user_id
features:
  - {name: user_id, kind: categorical, side: user, embedding_dim: 8, vocab: {min_count: 1, oov_buckets: 2}}
  - {name: u_city, kind: categorical, side: user, embedding_dim: 8, towers: [booster]}
  - {name: u_age, kind: numeric, side: user, embedding_dim: 8, transform: bucketize, num_buckets: 4,
     towers: [booster]}
  - {name: ad_id, kind: categorical, side: item, embedding_dim: 8}
  - {name: ad_cate, kind: categorical, side: item, embedding_dim: 8}
  - {name: ad_price, kind: numeric, side: item, embedding_dim: 8, transform: log1p_standardize, clip_max: 1000.0}
  - {name: page, kind: categorical, side: context, embedding_dim: 8, hash_buckets: 16, towers: [light]}
  - {name: hist_cate, kind: sequence, side: user, embedding_dim: 8, max_length: 5, shares_embedding_with: ad_cate}
  - {name: hist_shop, kind: sequence, side: user, embedding_dim: 4, max_length: 4, pooling: max,
     towers: [booster]}
"""


def tiny_spec(directory) -> FeatureSpec:
    """Write TINY_SPEC_YAML into `directory` and load it."""
    from feature_specs import load_spec

    p = Path(directory) / "tiny.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(TINY_SPEC_YAML, encoding="utf-8")
    return load_spec(p)



def fixture_batch(spec: FeatureSpec, data_dir, split: str = "train", batch_size: int = 64
                  ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """The first `batch_size` records of a split as (model inputs, labels), parsed the way training does."""
    files = artifacts.list_shards(data_dir, split)
    raw = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size)))
    parsed = tf.io.parse_example(raw, derive.parse_spec(spec))
    return derive.to_model_inputs(spec, parsed), parsed[spec.label.name]


__all__ = ["write_fixture_dataset", "synthetic_frame", "numeric_base", "tiny_spec", "TINY_SPEC_YAML",
           "fixture_batch"]


def tiny_dataset(directory, rows: int, batch_size: int = 32) -> tuple[FeatureSpec, Path, tuple]:
    """(tiny spec, its preprocessed fixture data, one train batch): the set-up the model tests share."""
    directory = Path(directory)
    spec = tiny_spec(directory)
    data = write_fixture_dataset(spec, synthetic_frame(spec, rows, 0), directory / "data")
    return spec, data, fixture_batch(spec, data, batch_size=batch_size)
