"""`rocketctr demo`: the whole production flow end to end on the built-in click simulator.

simulate -> Beam preprocess -> train light-alone and rocket -> distill the rocket booster into a light student ->
export the better light net (validation slice) -> serve over gRPC -> score candidates for a few users through the
client -> offline eval (light-alone vs rocket-light vs booster vs distilled student) ->
results table + serving latency, all under one output folder with a report.md that links every artifact.
It lives in the CLI package because it is the one place allowed to use every other package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import feature_specs
from feature_specs import artifacts
from rocketctr.shipped_configs import config_path

CONFIG = config_path("synthetic")
MODEL_NAME = "rocketctr"


@dataclass
class DemoResult:
    out_dir: Path
    stages: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    report: Path | None = None
    exported: str = ""  # which run's light net was exported and served


class Stages:
    """Prints numbered progress lines, records each stage's wall time, and sends the stage's own log
    output (Beam workers and TensorFlow write to file descriptor 2, also from subprocesses) to
    OUT/logs/<n>.log so the console shows progress and results only."""

    def __init__(self, total: int, result: DemoResult, echo=print):
        self.total, self.n, self.result, self.echo = total, 0, result, echo
        self.log_dir = result.out_dir / "logs"

    @contextlib.contextmanager
    def stage(self, name: str):
        self.n += 1
        self.echo(f"[{self.n}/{self.total}] {name} ...", flush=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        log_path = self.log_dir / f"{self.n}.log"
        try:
            with redirect_stderr_fd(log_path):
                yield
        except BaseException:
            self.echo(f"[{self.n}/{self.total}] {name}: FAILED (stage log: {log_path})", flush=True)
            raise
        dt = time.perf_counter() - t0
        self.result.stages[name] = round(dt, 2)
        self.echo(f"[{self.n}/{self.total}] {name}: done in {dt:.1f} s", flush=True)


@contextlib.contextmanager
def redirect_stderr_fd(path: Path):
    """Point fd 2 (inherited by Beam's worker processes) and Python's sys.stderr (the jobs' progress lines and
    counter tables) at `path` for the duration; always restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        with open(path, "a", buffering=1) as text, contextlib.redirect_stderr(text):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def run_demo(out_dir: str | Path, rows: int = 1_000_000, seed: int = 0, workers: int = 2,
             candidates: int = 300, users: int = 3, overwrite: bool = True, echo=print,
             train_overrides: dict | None = None) -> DemoResult:
    """Run every stage; the gRPC server it starts is stopped on success, failure and Ctrl-C alike."""
    from models.config import load_config
    from models.train import train
    from pipeline.evaluate.eval_job import evaluate
    from pipeline.beam_options import local_runner_args
    from pipeline.preprocess.preprocess_job import preprocess
    from pipeline.simulator.click_logs import simulate
    from serving.export import export_run

    quiet_logs()
    out = Path(out_dir)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out)
    st = Stages(8, result, echo)
    spec = feature_specs.load_spec("synthetic")
    beam_args = [*local_runner_args(workers), "--default_sdk_harness_log_level=ERROR"]
    with st.stage(f"simulate {rows:,} impressions"):
        sim = simulate(rows, out / "raw", seed=seed)
        echo(f"    base CTR {sim.base_ctr:.2%}, ground-truth AUC {_f(sim.truth_auc)}")
    with st.stage("Beam preprocess (validate, split, analyze, encode TFRecords)"):
        data = preprocess(spec, [str(f) for f in sim.click_files], str(out / "data"), beam_args=beam_args)
        m = artifacts.read_manifest(data)
        echo(f"    manifest: {json.dumps(m.get('rows', m.get('counts', {})))[:200]}")
    runs = {}
    with st.stage("train light-alone and rocket (light + booster co-trained)"):
        for name, mode in (("light", "light"), ("rocket", "rocket")):
            cfg = load_config(CONFIG, experiment=None, overrides={"train": {"mode": mode, "seed": seed},
                                                                  **(train_overrides or {})})
            runs[name] = train(cfg, data, out / "runs" / name, verbose=0)
            echo(f"    {name}: {_short_metrics(runs[name])}")
    with st.stage("distill the rocket run's booster into a light student (two-stage KD, MSE on logits)"):
        # docs/BENCHMARKS.md: in one pass the co-trained hint recovers about a third of the booster's edge; a
        # student of the finished booster recovers most of it for one more light-sized pass
        cfg = load_config(CONFIG, experiment="kd", overrides={"train": {"mode": "kd", "seed": seed,
                                                                        "teacher_run": str(runs["rocket"])},
                                                              **(train_overrides or {})})
        runs["distilled"] = train(cfg, data, out / "runs" / "distilled", verbose=0)
        echo(f"    distilled: {_short_metrics(runs['distilled'])}")
    with st.stage("export the light net with the best validation AUC (TF Serving layout)"):
        # light-alone is a candidate too: where the booster is no better (the real sets in docs/BENCHMARKS.md)
        # neither transfer may beat it, and the job must never ship a net worse than the one it could train alone
        result.exported, why = pick_light_net(runs, ("rocket", "distilled", "light"))
        echo(f"    {why}")
        version_dir = export_run(runs[result.exported], out / "models" / MODEL_NAME)
        echo(f"    exported {version_dir}")
    with st.stage(f"serve over gRPC and score {candidates} candidates for {users} users"):
        with server_process(out / "models" / MODEL_NAME, out / "server.log") as target:
            echo(f"    server {target} (log: {out / 'server.log'})")
            result.latency_ms = score_through_server(target, spec, data, candidates, users, echo)
    with st.stage("offline eval (Beam RunInference): GAUC, AUC, logloss"):
        others = [runs[k] for k in ("rocket", "distilled") if k != result.exported]
        baseline = runs["light"] if result.exported != "light" else None
        ev = evaluate(runs[result.exported], data, out / "eval", baseline=baseline, beam_args=beam_args,
                      also=others)
        result.eval_metrics = json.loads((ev / "metrics.json").read_text())
    with st.stage("report"):
        result.report = write_report(result, sim, data, runs, version_dir, ev)
        echo("")
        echo(results_table(result.eval_metrics))
        echo("")
        echo(calibration_line(result.eval_metrics))
        echo(latency_line(result.latency_ms))
        echo(f"report: {result.report}")
    return result


