"""Write an eval's results: metrics.json (the machine-readable record `compare` reads; the pipeline writes it,
pipeline.evaluate.eval_results), report.md for people, and PNG plots (ROC, calibration, per-user AUC histogram)
rendered headless with matplotlib's Agg backend. Every file goes through Beam's FileSystems (pipeline.beam_files),
so the eval folder may be local, gs:// or hdfs://."""

from __future__ import annotations

import io
import json
import os

from pipeline import beam_files

EVAL_KIND = "rocketctr-eval"  # metrics.json "kind": what `compare` accepts
EVAL_VERSION = 1
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PLOTS = {"roc": "roc.png", "calibration": "calibration.png", "user_auc": "user_auc_hist.png"}
COLUMNS = (("impressions", "{:d}"), ("auc", "{:.4f}"), ("gauc", "{:.4f}"), ("logloss", "{:.4f}"),
           ("calibration", "{:.3f}"), ("ctr_observed", "{:.4f}"), ("ctr_predicted", "{:.4f}"),
           ("users_used", "{:d}"), ("users_total", "{:d}"))


def fmt(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def markdown_table(rows: list[tuple[str, dict]], first: str = "model") -> str:
    head = f"| {first} | " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|" + "---|" * (len(COLUMNS) + 1)
    lines = [f"| {name} | " + " | ".join(fmt(m.get(c), s) for c, s in COLUMNS) + " |" for name, m in rows]
    return "\n".join([head, sep, *lines])


def summary_table(doc: dict) -> str:
    return markdown_table([(k, m["metrics"]) for k, m in doc["models"].items()])


def calibration_table(doc: dict) -> str | None:
    """Calibration and logloss before (the model's raw logit, `logit_uncalibrated`) and after (the served,
    calibrated score) per model that exports both; None when no model does."""
    rows = [(k, m["metrics"]) for k, m in doc["models"].items()
            if m["metrics"].get("calibration_uncalibrated") is not None]
    if not rows:
        return None
    lines = ["| model | calibration before | calibration after | logloss before | logloss after |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {fmt(m.get('calibration_uncalibrated'), '{:.3f}')} | {fmt(m.get('calibration'), '{:.3f}')} "
              f"| {fmt(m.get('logloss_uncalibrated'), '{:.4f}')} | {fmt(m.get('logloss'), '{:.4f}')} |"
              for k, m in rows]
    return "\n".join(lines)


def write_metrics(doc: dict, out_dir: str | os.PathLike) -> str:
    """Publish out_dir/metrics.json (whole or not at all); returns its path."""
    path = beam_files.join(out_dir, METRICS_FILE)
    beam_files.publish_text(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def read_metrics(out_dir: str | os.PathLike) -> dict:
    return beam_files.read_json(beam_files.join(out_dir, METRICS_FILE))


def write_report(doc: dict, out_dir: str | os.PathLike) -> str:
    """Write the plots and report.md next to metrics.json; returns the report.md path."""
    plot_all(doc, beam_files.as_str(out_dir))
    path = beam_files.join(out_dir, REPORT_FILE)
    beam_files.publish_text(path, report_markdown(doc))
    return path


def report_markdown(doc: dict) -> str:
    s = doc.get("settings", {})
    lines = [f"# Offline evaluation: {doc.get('spec', '?')} / {doc.get('split', '?')}", "",
             f"Data: `{doc.get('data_dir')}` ({doc.get('shards')} shards), spec hash {doc.get('spec_hash')}, "
             f"code {doc.get('code_version')}, {doc.get('created')}, runner {s.get('runner')}.", "",
             summary_table(doc), "",
             "AUC: Mann-Whitney (ties 1/2) over logit buckets of width "
             f"{s.get('logit_step')} (0 = exact); the bucketing moves it by at most `auc_max_bucket_error` "
             "(metrics.json). GAUC: impression-weighted mean of per-user AUC over users with both clicks and "
             "non-clicks (users_used of users_total). Calibration: mean predicted CTR / observed CTR.", ""]
    cal = calibration_table(doc)
    if cal:
        lines += ["## Calibration before / after", "", cal, "",
                  "Before: sigmoid of the model's raw logit (`logit_uncalibrated`); after: the served CTR (Platt "
                  "scaling fitted on the validation slice of the train split, plus the negative down-sampling "
                  "correction log(r) when the training data was sampled). The map is monotone, so AUC and GAUC "
                  "are the same for both.", ""]
    if doc.get("warnings"):
        lines += ["## Warnings", "", *[f"- {w}" for w in doc["warnings"]], ""]
    gate = doc.get("gate")
    if gate:
        lines += ["## Validation gate", "", f"**{'PASSED' if gate['passed'] else 'REFUSED'}**: {gate['reason']}", ""]
    rejected = doc.get("rejected") or {}
    if rejected:
        lines += ["## Rejected records", ""]
        lines += [f"- {model}: {reason}: {n}" for model, reasons in rejected.items() for reason, n in reasons.items()]
        lines.append("")
    for label, m in doc["models"].items():
        if m["slices"]:
            lines += [f"## Slices by `{doc.get('slice')}`: {label}", "",
                      markdown_table(list(m["slices"].items()), first="slice"), ""]
    lines += ["## Plots", "", f"![ROC]({PLOTS['roc']})", "", f"![Calibration]({PLOTS['calibration']})", "",
              f"![Per-user AUC]({PLOTS['user_auc']})", ""]
    for label, m in doc["models"].items():
        rel = m["curves"]["reliability"]
        if rel:
            lines += [f"### Reliability: {label}", "", "| bin | weight | predicted | observed | predicted range |",
                      "|---|---|---|---|---|"]
            lines += [f"| {i} | {r['weight']:.1f} | {r['predicted']:.5f} | {r['observed']:.5f} | "
                      f"{r['predicted_min']:.5f} .. {r['predicted_max']:.5f} |" for i, r in enumerate(rel)]
            lines.append("")
    return "\n".join(lines)


def plot_all(doc: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = doc["models"]
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, m in models.items():
        roc = m["curves"]["roc"]
        if roc:
            auc = fmt(m["metrics"]["auc"], "{:.4f}")
            ax.plot([p[0] for p in roc], [p[1] for p in roc], label=f"{label} (AUC {auc})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    _finish(ax, "false positive rate", "true positive rate", "ROC", beam_files.join(out, PLOTS["roc"]), plt, fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    top = 0.0
    for label, m in models.items():
        rel = m["curves"]["reliability"]
        if rel:
            xs, ys = [r["predicted"] for r in rel], [r["observed"] for r in rel]
            top = max(top, *xs, *ys)
            ax.plot(xs, ys, marker="o", label=label)
    ax.plot([0, top or 1], [0, top or 1], color="grey", linestyle=":")
    _finish(ax, "mean predicted CTR (equal-weight bins)", "observed CTR", "Calibration",
            beam_files.join(out, PLOTS["calibration"]), plt, fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, m in models.items():
        hist = m["curves"]["user_auc_hist"]
        if hist:
            edges = [i / len(hist) for i in range(len(hist) + 1)]
            ax.stairs(hist, edges, label=f"{label} (GAUC {fmt(m['metrics']['gauc'], '{:.4f}')})")
    _finish(ax, "per-user AUC", "users", "Per-user AUC (users with both classes)",
            beam_files.join(out, PLOTS["user_auc"]), plt, fig)


def _finish(ax, xlabel: str, ylabel: str, title: str, path: str, plt, fig) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    beam_files.publish_bytes(path, png.getvalue())
