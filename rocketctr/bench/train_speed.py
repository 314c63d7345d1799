"""`rocketctr bench train`: training throughput and wall time of every mode on the same data and epochs.

Prints, for one preprocessing output (DIR):
  input pipeline alone   examples/s of make_dataset (read + decompress + batch parse), no model
  light / booster / rocket   examples/s of the training loop, and the job's whole wall time
  two-stage KD           booster job, then a kd student job against it: the sum of both walls
and checks the targets: rocket >= 25k examples/s; rocket wall <= 0.7 x two-stage KD wall; input pipeline
>= 3x rocket's training rate. models must not import pipeline, so the data is made beforehand:

  rocketctr simulate --rows 1000000 --out /tmp/sim
  rocketctr preprocess --spec synthetic --input '/tmp/sim/clicks*' --output /tmp/sim_data
  rocketctr bench train --data /tmp/sim_data [--rows 500000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from common.progress import ProgressMeter
from feature_specs import artifacts
from common.typed_yaml import deep_merge
from models.config import load_config, parse_override
from models.data import make_dataset
from models.run import resolve_spec
from models.train import train
from rocketctr.shipped_configs import config_path

CONFIG = config_path("synthetic")
TARGET_ROCKET_EPS = 25_000
TARGET_WALL_RATIO = 0.7
TARGET_INPUT_FACTOR = 3.0


@dataclass(frozen=True)
class Figure:
    name: str
    examples: int
    train_seconds: float
    wall_seconds: float

    @property
    def eps(self) -> float:
        return self.examples / self.train_seconds if self.train_seconds > 0 else float("nan")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rocketctr bench train", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="preprocessing output folder (see the command sequence above)")
    p.add_argument("--rows", type=int, help="train on at most this many rows (max_steps = rows / batch)")
    p.add_argument("--epochs", type=int, default=1, help="epochs for every mode (default 1: one pass)")
    p.add_argument("--config", default=str(CONFIG), help="training config (default configs/synthetic.yaml)")
    p.add_argument("--experiment", help="experiment inside --config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    p.add_argument("--out", help="keep the runs here (default: a temp folder, deleted)")
    p.add_argument("--modes", default="input,light,booster,rocket,kd",
                   help="comma list of input,light,booster,rocket,kd (kd = the two-stage pipeline)")
    return p


def input_pipeline(data_dir: str, cfg, rows: int | None) -> Figure:
    """Read + parse the train split as training would (shuffle included), without a model."""
    spec = resolve_spec(cfg, data_dir)
    take = None if rows is None else -(-rows // cfg.train.batch_size)
    ds = make_dataset(data_dir, spec, "train", cfg.train.batch_size, shuffle=True, seed=cfg.train.seed,
                      shuffle_buffer=cfg.train.shuffle_buffer, take_batches=take)
    n, start = 0, time.monotonic()
    for _x, y, _w in ds:
        n += int(tf.shape(y)[0])
    secs = time.monotonic() - start
    return Figure("input pipeline alone", n, secs, secs)


def run_mode(name: str, data_dir: str, cfg, out: Path) -> Figure:
    start = time.monotonic()
    train(cfg, data_dir, out, verbose=0)
    wall = time.monotonic() - start
    m = json.loads((out / "metrics.json").read_text())
    return Figure(name, int(m["examples"]), float(m["train_seconds"]), wall)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    over: dict = {"train": {"epochs": args.epochs, "validation_fraction": 0.0, "checkpoint_every_steps": 0}}
    for text in args.overrides:
        over = deep_merge(over, parse_override(text))
    base = load_config(args.config, args.experiment, over)
    stats = artifacts.read_stats(args.data)
    if args.rows:
        base = load_config(args.config, args.experiment, deep_merge(over, {"train": {
            "max_steps": -(-args.rows // base.train.batch_size) * args.epochs}}))
    print(f"data {args.data}: {stats.train_rows} train rows; batch {base.train.batch_size}, epochs {args.epochs}"
          + (f", rows cap {args.rows}" if args.rows else ""))
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_train_"))
    figures: dict[str, Figure] = {}
    if "input" in modes:
        figures["input"] = input_pipeline(args.data, base, args.rows * args.epochs if args.rows else None)
    runs = [m for m in ("light", "booster", "rocket") if m in modes or (m == "booster" and "kd" in modes)]
    meter = ProgressMeter("bench train", total=len(runs) + ("kd" in modes), unit="runs")
    for mode in runs:
        figures[mode] = run_mode(mode, args.data, _with(base, mode=mode), root / mode)
        meter.advance()
        print(f"[bench train] {mode} finished: {meter.position()}, {meter.timing()}", flush=True)
    if "kd" in modes:
        student = run_mode("kd student", args.data, _with(base, mode="kd", teacher_run=str(root / "booster")),
                           root / "kd")
        meter.advance()
        print(f"[bench train] kd student finished: {meter.position()}, {meter.timing()}", flush=True)
        figures["kd student"] = student
        b = figures["booster"]
        figures["kd"] = Figure("two-stage KD (booster + student)", b.examples + student.examples,
                               b.train_seconds + student.train_seconds, b.wall_seconds + student.wall_seconds)
    _report(figures)
    if not args.out:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


def _with(cfg, **train):
    from dataclasses import replace

    return replace(cfg, train=replace(cfg.train, **train)).validate()


def _report(f: dict[str, Figure]) -> None:
    print(f"{'':34s} {'examples':>10s} {'train s':>9s} {'examples/s':>11s} {'wall s':>8s}")
    for fig in f.values():
        print(f"{fig.name:34s} {fig.examples:10d} {fig.train_seconds:9.2f} {fig.eps:11.0f} {fig.wall_seconds:8.2f}")
    if "rocket" in f:
        r = f["rocket"]
        print(f"target rocket >= {TARGET_ROCKET_EPS} examples/s: {r.eps:.0f} "
              f"{'OK' if r.eps >= TARGET_ROCKET_EPS else 'MISSED'}")
        if "kd" in f:
            ratio = r.wall_seconds / f["kd"].wall_seconds
            print(f"target rocket wall <= {TARGET_WALL_RATIO} x two-stage KD wall: {ratio:.2f} "
                  f"{'OK' if ratio <= TARGET_WALL_RATIO else 'MISSED'}")
        if "input" in f:
            factor = f["input"].eps / r.eps
            print(f"target input pipeline >= {TARGET_INPUT_FACTOR}x rocket's rate: {factor:.1f}x "
                  f"{'OK' if factor >= TARGET_INPUT_FACTOR else 'MISSED'}")
