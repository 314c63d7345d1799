"""Writing the artifacts so that a half-finished job is never mistaken for a finished one.

The pipeline writes vocabularies, stats.json and the counts into DIR/_staging/; after the run the driver
checks the accounting, moves the staged files into place, copies the spec and writes manifest.json LAST
(readers treat a folder without a manifest as unfinished). All paths go through Beam's FileSystems.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from feature_specs.artifacts import ARTIFACT_VERSION, SHARD_SUFFIX, NumericStats, Stats, format_vocab_line, \
    stats_to_json
from pipeline.preprocess.analyze import LABEL_KEY

STAGING = "_staging"


def join(*parts: str) -> str:
    return FileSystems.join(*parts)


def write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as fh:
        fh.write(text.encode("utf-8"))


def read_text(path: str) -> str:
    with FileSystems.open(path) as fh:
        return fh.read().decode("utf-8")


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def _matches(pattern: str) -> list[str]:
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def previous_outputs(out_dir: str) -> list[str]:
    """Files of an earlier run in out_dir (manifest first, so deleting in order un-finishes it first)."""
    found = []
    for pattern in ("manifest.json", "*" + SHARD_SUFFIX, "stats.json", "spec.yaml", "vocab/*", "rejected/*",
                    STAGING + "/*", STAGING + "/vocab/*"):
        found.extend(_matches(join(out_dir, pattern)))
    return found


def clear_outputs(out_dir: str) -> None:
    files = previous_outputs(out_dir)
    if files:
        FileSystems.delete(files)


def build_stats(train_rows: int, numeric: Mapping[str, tuple], boundaries: Mapping[str, Sequence[float]],
                vocab_sizes: Mapping[str, int], numeric_names: Sequence[str]) -> Stats:
    """artifacts.Stats from the merged moments (population std; min/max 0 when a feature is never present)."""
    label = numeric.get(LABEL_KEY, (0, 0, 0.0, 0.0, 0.0, 0.0))
    out = {}
    for name in numeric_names:
        n, missing, mean, m2, lo, hi = numeric.get(name, (0, 0, 0.0, 0.0, 0.0, 0.0))
        out[name] = NumericStats(count=n, missing=missing, mean=mean if n else 0.0,
                                 std=(m2 / n) ** 0.5 if n else 0.0, min=lo if n else 0.0, max=hi if n else 0.0,
                                 boundaries=tuple(boundaries.get(name, ())))
    return Stats(version=ARTIFACT_VERSION, train_rows=train_rows, label_rate=label[2] if label[0] else 0.0,
                 numeric=out, vocab_sizes=dict(vocab_sizes))


class WriteStaged(beam.DoFn):
    """Runs once (on a one-element PCollection) with every analysis result as a side input."""

    def __init__(self, staging: str, vocab_features: Sequence[str], numeric_names: Sequence[str]):
        self._staging, self._vocab_features, self._numeric = staging, tuple(vocab_features), tuple(numeric_names)

    def process(self, _, vocab, numeric, boundaries, counts, rule):
        sizes = {}
        for name in self._vocab_features:
            items = vocab.get(name, [])
            sizes[name] = len(items)
            write_text(join(self._staging, "vocab", f"{name}.txt"),
                       "".join(format_vocab_line(t, c) + "\n" for t, c in items))
        stats = build_stats(int(numeric.get(LABEL_KEY, (0,))[0]), numeric, boundaries, sizes, self._numeric)
        write_text(join(self._staging, "stats.json"), json.dumps(stats_to_json(stats), indent=2) + "\n")
        write_text(join(self._staging, "counts.json"), json.dumps(dict(sorted(counts.items())), indent=2) + "\n")
        write_text(join(self._staging, "split.json"), json.dumps(rule, indent=2) + "\n")
        yield len(sizes)


def promote(out_dir: str, vocab_features: Sequence[str]) -> None:
    """Move the staged vocabularies and stats.json into place."""
    staging = join(out_dir, STAGING)
    src = [join(staging, "vocab", f"{n}.txt") for n in vocab_features] + [join(staging, "stats.json")]
    dst = [join(out_dir, "vocab", f"{n}.txt") for n in vocab_features] + [join(out_dir, "stats.json")]
    if not exists(join(out_dir, "vocab")):
        FileSystems.mkdirs(join(out_dir, "vocab"))
    FileSystems.rename(src, dst)


def write_manifest(out_dir: str, manifest: Mapping) -> None:
    """manifest.json is written last, through a temporary name, then the staging folder is removed."""
    tmp = join(out_dir, "manifest.json.tmp")
    write_text(tmp, json.dumps(manifest, indent=2, default=str) + "\n")
    FileSystems.rename([tmp], [join(out_dir, "manifest.json")])
    leftovers = _matches(join(out_dir, STAGING, "vocab", "*")) + _matches(join(out_dir, STAGING, "*"))
    if leftovers:
        FileSystems.delete(leftovers)
    if exists(join(out_dir, STAGING)):
        FileSystems.delete([join(out_dir, STAGING)])
