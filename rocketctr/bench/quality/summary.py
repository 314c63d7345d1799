"""From raw per-(variant, seed) results to the paper's comparison: the booster-minus-light gap first, then per
variant the light net's metrics, paired differences to light-alone, the share of the gap recovered, and cost.

Definitions (all recomputable by hand from the JSON's `runs`):
- mean +- std: over seeds, sample std (ddof=1), pipeline.evaluate.compare_runs.mean_std;
- paired difference a - b: over the seeds both have, with t = mean / (std / sqrt(n)) (pipeline.evaluate.compare_runs.paired_diff);
- gap: booster-alone's booster minus light-alone's light net, paired by seed;
- gap recovered: mean paired (light_variant - light_alone) / mean paired gap (a ratio of means: per-seed
  ratios explode when one seed's gap is near zero);
- cost: the run's train_seconds (the training loop, from RUN_DIR/metrics.json); two-stage KD adds the
  train_seconds of its teacher (the same-seed run of its teacher variant): the full two-stage cost;
  time ratio = mean cost / mean light-alone train_seconds.
"""

from __future__ import annotations

from pipeline.evaluate.compare_runs import PairedDiff, mean_std, paired_diff
from rocketctr.bench.quality.variants import BASELINE, LR_FLOOR, REFERENCE, VARIANTS

METRICS = ("auc", "gauc", "logloss")
# predicted / observed clicks of the served score, and of the raw logit before the exported Platt layer
CALIBRATION_KEYS = ("calibration", "calibration_uncalibrated", "logloss", "logloss_uncalibrated")


def _by_seed(runs: list[dict], variant: str, tower: str, key: str) -> dict[int, float | None]:
    return {r["seed"]: (r["metrics"].get(tower) or {}).get(key) for r in runs if r["variant"] == variant}


def _values(d: dict) -> list[float]:
    return [v for v in d.values() if v is not None]


def _diff_json(d: PairedDiff) -> dict:
    return {"n": d.n, "mean": d.mean, "std": d.std, "t": d.t}


def cost_by_seed(runs: list[dict], variant: str) -> dict[int, float]:
    """Training seconds per seed; a kd student adds its teacher's (same-seed teacher run) training seconds."""
    own = {r["seed"]: r["train_seconds"] for r in runs if r["variant"] == variant}
    if VARIANTS[variant].needs_teacher:
        teacher = {r["seed"]: r["train_seconds"] for r in runs if r["variant"] == VARIANTS[variant].teacher}
        return {s: t + teacher[s] for s, t in own.items() if s in teacher}
    return own


def served_tower(variant: str) -> str:
    """The tower a variant is judged by: the light net, except booster-alone which has none."""
    return "booster" if VARIANTS[variant].mode == "booster" else "light"


def booster_by_seed(runs: list[dict], variant: str, key: str) -> dict[int, float | None]:
    """The variant's own booster metric; for kd its teacher's (it has no booster of its own)."""
    source = VARIANTS[variant].teacher if VARIANTS[variant].needs_teacher else variant
    return _by_seed(runs, source, "booster", key)