@contextlib.contextmanager
def server_process(model_base: Path, log_path: Path, timeout: float = 120.0):
    """Run `rocketctr serve` in its own process (as in production: no GIL shared with the client) on free
    loopback ports; yield its gRPC target; always stop it (success, failure, Ctrl-C)."""
    from serving.server_process import ServerProcess

    with ServerProcess(model_base, MODEL_NAME, args=["--poll-seconds", "30"], log_path=log_path,
                       timeout=timeout) as server:
        yield server.target


def quiet_logs() -> None:
    """Beam's workers and TensorFlow log at INFO/WARN per bundle; the demo shows its own progress instead."""
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("apache_beam", "tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def score_through_server(target: str, spec, data_dir: Path, candidates: int, users: int, echo,
                         repeats: int = 200) -> dict:
    """Score `candidates` eval items for `users` eval users via score_candidates; time it over gRPC."""
    from serving.client import PredictClient
    from serving.export import model_inputs_of, read_eval_examples

    examples = read_eval_examples(data_dir, candidates + users)
    x = model_inputs_of(spec, examples)
    item_names = [f.name for f in spec.by_side("item")]
    items = {k: x[k][users:users + candidates] for k in item_names}
    client = PredictClient(target, MODEL_NAME, spec=spec)
    for u in range(users):
        user = {k: (x[k][u] if x[k].ndim == 1 else x[k][u]) for k in x if k not in item_names}
        scores = client.score_candidates(user, items)
        top = np.argsort(-scores)[:3]
        echo(f"    user {u}: {len(scores)} candidates, mean CTR {scores.mean():.4f}, top-3 "
             + ", ".join(f"#{i} {scores[i]:.4f}" for i in top))
    user = {k: x[k][0] for k in x if k not in item_names}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        client.score_candidates(user, items)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"target": target, "candidates": candidates, "requests": repeats, "p50": float(np.percentile(times, 50)),
            "p99": float(np.percentile(times, 99))}


def validation_auc(run_dir: Path) -> float | None:
    """The light net's best validation AUC (the slice of the train split; never the eval split)."""
    return (json.loads((Path(run_dir) / "metrics.json").read_text()).get("validation") or {}).get("best")


def pick_light_net(runs: dict[str, Path], names: tuple[str, ...]) -> tuple[str, str]:
    """(name, reason): the run whose light net scores best on the validation slice; the first one on a tie or
    when a run has no validation figure."""
    scores = {n: validation_auc(runs[n]) for n in names}
    best = max((n for n in names if scores[n] is not None), key=lambda n: scores[n], default=names[0])
    shown = ", ".join(f"{n} {_f(scores[n])}" for n in names)
    return best, f"validation AUC of the light net: {shown} -> exporting {best}"


