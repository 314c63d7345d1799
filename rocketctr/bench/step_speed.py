"""Train-step throughput of the model alone (no input pipeline): examples/s of Keras fit on in-memory batches.

Isolates the model's cost (lookups, towers, loss, per-part optimizers) from reading and parsing, which
`rocketctr bench train` measures end to end. Artifacts are synthesised at the spec's shape: every
vocabulary feature gets --vocab tokens (26 categorical x 100k x dim 16 for feature_specs/synthetic.yaml),
ids are Zipf-distributed like real traffic.

  python -m rocketctr.bench.step_speed [--spec synthetic] [--vocab 100000] [--batch 1024] [--steps 60] [--modes rocket]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from common import fs
from feature_specs import artifacts, load_spec
from feature_specs.schema import FeatureSpec
from models.config import RunConfig, TrainConfig
from models.rocket import build_model


def write_shape_artifacts(spec: FeatureSpec, out: Path, vocab: int) -> Path:
    """vocab/ and stats.json with `vocab` tokens per vocabulary (t0..t{vocab-1}); no shards needed."""
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    lines = "".join(f"t{i}\t{vocab - i}\n" for i in range(vocab))
    for f in spec.vocab_features:
        fs.write_text(artifacts.vocab_path(out, f.name), lines)
    numeric = {f.name: artifacts.NumericStats(count=1, missing=0, mean=1.0, std=2.0, min=0.0, max=9.0,
                                              boundaries=tuple(np.linspace(0, 9, max(f.num_buckets - 1, 0))))
               for f in spec.by_kind("numeric")}
    stats = artifacts.Stats(artifacts.ARTIFACT_VERSION, 1, 0.1, numeric, {})
    fs.write_text(artifacts.stats_path(out), json.dumps(artifacts.stats_to_json(stats)))
    return out


def random_batch(spec: FeatureSpec, batch: int, vocab: int, rng: np.random.Generator):
    x = {}
    for f in spec.features:
        if f.kind == "categorical":
            x[f.name] = tf.constant([f"t{i}" for i in rng.zipf(1.2, batch) % vocab])
        elif f.kind == "numeric":
            x[f.name] = tf.constant(rng.lognormal(0, 1, batch).astype(np.float32))
        else:
            length = f.max_length or 20
            x[f.name] = tf.constant([[f"t{i}" for i in rng.zipf(1.2, length) % vocab] for _ in range(batch)])
    return x, tf.constant((rng.random(batch) < 0.1).astype(np.float32))


def measure(spec: FeatureSpec, data_dir: Path, mode: str, batch: int, steps: int, vocab: int) -> float:
    rng = np.random.default_rng(0)
    batches = [random_batch(spec, batch, vocab, rng) for _ in range(3)]
    ds = tf.data.Dataset.from_tensors(batches[0])
    for b in batches[1:]:
        ds = ds.concatenate(tf.data.Dataset.from_tensors(b))
    ds = ds.repeat().prefetch(4)
    model = build_model(spec, data_dir, RunConfig(train=TrainConfig(mode=mode, batch_size=batch)))
    model.compile()
    model.fit(ds, steps_per_epoch=10, verbose=0)  # trace + warm up
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, verbose=0)
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_step", description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="synthetic")
    p.add_argument("--vocab", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--modes", default="rocket", help="comma-separated: rocket,light,booster")
    args = p.parse_args(argv)
    spec = load_spec(args.spec)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_shape_artifacts(spec, Path(tmp), args.vocab)
        for mode in args.modes.split(","):
            eps = measure(spec, data, mode, args.batch, args.steps, args.vocab)
            print(f"train step  mode={mode:8s} batch={args.batch} vocab={args.vocab}: {eps:,.0f} examples/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