def summarize(runs: list[dict]) -> dict:
    """{"gap": {metric: ...}, "variants": [row...]} from the raw runs (each: variant, seed, metrics{tower:{}},
    train_seconds)."""
    gap = {}
    for m in METRICS:
        light, booster = _by_seed(runs, BASELINE, "light", m), _by_seed(runs, REFERENCE, "booster", m)
        lm, ls = mean_std(_values(light))
        bm, bs = mean_std(_values(booster))
        gap[m] = {"light_alone": {"mean": lm, "std": ls}, "booster_alone": {"mean": bm, "std": bs},
                  "gap": _diff_json(paired_diff(booster, light))}
    base_cost = mean_std(list(cost_by_seed(runs, BASELINE).values()))[0]
    rows = []
    for name in [v for v in VARIANTS if any(r["variant"] == v for r in runs)]:
        tower = served_tower(name)
        row: dict = {"variant": name, "what": VARIANTS[name].what, "tower": tower,
                     "seeds": sorted(r["seed"] for r in runs if r["variant"] == name), "metrics": {}}
        for m in METRICS:
            vals = _by_seed(runs, name, tower, m)
            mean, std = mean_std(_values(vals))
            d = paired_diff(vals, _by_seed(runs, BASELINE, "light", m))
            g = gap[m]["gap"]["mean"]
            # a share of the gap only exists when the booster is better (higher AUC/GAUC, lower logloss)
            booster_better = g is not None and (g < 0.0 if m == "logloss" else g > 0.0)
            recovered = d.mean / g if d.mean is not None and booster_better else None
            row["metrics"][m] = {"mean": mean, "std": std, "diff_vs_light_alone": _diff_json(d),
                                 "gap_recovered": recovered}
        row["calibration"] = {k: dict(zip(("mean", "std"), mean_std(_values(_by_seed(runs, name, tower, k)))))
                              for k in CALIBRATION_KEYS}
        bauc = _values(booster_by_seed(runs, name, "auc"))
        row["booster_auc"] = dict(zip(("mean", "std"), mean_std(bauc)))
        cost = list(cost_by_seed(runs, name).values())
        row["train_seconds"] = dict(zip(("mean", "std"), mean_std(cost)))
        row["time_ratio"] = (row["train_seconds"]["mean"] / base_cost
                             if row["train_seconds"]["mean"] is not None and base_cost else None)
        rows.append(row)
    return {"gap": gap, "variants": rows, "validation_choice": validation_choice(runs)}


def serving_candidates(runs: list[dict]) -> list[str]:
    """The light nets a validation-based choice picks from (as `rocketctr demo` does): every variant that serves a
    light net, light-alone included, but not the LR floor (a reference)."""
    return [v for v in VARIANTS if v != LR_FLOOR and served_tower(v) == "light"
            and any(r["variant"] == v for r in runs)]


def validation_choice(runs: list[dict]) -> dict:
    """Per seed, the candidate with the best light-net validation AUC (the train split's slice; ties go to the
    earlier candidate, light-alone first) and its eval AUC paired against light-alone: does choosing on
    validation ever serve a net that loses on eval?"""
    names = serving_candidates(runs)
    by = {(r["variant"], r["seed"]): r for r in runs}
    picks, chosen_auc = {}, {}
    for seed in sorted({r["seed"] for r in runs if r["variant"] == BASELINE}):
        scores = {n: ((by.get((n, seed)) or {}).get("validation") or {}).get("best") for n in names}
        scored = [n for n in names if scores[n] is not None and (by[(n, seed)]["metrics"].get("light") or {})]
        if not scored:
            continue
        pick = max(scored, key=lambda n: scores[n])
        picks[seed] = pick
        chosen_auc[seed] = by[(pick, seed)]["metrics"]["light"].get("auc")
    d = paired_diff(chosen_auc, _by_seed(runs, BASELINE, "light", "auc"))
    return {"candidates": names, "picks": picks, "auc": dict(zip(("mean", "std"), mean_std(_values(chosen_auc)))),
            "diff_vs_light_alone": _diff_json(d)}


