"""The preprocessing job: raw click logs -> validated, analyzed, sharded GZIP TFRecords plus artifacts.

    read (FileSystems) -> parse lines -> join side tables -> validate/convert -> split train/eval
        -> analyze TRAIN only -> encode tf.train.Example -> write shards, vocabularies, stats, manifest

Every line read ends up written or dead-lettered: the job checks rows_in == written + rejected and fails
when more than --max-bad-fraction of the rows were rejected. The same code runs on any Beam runner; with
no --runner it uses the FnApiRunner with 2 worker processes (see docs/RUNNERS.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from feature_specs import runtime
from feature_specs.artifacts import ARTIFACT_VERSION, SHARD_SUFFIX, shard_prefix
from feature_specs.loader import load_spec, resolved_text, spec_hash
from feature_specs.schema import FeatureSpec
from pipeline import beam_files, beam_options
from pipeline.beam_progress import ReportProgress, counter_totals, print_counters
from pipeline.preprocess import manifest
from pipeline.preprocess.analyze import AnalyzeTrain
from pipeline.preprocess.counting import CountKeys, constant_key
from pipeline.preprocess.encode import EncodeExamples
from pipeline.preprocess.log_reader import ReadRawLines, VerifyCompressedInputs, check_headers, expand_inputs, is_compressed, \
    side_table_path
from pipeline.preprocess.join import COGROUP, SIDE_INPUT, JoinSideTable, ReadSideTable, appended_columns
from pipeline.preprocess.record_layout import RecordLayout, record_layout
from pipeline.preprocess.staged_artifacts import WriteStagedArtifacts
from pipeline.preprocess.tfrecord_sink import WriteGzipTFRecords
from pipeline.preprocess.negative_sampling import DROPPED, KEPT_NEGATIVES, SampleNegatives, sampling_rule
from pipeline.preprocess.train_eval_split import EVAL, TRAIN, AssignSplit
from pipeline.preprocess.validate import REJECTED, ParseAndValidateLines, ParseLines, ValidateRows, reason_of

COUNTS = "counts"

SIDE_INPUT_MAX_BYTES = 256 << 20


class PreprocessError(RuntimeError):
    """The job ran but its output must not be used (too many rejects, broken accounting, bad output dir)."""


@dataclass(frozen=True)
class JobPlan:
    """Everything the pipeline graph is built from (resolved in the driver before anything runs)."""

    spec: FeatureSpec
    layout: RecordLayout
    patterns: tuple[str, ...]
    files: tuple[str, ...]
    side_paths: tuple[str, ...]
    join_methods: tuple[str, ...]
    output_dir: str
    num_shards: int
    max_field_chars: int


def _reason_key(rejected_json: str) -> tuple:
    return ("rejected:" + reason_of(rejected_json),)


def build_pipeline(p: beam.Pipeline, plan: JobPlan) -> None:
    """Add the whole job to `p` (no side effects until the pipeline runs)."""
    spec, out = plan.spec, plan.output_dir
    lines = (p | "ReadLines" >> ReadRawLines(plan.patterns, spec.format.header)
             | "Progress" >> beam.ParDo(ReportProgress("preprocess", "lines")))  # a line per worker per interval
    validate = ValidateRows(spec, plan.layout, plan.max_field_chars)
    if not spec.side_tables:  # one DoFn per row on the common path
        valid = lines | "ParseAndValidate" >> beam.ParDo(ParseAndValidateLines(
            spec, plan.layout, plan.max_field_chars)).with_outputs(REJECTED, COUNTS, main="records")
        counts, rejected = [valid[COUNTS]], [valid[REJECTED]]
    else:
        parsed = lines | "ParseLines" >> beam.ParDo(ParseLines(spec)).with_outputs(REJECTED, COUNTS, main="rows")
        rows, rejected, counts = parsed.rows, [parsed[REJECTED]], [parsed[COUNTS]]
        for (table, keep), path, method in zip(appended_columns(spec), plan.side_paths, plan.join_methods):
            side = p | f"ReadTable[{table.name}]" >> ReadSideTable(table, keep, path)
            counts.append(side["bad"] | f"CountBadTableRows[{table.name}]"
                          >> CountKeys(constant_key(f"side_table_bad_rows:{table.name}")))
            joined = (rows, side["rows"]) | f"Join[{table.name}]" >> JoinSideTable(
                table, spec.format.columns.index(table.key), method)
            rows = joined.rows
            rejected.append(joined[REJECTED])
        valid = rows | "Validate" >> beam.ParDo(validate).with_outputs(REJECTED, main="records")
        rejected.append(valid[REJECTED])
    compressed = [f for f in plan.files if is_compressed(f)]
    if compressed:  # a truncated .gz reads as a shorter file: checked here, fails the job in the driver
        counts.append(p | "CompressedInputs" >> beam.Create(compressed)
                      | "VerifyCompressed" >> beam.ParDo(VerifyCompressedInputs()))
    splits = valid.records | "Split" >> AssignSplit(spec.split)
    parts = {TRAIN: splits[TRAIN], EVAL: splits[EVAL]}
    if spec.negative_sampling_rate < 1.0:  # train negatives only: the eval split keeps the real distribution
        sampled = parts[TRAIN] | "SampleNegatives" >> beam.ParDo(SampleNegatives(
            plan.layout, spec.negative_sampling_rate, spec.split.seed, TRAIN)).with_outputs(COUNTS, main="records")
        counts.append(sampled[COUNTS])
        parts[TRAIN] = sampled.records
    for name in (TRAIN, EVAL):
        encoded = parts[name] | f"Encode[{name}]" >> beam.ParDo(EncodeExamples(plan.layout, name)).with_outputs(
            COUNTS, main="examples")
        counts.append(encoded[COUNTS])
        encoded.examples | f"Write[{name}]" >> WriteGzipTFRecords(shard_prefix(out, name), SHARD_SUFFIX,
                                                                  plan.num_shards)
    all_rejected = tuple(rejected) | "FlattenRejected" >> beam.Flatten()
    all_rejected | "WriteRejected" >> beam.io.WriteToText(
        beam_files.join(out, "rejected", "rejected"), file_name_suffix=".jsonl")
    counts.append(all_rejected | "CountRejected" >> CountKeys(_reason_key))
    all_counts = tuple(counts) | "FlattenCounts" >> beam.Flatten() | "SumCounts" >> beam.CombinePerKey(sum)
    analysis = parts[TRAIN] | "Analyze" >> AnalyzeTrain(spec, plan.layout)  # what the model trains on
    (p | "Once" >> beam.Create([None])
     | "WriteStaged" >> beam.ParDo(
         WriteStagedArtifacts(manifest.staging_dir(out), [f.name for f in spec.vocab_features],
                              [f.name for f in spec.by_kind("numeric")]),
         vocab=beam.pvalue.AsDict(analysis["vocab"]), numeric=beam.pvalue.AsDict(analysis["numeric"]),
         boundaries=beam.pvalue.AsDict(analysis["boundaries"]), counts=beam.pvalue.AsDict(all_counts),
         rule=beam.pvalue.AsSingleton(splits["rule"])))


def _override_format(spec: FeatureSpec, delimiter: str | None, header: bool | None) -> FeatureSpec:
    fmt = spec.format
    if delimiter is not None:
        fmt = replace(fmt, delimiter=delimiter.encode().decode("unicode_escape"))
    if header is not None:
        fmt = replace(fmt, header=header)
    return replace(spec, format=fmt)


def _join_method(path: str, choice: str) -> str:
    if choice != "auto":
        return choice
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    return SIDE_INPUT if size <= SIDE_INPUT_MAX_BYTES else COGROUP


def check_accounting(counts: dict, max_bad_fraction: float) -> dict:
    """rows_in == written + rejected + sampled out (negative down-sampling), and the rejected fraction within
    bounds; returns the summary."""
    corrupt = sorted(k.split(":", 1)[1] for k in counts if k.startswith("corrupt_input:"))
    if corrupt:
        raise PreprocessError(f"{len(corrupt)} input file(s) are truncated or corrupt, so the rows after the "
                              f"damage cannot be read or counted; nothing was published: {'; '.join(corrupt)}")
    rows_in = counts.get("rows_in", 0)
    written = {s: counts.get(f"written:{s}", 0) for s in (TRAIN, EVAL)}
    rejected = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rejected:")}
    total_rejected = sum(rejected.values())
    sampled_out = {s: counts.get(f"{DROPPED}:{s}", 0) for s in (TRAIN, EVAL) if f"{DROPPED}:{s}" in counts}
    summary = {"read": rows_in, "written": written, "written_total": sum(written.values()),
               "rejected": dict(sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))),
               "rejected_total": total_rejected, "sampled_out": sampled_out,
               "negatives_kept": {s: counts.get(f"{KEPT_NEGATIVES}:{s}", 0) for s in sampled_out},
               "side_table_bad_rows": {k.split(":", 1)[1]: v for k, v in counts.items()
                                       if k.startswith("side_table_bad_rows:")}}
    if rows_in != summary["written_total"] + total_rejected + sum(sampled_out.values()):
        raise PreprocessError(f"accounting broken: {rows_in} rows read != {summary['written_total']} written "
                              f"+ {total_rejected} rejected + {sum(sampled_out.values())} negatives sampled out "
                              f"({summary})")
    fraction = total_rejected / rows_in if rows_in else 0.0
    summary["rejected_fraction"] = fraction
    if rows_in == 0:
        raise PreprocessError("no rows were read (empty input files?)")
    if fraction > max_bad_fraction:
        top = ", ".join(f"{r}: {n}" for r, n in list(summary["rejected"].items())[:5])
        raise PreprocessError(f"{total_rejected} of {rows_in} rows rejected ({fraction:.2%}) > --max-bad-fraction "
                              f"{max_bad_fraction:.2%}; top reasons: {top}; see rejected/*.jsonl")
    return summary


def preprocess(spec: FeatureSpec | str, inputs: str | Sequence[str], output_dir: str, *,
               max_bad_fraction: float = 0.01, beam_args: Sequence[str] = (), delimiter: str | None = None,
               header: bool | None = None, num_shards: int = 0, join: str = "auto",
               max_field_chars: int = 65536, overwrite: bool = False) -> str | Path:
    """Run the job; returns the output folder (finished: manifest.json written) or raises PreprocessError."""
    spec = load_spec(spec) if isinstance(spec, str) else spec
    spec_text = resolved_text(spec.path) if Path(spec.path).is_file() else beam_files.read_text(spec.path)
    overrides = {k: v for k, v in (("delimiter", delimiter), ("header", header)) if v is not None}
    spec = _override_format(spec, delimiter, header)
    patterns = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    files = expand_inputs(patterns)
    check_headers(files, spec.format)
    side_paths = tuple(side_table_path(t, files) for t in spec.side_tables)
    for t, path in zip(spec.side_tables, side_paths):
        if not FileSystems.exists(path):
            raise PreprocessError(f"side table {t.name!r}: {path} does not exist (file is relative to the main "
                                  f"input's folder)")
    out = str(output_dir).rstrip("/")
    if manifest.previous_outputs(out):
        if not overwrite:
            raise PreprocessError(f"{out} already holds preprocessing output; pass --overwrite to replace it")
        manifest.clear_outputs(out)
    plan = JobPlan(spec, record_layout(spec), patterns, tuple(files), side_paths,
                   tuple(_join_method(pth, join) for pth in side_paths), out, num_shards, max_field_chars)
    options = beam_options.pipeline_options(beam_args)  # no --runner: local FnApiRunner, 2 processes
    started = dt.datetime.now(dt.timezone.utc)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, plan)
    result = pipeline.run()
    result.wait_until_finish()
    print_counters(result, "preprocess")
    summary = check_accounting(manifest.read_staged_json(out, manifest.COUNTS), max_bad_fraction)
    split_rule = manifest.read_staged_json(out, manifest.SPLIT_RULE)
    manifest.promote(out, [f.name for f in spec.vocab_features])
    manifest.publish_spec(out, spec_text)
    record = {
        "artifact_version": ARTIFACT_VERSION, "spec": spec.name, "spec_path": spec.path,
        "spec_hash": spec_hash(spec), "format_overrides": overrides, "code_version": runtime.code_version(),
        "inputs": {"patterns": list(patterns), "files": list(files),
                   "side_tables": {t.name: {"file": pth, "join": m} for t, pth, m in
                                   zip(spec.side_tables, side_paths, plan.join_methods)}},
        "rows": summary, "max_bad_fraction": max_bad_fraction,
        "split": split_rule,
        "negative_sampling": {**sampling_rule(spec.negative_sampling_rate, spec.split.seed),
                              "negatives_dropped": summary["sampled_out"].get(TRAIN, 0),
                              "negatives_kept": summary["negatives_kept"].get(TRAIN)},
        "shards": {s: beam_files.match(shard_prefix(out, s) + "-*" + SHARD_SUFFIX) for s in (TRAIN, EVAL)},
        "beam_options": options.get_all_options(drop_default=True),
        "metrics": counter_totals(result),  # monitoring view; `rows` come from the pipeline's own counts
        "started_at": started.isoformat(), "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    manifest.write_manifest(out, record)
    return beam_files.native(out)


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """The job's own flags (shared by `rocketctr preprocess` and `python -m pipeline.preprocess.preprocess_job`)."""
    p.add_argument("--spec", required=True, help="feature spec YAML (or a shipped spec's name)")
    p.add_argument("--input", required=True, action="append",
                   help="input file pattern (local, gs://, hdfs://; .gz read transparently); repeatable")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--max-bad-fraction", type=float, default=0.01,
                   help="fail when more than this fraction of rows is rejected (default 0.01)")
    p.add_argument("--delimiter", help="override format.delimiter (e.g. ',' for the Criteo sample; '\\t' works)")
    p.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="override format.header")
    p.add_argument("--num-shards", type=int, default=0, help="shards per split (0: let the runner decide)")
    p.add_argument("--join", choices=("auto", SIDE_INPUT, COGROUP), default="auto",
                   help="side-table join: side input (small tables) or CoGroupByKey; auto picks by file size")
    p.add_argument("--max-field-chars", type=int, default=65536, help="longer fields are rejected")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output in --output")


