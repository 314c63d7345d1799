"""Compare eval results of several runs the way the Rocket Launching paper reports them: per setup, the mean
+- std over seeds of AUC, GAUC and logloss, and the paired difference to the light-alone baseline with a
paired t statistic (runs paired by seed, so seed-to-seed noise common to both setups cancels).

Grouping: every scored model in an eval's metrics.json carries `group` (for a training run dir,
"<config name>/<tower>", e.g. "rocket/light" and "rocket/booster") and `seed` (train.seed). Runs of one
config that differ only in seed share a group and are its repeats. The same model scored in several evals
(e.g. as a gate baseline) is counted once. All evals must be on the same data and split.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import beam_files
from pipeline.evaluate.eval_report import EVAL_KIND, METRICS_FILE

METRICS = ("auc", "gauc", "logloss")


class CompareError(ValueError):
    """Inputs that cannot be compared (not an eval, different data, a seed evaluated twice, unknown baseline)."""


@dataclass(frozen=True)
class Run:
    group: str
    seed: int | None
    mode: str | None
    tower: str | None
    model_path: str
    source: str  # the metrics.json it came from
    metrics: dict[str, float | None]


@dataclass(frozen=True)
class PairedDiff:
    n: int
    mean: float | None
    std: float | None
    t: float | None  # mean / (std / sqrt(n)); None with fewer than 2 pairs or zero spread


@dataclass
class Row:
    group: str
    mode: str | None
    seeds: list[int | None]
    mean: dict[str, float | None]
    std: dict[str, float | None]
    diff: dict[str, PairedDiff] = field(default_factory=dict)


@dataclass
class Comparison:
    rows: list[Row]
    baseline: str | None
    data: str

    def markdown(self) -> str:
        return comparison_markdown(self)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None for fewer than 2 values)."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def paired_diff(a: dict, b: dict) -> PairedDiff:
    """Paired difference a - b over the keys (seeds) both have a value for, with its t statistic."""
    d = [a[k] - b[k] for k in sorted(set(a) & set(b), key=str) if a[k] is not None and b[k] is not None]
    m, s = mean_std(d)
    t = m / (s / math.sqrt(len(d))) if m is not None and s not in (None, 0.0) else None
    return PairedDiff(n=len(d), mean=m, std=s, t=t)


def load_runs(path: str | Path) -> tuple[str, list[Run]]:
    """((data_dir, split) key, runs) from an eval dir, its metrics.json, or a run dir with eval/metrics.json."""
    p = beam_files.as_str(path)  # local or an object store (eval outputs may live in gs://)
    is_file = Path(p).is_file() if beam_files.is_local(p) else p.endswith(".json")
    candidates = [p] if is_file else [beam_files.join(p, METRICS_FILE),
                                                  beam_files.join(p, "eval", METRICS_FILE)]
    f = next((c for c in candidates if beam_files.exists(c)), None)
    if f is None:
        raise CompareError(f"{path}: no eval results ({' or '.join(candidates)}); run `rocketctr eval` "
                           f"on it first")
    doc = json.loads(beam_files.read_text(f))
    if doc.get("kind") != EVAL_KIND:
        raise CompareError(f"{f}: not a rocketctr eval metrics.json (kind {doc.get('kind')!r})")
    runs = [Run(group=m["group"], seed=m.get("seed"), mode=m.get("mode"), tower=m.get("tower"),
                model_path=m["path"], source=str(f), metrics={k: m["metrics"].get(k) for k in METRICS})
            for m in doc["models"].values()]
    return f"{doc.get('data_dir')} [{doc.get('split')}]", runs


def collect(paths: Iterable[str | Path]) -> tuple[str, list[Run]]:
    """All runs of all inputs, each model once; fails on mixed data or a (group, seed) scored twice."""
    data, runs, seen_models, seen_seeds = None, [], set(), {}
    for path in paths:
        key, found = load_runs(path)
        if data is not None and key != data:
            raise CompareError(f"{path}: evaluated on {key}, the others on {data}: metrics on different data "
                               f"are not comparable")
        data = key
        for r in found:
            if r.model_path in seen_models:
                continue
            seen_models.add(r.model_path)
            if (r.group, r.seed) in seen_seeds:
                raise CompareError(f"group {r.group!r} seed {r.seed}: two different models "
                                   f"({seen_seeds[r.group, r.seed]} and {r.model_path}); evaluate one of them "
                                   f"with another --name (or train it with another seed)")
            seen_seeds[r.group, r.seed] = r.model_path
            runs.append(r)
    if data is None:
        raise CompareError("nothing to compare: no eval results given")
    return data, runs


def default_baseline(runs: list[Run]) -> str | None:
    """The light-alone setup (train.mode light, light tower) when there is exactly one such group."""
    groups = sorted({r.group for r in runs if r.mode == "light" and r.tower in (None, "light")})
    return groups[0] if len(groups) == 1 else None


def compare(paths: Iterable[str | Path], baseline: str | None = None) -> Comparison:
    """Group runs by setup, summarise over seeds, and pair each setup with the baseline by seed."""
    data, runs = collect(paths)
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    if baseline is not None and baseline not in groups:
        raise CompareError(f"--baseline {baseline!r}: no such group (have: {', '.join(sorted(groups))})")
    baseline = baseline or default_baseline(runs)
    by_seed = {g: {r.seed: r for r in rs if r.seed is not None} for g, rs in groups.items()}
    rows = []
    for g, rs in sorted(groups.items(), key=lambda kv: (kv[0] != baseline, kv[0])):
        row = Row(group=g, mode=rs[0].mode, seeds=sorted((r.seed for r in rs), key=str), mean={}, std={})
        for k in METRICS:
            row.mean[k], row.std[k] = mean_std([r.metrics[k] for r in rs if r.metrics[k] is not None])
            if baseline is not None and g != baseline:
                row.diff[k] = paired_diff({s: r.metrics[k] for s, r in by_seed[g].items()},
                                          {s: r.metrics[k] for s, r in by_seed[baseline].items()})
        rows.append(row)
    return Comparison(rows=rows, baseline=baseline, data=data)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" +- {std:.4f}" if std is not None else "")


def _diff(d: PairedDiff | None) -> str:
    if d is None or d.mean is None:
        return "-"
    return f"{d.mean:+.4f} (t={d.t:.2f}, n={d.n})" if d.t is not None else f"{d.mean:+.4f} (n={d.n})"


def comparison_markdown(c: Comparison) -> str:
    head = ["setup", "mode", "seeds", *[k.upper() if k != "logloss" else "logloss" for k in METRICS]]
    if c.baseline:
        head += [f"d{k.upper() if k != 'logloss' else 'logloss'} vs {c.baseline}" for k in METRICS]
    lines = [f"Data: {c.data}. Mean +- sample std over seeds; paired differences by seed with t = mean / (std / "
             f"sqrt(n)).", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in c.rows:
        cells = [r.group + (" (baseline)" if r.group == c.baseline else ""), r.mode or "-",
                 ",".join("-" if s is None else str(s) for s in r.seeds),
                 *[_pm(r.mean[k], r.std[k]) for k in METRICS]]
        if c.baseline:
            cells += [_diff(r.diff.get(k)) for k in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    if not c.baseline:
        lines += ["", "No baseline: pass --baseline GROUP (or include exactly one light-alone run) for paired "
                      "differences."]
    return "\n".join(lines) + "\n"
