"""`rocketctr bench quality`: reproduce the Rocket Launching comparison on any preprocessed dataset.

For every variant x seed (rocketctr/bench/quality/variants.py) it trains a run (models.train.train) under
WORKDIR/runs/<variant>/seed<k>, scores its towers on the eval split (GAUC, AUC, logloss; the eval job's own
code in-process by default, or `--metrics beam` for one Beam eval job per run), and writes a markdown table
plus a JSON with every raw number (rocketctr/bench/quality/summary.py defines each figure). Finished runs found in
the workdir with the same config are reused, so an interrupted bench continues where it stopped.

Hyperparameters are never chosen on eval: the bench takes the config as given; early stopping / selection
(if the config enables it) uses the training job's validation slice of the train split.

  rocketctr bench quality --simulate 1000000 --seeds 5           # from nothing: simulate + preprocess first
  rocketctr bench quality --data DIR --config configs/taobao.yaml --seeds 3 --variants rocket,kd_two_stage
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

import feature_specs
from feature_specs import artifacts
from rocketctr.shipped_configs import config_path

CONFIG = config_path("synthetic")
KIND, VERSION = "rocketctr-quality-bench", 1


def _parser() -> argparse.ArgumentParser:
    from rocketctr.bench.quality.variants import DEFAULT_VARIANTS

    p = argparse.ArgumentParser(prog="rocketctr bench quality", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[-2:]))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="preprocessing output folder (shards, vocab, stats, spec.yaml)")
    src.add_argument("--simulate", type=int, metavar="ROWS",
                     help="simulate ROWS impressions and Beam-preprocess them into WORKDIR/data first")
    p.add_argument("--config", default=str(CONFIG), help="training config with the variants' experiments "
                   "(default configs/synthetic.yaml)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per variant (default 5)")
    p.add_argument("--variants", nargs="+", metavar="NAME", help="comma/space list (default: all of "
                   f"{', '.join(DEFAULT_VARIANTS)}); light_alone and booster_alone are always included")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="config override applied to every variant (e.g. train.max_steps=2000)")
    p.add_argument("--out", default="quality_bench.md", help="markdown report (the JSON goes next to it)")
    p.add_argument("--workdir", help="runs (and simulated data) go here (default: <out without suffix>.work)")
    p.add_argument("--metrics", choices=("direct", "beam"), default="direct",
                   help="direct (default): the eval job's own DoFns/combines in-process, fast; beam: one Beam "
                        "eval job per run (see rocketctr/bench/quality/eval_scores.py)")
    p.add_argument("--check-beam", action="store_true",
                   help="also score the first run with the Beam eval job and record the largest difference")
    p.add_argument("--sim-seed", type=int, default=0, help="simulator world/row seed (with --simulate)")
    p.add_argument("--workers", type=int, default=2,
                   help="Beam worker processes for the --simulate preprocessing (default 2)")
    p.add_argument("--fresh", action="store_true", help="delete the workdir's runs instead of reusing them")
    return p


def prepare_simulated(rows: int, workdir: Path, seed: int, workers: int, echo=print) -> Path:
    """WORKDIR/raw <- simulate(rows), WORKDIR/data <- preprocess; reused when both match rows and seed."""
    from pipeline.beam_options import local_runner_args
    from pipeline.preprocess.preprocess_job import preprocess
    from pipeline.simulator.click_logs import simulate

    raw, data = workdir / "raw", workdir / "data"
    summary = raw / "simulation.json"
    if summary.is_file() and Path(artifacts.manifest_path(data)).is_file():
        s = json.loads(summary.read_text())
        if s.get("rows") == rows and s.get("seed") == seed:
            echo(f"reusing simulated + preprocessed data in {data}")
            return data
    t0 = time.monotonic()
    sim = simulate(rows, raw, seed=seed, overwrite=True)
    echo(f"simulated {rows:,} rows in {time.monotonic() - t0:.1f} s (truth AUC {_f(sim.truth_auc)})")
    t0 = time.monotonic()
    preprocess(feature_specs.load_spec("synthetic"), [str(f) for f in sim.click_files], str(data),
               beam_args=local_runner_args(workers), overwrite=True)
    echo(f"preprocessed into {data} in {time.monotonic() - t0:.1f} s")
    return data



SINGLE_TOWER_MODES = ("light", "booster")
SCORES_FILE = "quality_scores.json"  # RUN_DIR/: the direct eval scores of that run on that data


def run_identity(config: dict) -> dict:
    """The part of a run's config that can change its result: a tower trained alone never reads the hint
    settings (model.loss), so changing the shipped hint defaults does not retrain the light-alone and
    booster-alone baselines."""
    mode = (config.get("train") or {}).get("mode")
    if mode not in SINGLE_TOWER_MODES or "model" not in config:
        return config
    model = {k: v for k, v in config["model"].items() if k != "loss"}
    return {**config, "model": model}


class Bench:
    """Runs the variants x seeds, keeping the raw results (saved after every run: nothing is lost on a crash)."""

    def __init__(self, args: argparse.Namespace, data: Path, workdir: Path, echo=print):
        from common.typed_yaml import deep_merge
        from models.config import parse_override
        from rocketctr.bench.quality.variants import resolve_variants, variant_config

        self.args, self.data, self.workdir, self.echo = args, data, workdir, echo
        names = [n for item in (args.variants or []) for n in item.split(",") if n.strip()]
        self.variants = resolve_variants(names or None)
        self.overrides: dict = {}
        for text in args.overrides:
            self.overrides = deep_merge(self.overrides, parse_override(text))
        for v in self.variants:  # a missing experiment or a bad --set fails now, not after hours of training
            variant_config(args.config, v, 0, self.overrides, "<teacher run>" if v.needs_teacher else None)
        self.runs: list[dict] = []
        self.trained: set[Path] = set()  # runs trained by this invocation (a kd student of a new teacher retrains)
        self.beam_check: dict | None = None
        self.eval_set = None

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.workdir / "runs" / variant / f"seed{seed}"

    def train_one(self, variant, seed: int) -> Path:
        """Train (or reuse a finished identical run); an unfinished or different run is started afresh."""
        from models.config import config_to_dict
        from models.train import train
        from rocketctr.bench.quality.variants import variant_config

        teacher = self.run_dir(variant.teacher, seed) if variant.needs_teacher else None
        cfg = variant_config(self.args.config, variant, seed, self.overrides, teacher)
        run = self.run_dir(variant.name, seed)
        stale_teacher = teacher is not None and teacher in self.trained
        if (run / "metrics.json").is_file() and (run / "config.json").is_file() and not stale_teacher:
            saved = json.loads((run / "config.json").read_text())
            if run_identity(saved.get("config") or {}) == run_identity(config_to_dict(cfg)) \
                    and saved.get("data_dir") == str(self.data.resolve()):
                self.echo(f"  {variant.name} seed {seed}: reusing finished run {run}")
                return run
        shutil.rmtree(run, ignore_errors=True)
        train(cfg, self.data, run, verbose=0)
        self.trained.add(run)
        return run

    def score(self, run: Path) -> dict[str, dict]:
        from rocketctr.bench.quality import eval_scores

        if self.args.metrics == "beam":
            return eval_scores.score_run_beam(run, self.data, run / "quality_eval")
        cache = run / SCORES_FILE  # a finished run never changes (a retrain deletes the folder): score it once
        key = {"data_dir": str(self.data.resolve()), "metrics": "direct"}
        if cache.is_file() and not self.args.check_beam:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return saved["scores"]
        if self.eval_set is None:
            self.eval_set = eval_scores.load_eval_set(self.data)
        direct = eval_scores.score_run_direct(run, self.eval_set)
        if self.args.check_beam and self.beam_check is None:
            beam = eval_scores.score_run_beam(run, self.data, run / "quality_eval")
            diff = eval_scores.max_difference(direct, beam)
            self.beam_check = {"run": str(run), "max_abs_difference": diff, "direct": direct, "beam": beam}
            self.echo(f"  beam check on {run.name}: largest |direct - beam| over towers x metrics = {diff:.3g}")
        cache.write_text(json.dumps({"key": key, "scores": direct}, indent=1, sort_keys=True))
        return direct

    def run_all(self, save) -> None:
        from common.progress import ProgressMeter

        total, k = len(self.variants) * self.args.seeds, 0
        meter = ProgressMeter("bench quality", total=total, unit="runs")  # reused runs count as done, untimed
        for seed in range(self.args.seeds):  # seed-major: every finished seed is a complete paired comparison
            for v in self.variants:
                k += 1
                t0 = time.monotonic()
                run = self.train_one(v, seed)
                m = json.loads((run / "metrics.json").read_text())
                scored = self.score(run)
                meter.advance(timed=run in self.trained)
                self.runs.append({
                    "variant": v.name, "seed": seed, "run_dir": str(run), "mode": v.mode, "experiment": v.experiment,
                    "metrics": scored, "train_seconds": m["train_seconds"], "job_seconds": m["wall_seconds"],
                    "examples": m["examples"], "steps": m["steps"], "examples_per_sec": m.get("examples_per_sec"),
                    "validation": m.get("validation"), "train_job_eval": m.get("eval")})
                light = scored.get("light") or scored.get("booster") or {}
                self.echo(f"[{k}/{total}] {v.name} seed {seed}: AUC {_f(light.get('auc'))} GAUC "
                          f"{_f(light.get('gauc'))} logloss {_f(light.get('logloss'))}, train "
                          f"{m['train_seconds']:.1f} s{' (student only)' if v.needs_teacher else ''} "
                          f"({time.monotonic() - t0:.0f} s with scoring); {meter.timing()}")
                save()


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def header_lines(bench: Bench, wall: float) -> list[str]:
    stats = artifacts.read_stats(bench.data)
    ev = bench.eval_set
    eval_rows = f"{len(ev):,} eval rows" if ev is not None else "eval split"
    return [f"- data: `{bench.data}` ({stats.train_rows:,} train rows, {eval_rows}, base CTR "
            f"{stats.label_rate:.4f})",
            f"- config: `{bench.args.config}`, overrides: `{json.dumps(bench.overrides)}`",
            f"- seeds: {bench.args.seeds}; metrics: {bench.args.metrics}"
            + (f"; beam check max |diff| = {bench.beam_check['max_abs_difference']:.3g}" if bench.beam_check else ""),
            f"- bench wall time: {wall:.0f} s on {os.cpu_count()} CPUs (shared machine: timings are indicative; "
            f"compare ratios, not absolute seconds)",
            f"- written {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}"]


def main(argv: list[str]) -> int:
    from models.config import ConfigError
    from rocketctr.bench.quality.summary import markdown, summarize

    args = _parser().parse_args(argv)
    if args.seeds < 1:
        print("rocketctr bench quality: --seeds must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    workdir = Path(args.workdir) if args.workdir else out.with_suffix(".work")
    if args.fresh:
        shutil.rmtree(workdir / "runs", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        data = prepare_simulated(args.simulate, workdir, args.sim_seed, args.workers) if args.simulate \
            else Path(args.data)
        artifacts.read_stats(data)  # a clear error now rather than after the first run
        bench = Bench(args, data, workdir)
    except (ValueError, ConfigError, artifacts.ArtifactError) as e:
        print(f"rocketctr bench quality: {e}", file=sys.stderr)
        return 2
    json_path = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        wall = time.monotonic() - start
        summary = summarize(bench.runs)
        doc = {"kind": KIND, "version": VERSION, "data_dir": str(data.resolve()), "config": args.config,
               "overrides": bench.overrides, "seeds": args.seeds, "variants": [v.name for v in bench.variants],
               "metrics_path": args.metrics, "bench_wall_seconds": round(wall, 1), "cpus": os.cpu_count(),
               "eval_rows": len(bench.eval_set) if bench.eval_set is not None else None,
               "beam_check": bench.beam_check, "runs": bench.runs, "summary": summary}
        json_path.write_text(json.dumps(doc, indent=1, sort_keys=True))
        out.write_text(markdown(summary, header_lines(bench, wall)))

    bench.run_all(save)
    save()
    print(out.read_text())
    print(f"wrote {out} and {json_path} (runs in {workdir / 'runs'})")
    return 0