def run_from_args(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    try:
        out = preprocess(args.spec, args.input, args.output, max_bad_fraction=args.max_bad_fraction,
                         beam_args=beam_args, delimiter=args.delimiter, header=args.header,
                         num_shards=args.num_shards, join=args.join, max_field_chars=args.max_field_chars,
                         overwrite=args.overwrite)
    except (PreprocessError, ValueError) as e:
        print(f"preprocess failed: {e}", file=sys.stderr)
        return 1
    m = beam_files.read_json(beam_files.join(out, manifest.MANIFEST))
    rows = m["rows"]
    sampled = rows.get("sampled_out", {}).get("train")
    note = "" if sampled is None else (f", {sampled} train negatives sampled out (negative_sampling_rate "
                                       f"{m['negative_sampling']['negative_sampling_rate']})")
    print(f"preprocess: {rows['read']} rows read, {rows['written']['train']} train + {rows['written']['eval']} eval "
          f"written, {rows['rejected_total']} rejected {rows['rejected']}{note} -> {out}")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: the job's flags plus any Beam pipeline options (--runner=..., --project=...)."""
    parser = argparse.ArgumentParser(prog="preprocess", description=__doc__.splitlines()[0])
    add_job_arguments(parser)
    args, beam_args = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return run_from_args(args, beam_args)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    sys.exit(run())
