"""The offline eval Beam job: score a split with one or more SavedModels (RunInference) and compute AUC,
GAUC, logloss and calibration per model and slice in the same pipeline, then write EVAL_DIR/metrics.json,
report.md and plots. With a baseline and a minimum GAUC lift it doubles as the validation gate that stops a
scheduled job from pushing a worse model (both models are scored on the same records in the same job).

The pipeline consumes SavedModels only (signature serving_default(examples) -> ctr, logit), never the
models package. It runs on any Beam runner; locally the default is the in-process FnApiRunner. Nothing goes
through a local scratch folder: the partial results are combined inside the pipeline, which also writes
OUT/metrics.json (pipeline.evaluate.eval_results); the driver then reads that one file back and adds report.md
and the plots, all through Beam's FileSystems, so OUT may be gs:// or hdfs:// and the workers remote. Model
paths are read with TensorFlow's file systems (common.fs), which the workers' tf.saved_model.load uses too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from common import fs
from feature_specs import SpecError, artifacts, load_spec, spec_hash
from feature_specs.runtime import code_version
from feature_specs.schema import FeatureSpec
from pipeline import beam_files, beam_options
from pipeline.beam_progress import ReportProgress, print_counters
from pipeline.evaluate import eval_report
from pipeline.evaluate.eval_results import WriteEvalMetrics
from pipeline.evaluate.eval_transforms import DEFAULT_LOGIT_STEP, ComputeMetrics, ParseMeta, ToScored
from pipeline.evaluate.model_source import ModelRef, ModelResolveError, SavedModelHandler, resolve_model, unique_labels

GATE_FAILED = 1
BAD_INPUT = 2


def evaluate(model: str | Path, data_dir: str | Path, out_dir: str | Path, *, split: str = "eval",
             slice_feature: str | None = None, baseline: str | Path | None = None,
             min_gauc_lift: float | None = None, name: str | None = None, batch_size: int = 1024,
             logit_step: float = DEFAULT_LOGIT_STEP, calibration_bins: int = 10,
             beam_args: list[str] | None = None, also: list[str | Path] | None = None) -> str | Path:
    """Run the eval job and write EVAL_DIR/{metrics.json, report.md, *.png}; returns EVAL_DIR (a Path when
    local, the URL string otherwise)."""
    spec = load_spec(artifacts.spec_copy_path(data_dir))
    shards = artifacts.list_shards(data_dir, split)
    check_slice(spec, slice_feature)
    if min_gauc_lift is not None and baseline is None:
        raise ValueError("--min-gauc-lift needs --baseline (the model the candidate must beat)")
    if batch_size < 1 or calibration_bins < 1 or logit_step < 0:
        raise ValueError(f"batch_size and calibration_bins must be >= 1 and logit_step >= 0, got "
                         f"{batch_size}, {calibration_bins}, {logit_step}")
    refs = resolve_model(model, "candidate", name)
    if baseline is not None:
        refs += resolve_model(baseline, "baseline")
    for other in also or ():  # more models scored on the same rows in the same pass (not part of the gate)
        refs += resolve_model(other, "reference")
    refs = unique_labels(refs)
    out = beam_files.as_str(out_dir)
    options = pipeline_options(beam_args)
    header = {"warnings": spec_warnings(spec, refs), "data_dir": beam_files.absolute(data_dir), "split": split,
              "shards": len(shards), "spec": spec.name, "spec_hash": spec_hash(spec), "slice": slice_feature,
              "code_version": code_version(), "created": None,  # stamped when the results are written
              "settings": {"logit_step": logit_step, "calibration_bins": calibration_bins, "batch_size": batch_size,
                           "runner": str(options.view_as(StandardOptions).runner)}}
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, spec, artifacts.shard_pattern(data_dir, split), refs, slice_feature, batch_size,
                       logit_step, calibration_bins,
                       WriteEvalMetrics(refs, out, header, gated=baseline is not None, min_gauc_lift=min_gauc_lift))
    print_counters(p.result, "eval")
    eval_report.write_report(eval_report.read_metrics(out), out)
    return beam_files.native(out)


def check_slice(spec: FeatureSpec, slice_feature: str | None) -> None:
    if slice_feature is None:
        return
    cats = [f.name for f in spec.by_kind("categorical")]
    if slice_feature not in cats:
        raise SpecError(f"--slice {slice_feature!r}: expected a categorical feature of spec {spec.name!r} "
                        f"({', '.join(cats)})")


def spec_warnings(spec: FeatureSpec, refs: list[ModelRef]) -> list[str]:
    """A run trained on a different spec than the data's is suspicious (recorded, not fatal: the model parses
    only the features it knows, so additive spec changes still score correctly)."""
    out = []
    for r in refs:
        p = fs.join(r.run_dir, "spec.yaml") if r.run_dir else None
        if p is not None and fs.isfile(p) and spec_hash(load_spec(p)) != spec_hash(spec):
            out.append(f"{r.label}: trained with {p} (hash {spec_hash(load_spec(p))}), the data has spec "
                       f"{spec.name!r} (hash {spec_hash(spec)})")
    return out


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    """No --runner: the local FnApiRunner in one process (one model load per model, small per-run data)."""
    return beam_options.pipeline_options(beam_args or [], workers=1)


def build_pipeline(p: beam.Pipeline, spec: FeatureSpec, pattern: str, refs: list[ModelRef],
                   slice_feature: str | None, batch_size: int, logit_step: float, calibration_bins: int,
                   write: WriteEvalMetrics) -> beam.PCollection:
    """Read -> parse label/weight/user/slice -> RunInference per model -> metrics per (model, cut) and
    rejection counts -> `write` (the metrics.json document, written under the output path)."""
    parsed = (p
              | "Read" >> beam.io.ReadFromTFRecord(pattern, compression_type=CompressionTypes.GZIP)
              | "Progress" >> beam.ParDo(ReportProgress("eval", "records"))  # a line per worker per interval
              | "ParseMeta" >> beam.ParDo(ParseMeta(spec.label.name, spec.group_key, spec.weight, slice_feature))
              .with_outputs(ParseMeta.REJECTED, main="ok"))
    scored, rejected = [], [parsed[ParseMeta.REJECTED]]
    for i, ref in enumerate(refs):
        handler = KeyedModelHandler(SavedModelHandler(ref.path, max_batch_size=batch_size))
        s = (parsed.ok
             | f"Score{i}" >> RunInference(handler)
             | f"ToScored{i}" >> beam.ParDo(ToScored(ref.label, slice_feature)).with_outputs(ToScored.REJECTED,
                                                                                         main="ok"))
        scored.append(s.ok)
        rejected.append(s[ToScored.REJECTED])
    cuts = (tuple(scored)
            | "FlattenScored" >> beam.Flatten()
            | "Metrics" >> ComputeMetrics(logit_step, calibration_bins))
    counts = (tuple(rejected)
              | "FlattenRejected" >> beam.Flatten()
              | "CountRejected" >> beam.combiners.Count.PerElement()
              | "RejectedRows" >> beam.MapTuple(lambda k, n: {"model": k[0], "reason": k[1], "count": n}))
    return (cuts, counts) | "WriteMetrics" >> write


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="SavedModel version folder, folder of versions, or training "
                   "run dir (then towers/light and towers/booster are both scored)")
    p.add_argument("--data", required=True, help="preprocessing output folder (shards + spec.yaml)")
    p.add_argument("--split", default="eval", choices=artifacts.SPLITS)
    p.add_argument("--out", help="EVAL_DIR for metrics.json, report.md and plots (default: RUN_DIR/eval for a run dir)")
    p.add_argument("--slice", dest="slice_feature", help="also report metrics per value of this categorical feature")
    p.add_argument("--baseline", help="another MODEL scored in the same job (the gate's reference)")
    p.add_argument("--also", action="append", default=[], metavar="MODEL",
                   help="more MODELs scored in the same job for comparison (repeatable; not part of the gate)")
    p.add_argument("--min-gauc-lift", type=float, help="fail (exit 1) when candidate GAUC - baseline GAUC < this")
    p.add_argument("--name", help="label of the candidate (default: from the path / run config)")
    p.add_argument("--batch-size", type=int, default=1024, help="RunInference max batch size")
    p.add_argument("--logit-step", type=float, default=DEFAULT_LOGIT_STEP,
                   help="AUC score-bucket width in logit units (0 = exact float32 keys); see metrics.json "
                        "auc_max_bucket_error")
    p.add_argument("--calibration-bins", type=int, default=10, help="equal-weight bins of the reliability table")
    p.add_argument("--runner", help="Beam runner (default: the local FnApiRunner; DaskRunner, DataflowRunner, ...; "
                   "other Beam options go after `--`)")


def default_out(model: str | os.PathLike) -> str:
    if fs.isfile(fs.join(model, "config.json")):
        return fs.join(model, "eval")
    raise ValueError("--out is required unless --model is a training run dir (then RUN_DIR/eval is used)")


def run_from_args(args: argparse.Namespace, beam_args: list[str]) -> int:
    """Run with parsed arguments; print a summary and the gate verdict. 0 ok, 1 gate refused, 2 bad input."""
    try:
        out = args.out or default_out(args.model)
        evaluate(args.model, args.data, out, split=args.split, slice_feature=args.slice_feature,
                 baseline=args.baseline, min_gauc_lift=args.min_gauc_lift, name=args.name,
                 batch_size=args.batch_size, logit_step=args.logit_step, calibration_bins=args.calibration_bins,
                 beam_args=[*([f"--runner={args.runner}"] if args.runner else []), *beam_args], also=args.also)
    except (ModelResolveError, artifacts.ArtifactError, SpecError, ValueError) as e:
        print(f"rocketctr eval: {e}", file=sys.stderr)
        return BAD_INPUT
    doc = eval_report.read_metrics(out)
    print(eval_report.summary_table(doc))
    cal = eval_report.calibration_table(doc)
    if cal:
        print("\ncalibration before (raw logit) / after (served score):")
        print(cal)
    for w in doc.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {beam_files.join(out, eval_report.METRICS_FILE)} and "
          f"{beam_files.join(out, eval_report.REPORT_FILE)}")
    g = doc.get("gate")
    if g is not None:
        print(f"gate {'PASSED' if g['passed'] else 'REFUSED'}: {g['reason']}",
              file=sys.stdout if g["passed"] else sys.stderr)
        if not g["passed"]:
            return GATE_FAILED
    return 0


def run(argv: list[str] | None = None) -> int:
    """`python -m pipeline.evaluate.eval_job ...`: unknown options are handed to Beam (e.g. --direct_num_workers=2)."""
    parser = argparse.ArgumentParser(prog="pipeline.evaluate.eval_job", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    return run_from_args(args, beam_args)


if __name__ == "__main__":
    sys.exit(run())
