"""Eval-split GAUC / AUC / logloss of a trained tower: the Beam eval job, or the same computation in-process.

A bench of 8 variants x 5 seeds scores ~70 SavedModels; one Beam job per run costs pipeline start-up and
shuffles that dwarf the scoring itself on a 2-core machine. The direct path runs *the eval job's own pieces*
without Beam: ParseMeta (label / weight / user of each Example, rejections counted), SavedModelHandler
(RunInference's model handler, the same serving_default call), ToScored, and the job's combines TotalsFn,
the logit-bucket sums + SweepFn, and per-user AUC + GaucFn, finished by pipeline.evaluate.eval_results.cut_metrics. So
the definitions cannot drift apart; the only difference left is the order in which floating-point sums are
added (Beam merges partial accumulators), i.e. ~1e-15 relative. tests/test_quality_bench.py proves equality
with the Beam job on a trained model, both scoring one example per call.

One caveat is the model, not the metrics: TensorFlow's float32 kernels can round a row's logit differently
(1 ulp) depending on the batch it is computed in, and RunInference forms its batches dynamically. At the
default batch size the two paths therefore agree on AUC / GAUC (ranks) and on logloss to ~1e-9; `--check-beam`
records the largest difference on the bench's own data.

The eval records are read and parsed once (EvalSet) and shared by every tower scored.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam

from feature_specs import artifacts, load_spec
from pipeline.evaluate.eval_transforms import (DEFAULT_LOGIT_STEP, GaucFn, Meta, ParseMeta, SweepFn, ToScored, TotalsFn, bucket_key,
                                user_auc)
from pipeline.evaluate.model_source import SavedModelHandler
from pipeline.evaluate.eval_results import cut_metrics

METRIC_KEYS = ("auc", "gauc", "logloss")
CALIBRATION_BINS = 10


@dataclass
class EvalSet:
    """The parsed records of one split (label / weight / user carried as the eval job's Meta)."""

    data_dir: str
    split: str
    records: list[bytes] = field(default_factory=list)
    metas: list[Meta] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.records)


def load_eval_set(data_dir: str | Path, split: str = "eval") -> EvalSet:
    """Read every shard of `split` (GZIP TFRecords) and parse its meta fields exactly as the eval job does."""
    import tensorflow as tf

    spec = load_spec(artifacts.spec_copy_path(data_dir))
    files = artifacts.list_shards(data_dir, split)
    parse = ParseMeta(spec.label.name, spec.group_key, spec.weight, None)
    parse.setup()
    out = EvalSet(str(data_dir), split)
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096):
        for record in batch.numpy().tolist():
            for o in parse.process(record):
                if isinstance(o, beam.pvalue.TaggedOutput):
                    out.rejected[o.value[1]] += 1
                else:
                    out.metas.append(o[0])
                    out.records.append(o[1])
    return out


def score_direct(saved_model: str | Path, data: EvalSet, batch_size: int = 1024,
                 logit_step: float = DEFAULT_LOGIT_STEP) -> dict:
    """The eval job's scalar metrics (cut "all") of one SavedModel on `data`, computed in-process."""
    handler = SavedModelHandler(str(saved_model), max_batch_size=batch_size)
    model = handler.load_model()
    to_scored = ToScored("model", None)
    totals_fn, tacc = TotalsFn(), TotalsFn().create_accumulator()
    buckets: dict = {}
    users: dict[str, list] = defaultdict(list)
    rejected: Counter = Counter(data.rejected)
    for i in range(0, len(data), batch_size):
        preds = handler.run_inference(data.records[i:i + batch_size], model)
        for meta, pred in zip(data.metas[i:i + batch_size], preds):
            for o in to_scored.process((meta, pred)):
                if isinstance(o, beam.pvalue.TaggedOutput):
                    rejected[o.value[1]] += 1
                    continue
                row = o[1]
                tacc = totals_fn.add_input(tacc, row)
                k = bucket_key(row.logit, logit_step)
                add = (row.weight * row.label, row.weight * (1 - row.label), row.weight * row.ctr)
                prev = buckets.get(k)
                buckets[k] = add if prev is None else tuple(a + b for a, b in zip(prev, add))
                if row.group != "":
                    users[row.group].append((row.logit, row.label, row.weight))
    sweep = SweepFn(logit_step > 0, CALIBRATION_BINS).extract_output([(k, *v) for k, v in buckets.items()])
    gauc_fn = GaucFn()
    gacc = gauc_fn.create_accumulator()
    for user, rows in users.items():
        gacc = gauc_fn.add_input(gacc, user_auc(((None, user), rows))[1])
    scalars, _curves = cut_metrics({"totals": totals_fn.extract_output(tacc), "sweep": sweep,
                                    "gauc": gauc_fn.extract_output(gacc)})
    return {**scalars, "rejected": dict(rejected), "path": str(saved_model), "scored_by": "direct"}


def score_run_direct(run_dir: str | Path, data: EvalSet, batch_size: int = 1024) -> dict[str, dict]:
    """{tower: metrics} for every tower SavedModel the run exported (RUN_DIR/towers/<tower>)."""
    towers = Path(run_dir) / "towers"
    return {t.name: score_direct(t, data, batch_size) for t in sorted(towers.iterdir())
            if (t / "saved_model.pb").is_file()}


def score_run_beam(run_dir: str | Path, data_dir: str | Path, out_dir: str | Path, split: str = "eval",
                   batch_size: int = 1024, beam_args: list[str] | None = None) -> dict[str, dict]:
    """{tower: metrics} from the Beam eval job (pipeline.evaluate.eval_job) on a run dir (both towers in one job)."""
    from pipeline.evaluate.eval_job import evaluate

    ev = evaluate(run_dir, data_dir, out_dir, split=split, batch_size=batch_size, beam_args=beam_args)
    doc = json.loads((Path(ev) / "metrics.json").read_text())
    return {m["tower"]: {**m["metrics"], "rejected": doc.get("rejected", {}).get(label, {}), "path": m["path"],
                         "scored_by": "beam"}
            for label, m in doc["models"].items()}


def max_difference(a: dict[str, dict], b: dict[str, dict], keys=METRIC_KEYS) -> float:
    """Largest |a - b| over towers x metrics present in both (None on one side only counts as infinite)."""
    worst = 0.0
    for tower in set(a) | set(b):
        for k in keys:
            x, y = (a.get(tower) or {}).get(k), (b.get(tower) or {}).get(k)
            if (x is None) != (y is None):
                return float("inf")
            if x is not None:
                worst = max(worst, abs(x - y))
    return worst
