"""The eval job's final result, assembled and written inside the pipeline: no local scratch folder, so the job
runs on any runner and the driver reads back only OUT/metrics.json, wherever OUT is (local, gs://, hdfs://).

The per-(model, cut) metric rows and the rejection counts are small (one row per model and slice value), so
they are gathered into one list by a global combine, and one DoFn turns them into the metrics.json document
(`assemble`, plus the validation `gate` when a baseline is scored) and publishes it through Beam's FileSystems
(pipeline.beam_files.publish_text: whole or not at all). A retried bundle rewrites the same document.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.evaluate import eval_report
from pipeline.evaluate.eval_transforms import TotalsFn
from pipeline.evaluate.model_source import ModelRef

CUT, REJECTED = "cut", "rejected"


def cut_metrics(row: dict | None) -> tuple[dict, dict]:
    """(scalar metrics, curves) of one (model, cut) row from the job; an absent row means no impressions."""
    row = row or {}
    totals = row.get("totals") or TotalsFn().extract_output(TotalsFn().create_accumulator())
    sweep = row.get("sweep") or {}
    gauc = row.get("gauc") or {}
    scalars = {**totals, "auc": sweep.get("auc"), "auc_max_bucket_error": sweep.get("auc_max_bucket_error"),
               "score_buckets": sweep.get("score_buckets", 0), "gauc": gauc.get("gauc"),
               "users_total": gauc.get("users_total", 0), "users_used": gauc.get("users_used", 0),
               "impressions_used": gauc.get("impressions_used", 0), "weight_used": gauc.get("weight_used", 0.0)}
    curves = {"roc": sweep.get("roc", []), "reliability": sweep.get("reliability", []),
              "user_auc_hist": gauc.get("user_auc_hist", [])}
    return scalars, curves


def assemble(refs: Sequence[ModelRef], cuts: Sequence[dict], rejected: Sequence[dict]) -> dict:
    """The metrics.json document: per model its overall metrics, curves and slices, plus rejections."""
    by_key = {(c["model"], c["cut"]): c for c in cuts}
    models: dict[str, Any] = {}
    for ref in refs:
        scalars, curves = cut_metrics(by_key.get((ref.label, "all")))
        slices = {c["cut"]: cut_metrics(c)[0] for c in cuts if c["model"] == ref.label and c["cut"] != "all"}
        models[ref.label] = {**ref.to_json(), "metrics": scalars, "curves": curves,
                             "slices": dict(sorted(slices.items()))}
    rej: dict[str, dict[str, int]] = {}
    for r in sorted(rejected, key=lambda r: (r["model"], -r["count"], r["reason"])):
        rej.setdefault(r["model"], {})[r["reason"]] = r["count"]
    return {"kind": eval_report.EVAL_KIND, "version": eval_report.EVAL_VERSION, "models": models, "rejected": rej}


def served(doc: dict, role: str) -> str | None:
    """The model of a role the gate judges: its light tower (the served one) when it has towers."""
    labels = [k for k, m in doc["models"].items() if m["role"] == role]
    light = [k for k in labels if doc["models"][k]["tower"] in (None, "light")]
    return (light or labels or [None])[0]


def gate(doc: dict, min_gauc_lift: float | None) -> dict:
    """Candidate GAUC minus baseline GAUC against the required lift (no requirement: report only)."""
    cand, base = served(doc, "candidate"), served(doc, "baseline")
    g_c = doc["models"][cand]["metrics"]["gauc"] if cand else None
    g_b = doc["models"][base]["metrics"]["gauc"] if base else None
    lift = g_c - g_b if g_c is not None and g_b is not None else None
    if min_gauc_lift is None:
        passed, reason = True, "no --min-gauc-lift given: baseline scored for comparison only"
    elif lift is None:
        passed, reason = False, (f"GAUC undefined (candidate {g_c}, baseline {g_b}): no user has both clicks and "
                                 f"non-clicks, or the spec has no group_key")
    else:
        passed = lift >= min_gauc_lift
        reason = (f"GAUC lift {lift:+.6f} (candidate {cand} {g_c:.6f} - baseline {base} {g_b:.6f}) "
                  f"{'>=' if passed else '<'} required {min_gauc_lift:+.6f}")
    return {"candidate": cand, "baseline": base, "candidate_gauc": g_c, "baseline_gauc": g_b, "lift": lift,
            "min_gauc_lift": min_gauc_lift, "passed": passed, "reason": reason}


class WriteMetricsDoc(beam.DoFn):
    """[(CUT | REJECTED, row) ...] (every result of the job, one element) -> the metrics.json document, published
    under `out_dir` and also emitted (for tests and downstream steps).

    `header` holds what the driver knew before the run (data, spec, settings, warnings: key order kept);
    "created" is stamped when the results exist. `gated`: a baseline was scored, so the doc gets a "gate"."""

    def __init__(self, refs: Sequence[ModelRef], out_dir: str, header: Mapping[str, Any], gated: bool,
                 min_gauc_lift: float | None):
        self._refs, self._out, self._header = tuple(refs), out_dir, dict(header)
        self._gated, self._lift = gated, min_gauc_lift
        self._written = Metrics.counter("rocketctr_eval", "metrics_docs_written")
        self._cuts = Metrics.counter("rocketctr_eval", "metric_cuts")

    def process(self, results: list[tuple[str, dict]]):
        cuts = [row for kind, row in results if kind == CUT]
        rejected = [row for kind, row in results if kind == REJECTED]
        doc = assemble(self._refs, cuts, rejected)
        doc.update({**self._header, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        if self._gated:
            doc["gate"] = gate(doc, self._lift)
        eval_report.write_metrics(doc, self._out)
        self._cuts.inc(len(cuts))
        self._written.inc()
        yield doc


class WriteEvalMetrics(beam.PTransform):
    """(cut rows, rejection count rows) -> the metrics.json document, written to OUT/metrics.json."""

    def __init__(self, refs: Sequence[ModelRef], out_dir: str, header: Mapping[str, Any], gated: bool = False,
                 min_gauc_lift: float | None = None):
        super().__init__()
        self._fn = WriteMetricsDoc(refs, out_dir, header, gated, min_gauc_lift)

    def expand(self, pcolls):
        cuts, rejected = pcolls
        return ((cuts | "TagCuts" >> beam.Map(lambda row: (CUT, row)),
                 rejected | "TagRejected" >> beam.Map(lambda row: (REJECTED, row)))
                | "FlattenResults" >> beam.Flatten()
                | "Gather" >> beam.combiners.ToList()
                | "Write" >> beam.ParDo(self._fn))
