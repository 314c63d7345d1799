"""Small eval fixtures: a tiny preprocessed-looking data dir and SavedModels whose scores are known exactly.

The models honour the serving contract (serving_default(examples: string [N]) -> ctr, logit) with
logit = a * x + b computed from the Example's numeric feature `x`, so tests know every score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

SPEC_YAML = """\
name: evaltiny
format: {columns: [clk, user_id, pid, x, n, w]}
label: {name: clk}
group_key: user_id
weight: %s
features:
  - {name: user_id, kind: categorical, side: user}
  - {name: pid, kind: categorical, side: context}
  - {name: x, kind: numeric, side: item}
  - {name: n, kind: numeric, side: item}
"""


def frame(rows: int = 400, users: int = 25, seed: int = 0) -> pd.DataFrame:
    """Clicks that depend on x (rounded to 0.1 so scores tie), not on the noise column n; a few single-class
    users; 3 pid values."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=rows), 1)
    user = rng.integers(0, users, size=rows)
    clk = (rng.random(rows) < 1 / (1 + np.exp(-(1.5 * x - 1.0)))).astype(float)
    clk[user == 0] = 0.0  # a user with no clicks
    clk[user == 1] = 1.0  # a user with only clicks
    w = np.round(rng.uniform(0.5, 2.0, size=rows), 2)
    return pd.DataFrame({"clk": clk, "user_id": [f"u{u}" for u in user],
                         "pid": rng.choice(["p1", "p2", "p3"], size=rows), "x": x,
                         "n": np.round(rng.normal(size=rows), 2), "w": w})


def example(row: dict, weighted: bool) -> bytes:
    f = tf.train.Feature
    feats = {"clk": f(float_list=tf.train.FloatList(value=[row["clk"]])),
             "user_id": f(bytes_list=tf.train.BytesList(value=[row["user_id"].encode()])),
             "pid": f(bytes_list=tf.train.BytesList(value=[row["pid"].encode()])),
             "x": f(float_list=tf.train.FloatList(value=[row["x"]]))}
    if "n" in row:
        feats["n"] = f(float_list=tf.train.FloatList(value=[row["n"]]))
    if weighted:
        feats["w"] = f(float_list=tf.train.FloatList(value=[row["w"]]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_data(out_dir: Path, df: pd.DataFrame, weighted: bool = False, shards: int = 2,
               extra_records: list[bytes] = ()) -> Path:
    """DIR/spec.yaml + DIR/eval-0000i-of-0000n.tfrecord.gz holding df's rows (plus any raw extra records)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spec.yaml").write_text(SPEC_YAML % ("w" if weighted else "null"))
    records = [example(r, weighted) for r in df.to_dict("records")] + list(extra_records)
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    for i in range(shards):
        with tf.io.TFRecordWriter(str(out_dir / f"eval-{i:05d}-of-{shards:05d}.tfrecord.gz"), opts) as w:
            for rec in records[i::shards]:
                w.write(rec)
    return out_dir


class LinearScorer(tf.Module):
    """logit = a * x + b + c * n (c mixes in the noise column, making a worse ranking)."""

    def __init__(self, a: float, b: float, c: float):
        super().__init__()
        self.a, self.b, self.c = (tf.Variable(v, dtype=tf.float32) for v in (a, b, c))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        zero = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
        f = tf.io.parse_example(examples, {"x": zero, "n": zero})
        logit = self.a * f["x"] + self.b + self.c * f["n"]
        return {"ctr": tf.sigmoid(logit), "logit": logit}


def save_linear(path: Path, a: float, b: float, c: float = 0.0) -> Path:
    m = LinearScorer(a, b, c)
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve.get_concrete_function()})
    return path


def expected_scores(df: pd.DataFrame, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """(logit, ctr) exactly as the SavedModel computes them (float32)."""
    logit = np.float32(a) * df["x"].to_numpy(np.float32) + np.float32(b)
    return logit.astype(np.float64), (1 / (1 + np.exp(-logit.astype(np.float64))))


def write_run(run_dir: Path, name: str, mode: str, seed: int, light: tuple[float, ...],
              booster: tuple[float, ...] | None) -> Path:
    """A training-run-shaped folder: config.json plus towers/light (and towers/booster) SavedModels."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"config": {"name": name, "train": {"mode": mode, "seed": seed}},
                                                     "data_dir": "unused"}))
    save_linear(run_dir / "towers" / "light", *light)
    if booster is not None:
        save_linear(run_dir / "towers" / "booster", *booster)
    return run_dir
