"""Publishing a preprocessing output so that a half-finished job is never mistaken for a finished one.

The rule: `DIR/manifest.json` exists only when everything else in DIR is complete, and it is written LAST.
Readers (feature_specs.artifacts.read_manifest, training, eval) treat a folder without a manifest as unfinished.
The order:
1. the pipeline writes the shards (Beam's sink: temporary files, then a finalize that renames them into place),
   rejected/*.jsonl, and the analysis results into DIR/_staging/ (vocab/*.txt, stats.json, counts.json,
   split.json; pipeline.preprocess.staged_artifacts);
2. the driver checks the accounting (pipeline.preprocess.preprocess_job.check_accounting); a failure raises
   before anything is promoted, so the folder stays unfinished;
3. `promote` moves the staged vocabularies and stats.json into place, `publish_spec` copies the spec;
4. `write_manifest` publishes manifest.json (pipeline.beam_files.publish_json: atomic on a local disk, one
   whole-object write on an object store) and only then removes DIR/_staging.
A re-run first deletes the previous manifest (`previous_outputs` lists it first), so an interrupted re-run
cannot leave an old manifest describing new files. Every path goes through Beam's FileSystems
(pipeline.beam_files), so DIR may be local, gs:// or hdfs://.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from feature_specs.artifacts import SHARD_SUFFIX
from pipeline import beam_files

STAGING = "_staging"
MANIFEST = "manifest.json"
SPEC_COPY = "spec.yaml"
STATS = "stats.json"
COUNTS = "counts.json"  # staged: the job's own counts (rows read / written / rejected by reason ...)
SPLIT_RULE = "split.json"  # staged: the split rule the job applied


def staging_dir(out_dir: str) -> str:
    return beam_files.join(out_dir, STAGING)


def staged_vocab_path(staging: str, feature: str) -> str:
    return beam_files.join(staging, "vocab", f"{feature}.txt")


def previous_outputs(out_dir: str) -> list[str]:
    """Files of an earlier run in out_dir (manifest first, so deleting in order un-finishes it first)."""
    found = []
    for pattern in (MANIFEST, "*" + SHARD_SUFFIX, STATS, SPEC_COPY, "vocab/*", "rejected/*",
                    STAGING + "/vocab/*", STAGING + "/*"):  # a folder's files before the folder
        found.extend(beam_files.match(beam_files.join(out_dir, pattern)))
    return found


def clear_outputs(out_dir: str) -> None:
    """Delete an earlier run's files (its manifest first) and its staging folder."""
    beam_files.delete(previous_outputs(out_dir) + [staging_dir(out_dir)])


def read_staged_json(out_dir: str, name: str):
    """One of the staged results (COUNTS, SPLIT_RULE) the pipeline wrote."""
    path = beam_files.join(staging_dir(out_dir), name)
    if not beam_files.exists(path):
        raise FileNotFoundError(f"{path}: the pipeline finished without staging {name} (did a worker fail?)")
    return beam_files.read_json(path)


def promote(out_dir: str, vocab_features: Sequence[str]) -> None:
    """Move the staged vocabularies and stats.json into place."""
    staging = staging_dir(out_dir)
    src = [staged_vocab_path(staging, n) for n in vocab_features] + [beam_files.join(staging, STATS)]
    dst = [beam_files.join(out_dir, "vocab", f"{n}.txt") for n in vocab_features] + [beam_files.join(out_dir, STATS)]
    beam_files.mkdirs(beam_files.join(out_dir, "vocab"))
    beam_files.rename(src, dst)


def publish_spec(out_dir: str, spec_text: str) -> None:
    """DIR/spec.yaml: a verbatim copy of the (resolved) spec the job ran with."""
    beam_files.publish_text(beam_files.join(out_dir, SPEC_COPY), spec_text)


def write_manifest(out_dir: str, manifest: Mapping) -> None:
    """manifest.json is written last (whole or not at all), then the staging folder is removed."""
    beam_files.publish_json(beam_files.join(out_dir, MANIFEST), dict(manifest))
    staging = staging_dir(out_dir)
    beam_files.delete(beam_files.match(beam_files.join(staging, "vocab", "*"))
                      + beam_files.match(beam_files.join(staging, "*")) + [staging])