# ------------------------------------------------------------------------------------------------ markdown
def _f(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _pm(d: dict, fmt: str = ".4f") -> str:
    if d.get("mean") is None:
        return "-"
    return _f(d["mean"], fmt) + (f" +- {_f(d['std'], fmt)}" if d.get("std") is not None else "")


def _diff(d: dict) -> str:
    if d.get("mean") is None:
        return "-"
    return f"{d['mean']:+.4f}" + (f" (t={d['t']:.2f})" if d.get("t") is not None else f" (n={d['n']})")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def gap_verdict(gap: dict) -> str:
    g = gap["auc"]["gap"]
    if g["mean"] is None:
        return "No gap could be measured (light-alone or booster-alone results are missing)."
    if g["mean"] <= 0:
        return (f"The booster does NOT beat the light net (AUC gap {g['mean']:+.4f}): there is nothing to "
                f"transfer, so no variant below can show Rocket Launching working on this data/regime.")
    gg = gap.get("gauc", {}).get("gap", {})
    if gg.get("mean") is not None and gg["mean"] <= 0:
        return (f"AUC gap {g['mean']:+.4f} but GAUC gap {gg['mean']:+.4f}: the two disagree, so the gap is not "
                f"established (likely eval-sample noise); read the gap-recovered column with care.")
    if g["t"] is None or g["t"] < 2.0:
        return (f"AUC gap {g['mean']:+.4f} with t={_f(g['t'], '.2f')} (< 2): too small or noisy to tell transfer "
                f"from noise; read the gap-recovered column with care (more seeds or data would help).")
    return f"AUC gap {g['mean']:+.4f} (t={g['t']:.2f}): the booster is clearly better; transfer can be measured."


def markdown(summary: dict, header: list[str]) -> str:
    lines = ["# Rocket Launching quality bench", "", *header, "",
             "## 1. Booster-minus-light gap (booster-alone vs light-alone, paired by seed)", "",
             "| metric | light-alone | booster-alone | gap (booster - light) | t | n |", "|---|---|---|---|---|---|"]
    for m, g in summary["gap"].items():
        d = g["gap"]
        lines.append(f"| {m} | {_pm(g['light_alone'])} | {_pm(g['booster_alone'])} | "
                     f"{'-' if d['mean'] is None else format(d['mean'], '+.4f')} | {_f(d['t'], '.2f')} | {d['n']} |")
    lines += ["", gap_verdict(summary["gap"]), "(logloss: lower is better, so a negative gap means the booster is "
              "better.)", "", "## 2. The served (light) net per variant", "",
              "| variant | seeds | AUC | GAUC | logloss | dAUC vs light-alone | dGAUC | dlogloss | gap recovered "
              "(AUC) | gap recovered (GAUC) | booster AUC | train s | time x light-alone |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["variants"]:
        m = r["metrics"]
        name = r["variant"] + (" (booster net)" if r["tower"] == "booster" else "")
        base = r["variant"] == BASELINE
        diffs = ["(baseline)"] * 3 if base else [_diff(m[k]["diff_vs_light_alone"]) for k in METRICS]
        recovered = ["-", "-"] if base else [_pct(m["auc"]["gap_recovered"]), _pct(m["gauc"]["gap_recovered"])]
        lines.append(" | ".join([
            f"| {name}", ",".join(map(str, r["seeds"])), *[_pm(m[k]) for k in METRICS], *diffs, *recovered,
            _pm(r["booster_auc"]),
            _pm(r["train_seconds"], ".1f"), _f(r["time_ratio"], ".2f")]) + " |")
    lines += ["", "## 3. Calibration of the served score (eval split; 1 = as many clicks predicted as happened)", "",
              "| variant | calibration before (raw logit) | calibration after (exported, Platt) | "
              "logloss before | logloss after |", "|---|---|---|---|---|"]
    for r in summary["variants"]:
        c = r.get("calibration") or {}
        name = r["variant"] + (" (booster net)" if r["tower"] == "booster" else "")
        lines.append(f"| {name} | " + " | ".join(_pm(c.get(k) or {}) for k in (
            "calibration_uncalibrated", "calibration", "logloss_uncalibrated", "logloss")) + " |")
    vc = summary.get("validation_choice") or {}
    if vc.get("picks"):
        picks = ", ".join(f"seed {s}: {n}" for s, n in sorted(vc["picks"].items()))
        lines += ["", "## 4. The net a validation-based choice serves (as `rocketctr demo` chooses)", "",
                  f"Candidates: {', '.join(vc['candidates'])}; per seed the best light-net AUC on the validation "
                  f"slice of the train split wins ({picks}).", "",
                  "| chosen net: eval AUC | dAUC vs light-alone |", "|---|---|",
                  f"| {_pm(vc['auc'])} | {_diff(vc['diff_vs_light_alone'])} |"]
    lines += ["", "Variants:", *[f"- {r['variant']}: {r['what']}" for r in summary["variants"]], "",
              "Definitions: mean +- sample std over seeds; d = paired difference to light-alone by seed with "
              "t = mean / (std / sqrt(n)); gap recovered = mean d / mean gap (section 1); booster AUC = the "
              "variant's own co-trained booster (kd: its teacher); train s = the training loop's seconds "
              "(kd: teacher + student, the full two-stage cost). All metrics are on the eval split, scored once "
              "after training; nothing is selected on it (early stopping, if configured, uses the validation "
              "slice of the train split)."]
    return "\n".join(lines) + "\n"