def _short_metrics(run_dir: Path) -> str:
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    towers = m.get("eval", m.get("towers", {}))
    parts = [f"{t} AUC {_f(v.get('auc'))}" for t, v in towers.items() if isinstance(v, dict)]
    return ", ".join(parts) + f" ({m.get('examples_per_sec', 0):,.0f} ex/s)"


def results_table(doc: dict) -> str:
    lines = ["| model | AUC | GAUC | logloss | calibration | calibration before |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, m in doc.get("models", {}).items():
        mm = m["metrics"]
        lines.append(f"| {label} | {_f(mm.get('auc'))} | {_f(mm.get('gauc'))} | {_f(mm.get('logloss'))} | "
                     f"{_f(mm.get('calibration'))} | {_f(mm.get('calibration_uncalibrated'))} |")
    return "\n".join(lines)


def served_calibration(doc: dict) -> dict | None:
    """The served net's eval calibration and logloss before (raw logit) / after (the served score), from the
    eval's metrics.json (the candidate's light tower); None when the eval has no before figures."""
    models = doc.get("models", {})
    label = next((k for k, m in models.items() if m.get("role") == "candidate" and m.get("tower") in (None, "light")),
                 None)
    mm = models[label]["metrics"] if label else {}
    if mm.get("calibration_uncalibrated") is None:
        return None
    return {"model": label, "calibration_before": mm["calibration_uncalibrated"], "calibration_after":
            mm.get("calibration"), "logloss_before": mm.get("logloss_uncalibrated"), "logloss_after": mm.get("logloss")}


def calibration_line(doc: dict) -> str:
    c = served_calibration(doc)
    if c is None:
        return "served net calibration before/after: n/a (the eval has no uncalibrated scores)"
    return (f"served net ({c['model']}) eval calibration (mean predicted / observed CTR): before "
            f"{_f(c['calibration_before'])} -> after {_f(c['calibration_after'])}; logloss "
            f"{_f(c['logloss_before'])} -> {_f(c['logloss_after'])} (Platt scaling fitted on the validation slice, "
            f"baked into the export)")


def latency_line(lat: dict) -> str:
    return (f"serving latency over gRPC, score_candidates with {lat.get('candidates')} candidates, "
            f"{lat.get('requests')} requests: p50 {lat.get('p50', 0):.2f} ms, p99 {lat.get('p99', 0):.2f} ms")


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def write_report(result: DemoResult, sim, data: Path, runs: dict, version_dir: Path, ev: Path) -> Path:
    out = result.out_dir
    rel = lambda p: Path(p).resolve().relative_to(out.resolve()).as_posix()  # noqa: E731
    lines = ["# rocketctr demo", "",
             f"Simulated {sim.rows:,} impressions (base CTR {sim.base_ctr:.2%}, ground-truth AUC "
             f"{_f(sim.truth_auc)}, additive-only AUC {_f(sim.additive_auc)}).", "",
             f"Exported and served: the light net of run `{result.exported}` (best light-net AUC on the validation "
             f"slice of the train split).", "",
             "## Offline evaluation (eval split)", "", results_table(result.eval_metrics), "",
             "Calibration = mean predicted CTR / observed CTR (1 = calibrated); \"before\" is the net's raw logit, "
             "the other columns score what is served.", "", calibration_line(result.eval_metrics), "",
             latency_line(result.latency_ms), "", "## Stages (wall seconds)", "",
             *[f"- {k}: {v}" for k, v in result.stages.items()], "", "## Artifacts", "",
             f"- raw logs and ground truth: [{rel(sim.out_dir)}]({rel(sim.out_dir)}/simulation.json)",
             f"- preprocessing output: [{rel(data)}/manifest.json]({rel(data)}/manifest.json)",
             *[f"- run `{k}`: [{rel(v)}/metrics.json]({rel(v)}/metrics.json)" for k, v in runs.items()],
             f"- exported light net: [{rel(version_dir)}]({rel(version_dir)})",
             f"- eval report: [{rel(ev)}/report.md]({rel(ev)}/report.md)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "demo.json").write_text(json.dumps({"stages": result.stages, "latency_ms": result.latency_ms,
                                               "exported": result.exported,
                                               "served_calibration": served_calibration(result.eval_metrics),
                                               "eval": result.eval_metrics.get("models", {})}, indent=2,
                                              default=str))
    return path


__all__ = ["DemoResult", "run_demo"]
