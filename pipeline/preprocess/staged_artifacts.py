"""The analysis results as files: vocabularies, stats.json, and the job's counts and split rule, written into
DIR/_staging/ by one DoFn that runs once with every result as a side input (pipeline.preprocess.manifest
promotes them after the driver has checked the accounting). Written through Beam's FileSystems by a worker, so
the driver never needs a local copy and DIR may be on an object store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from feature_specs.artifacts import ARTIFACT_VERSION, NumericStats, Stats, format_vocab_line, stats_to_json
from pipeline import beam_files
from pipeline.preprocess.analyze import LABEL_KEY
from pipeline.preprocess.manifest import COUNTS, SPLIT_RULE, STATS, staged_vocab_path

NO_MOMENTS = (0, 0, 0.0, 0.0, 0.0, 0.0)  # count, missing, mean, M2, min, max of a feature never present


def build_stats(train_rows: int, numeric: Mapping[str, tuple], boundaries: Mapping[str, Sequence[float]],
                vocab_sizes: Mapping[str, int], numeric_names: Sequence[str]) -> Stats:
    """artifacts.Stats from the merged moments (population std; min/max 0 when a feature is never present)."""
    label = numeric.get(LABEL_KEY, NO_MOMENTS)
    out = {}
    for name in numeric_names:
        n, missing, mean, m2, lo, hi = numeric.get(name, NO_MOMENTS)
        out[name] = NumericStats(count=n, missing=missing, mean=mean if n else 0.0,
                                 std=(m2 / n) ** 0.5 if n else 0.0, min=lo if n else 0.0, max=hi if n else 0.0,
                                 boundaries=tuple(boundaries.get(name, ())))
    return Stats(version=ARTIFACT_VERSION, train_rows=train_rows, label_rate=label[2] if label[0] else 0.0,
                 numeric=out, vocab_sizes=dict(vocab_sizes))


def vocab_text(items: Sequence[tuple[str, int]]) -> str:
    return "".join(format_vocab_line(t, c) + "\n" for t, c in items)


class WriteStagedArtifacts(beam.DoFn):
    """Runs once (on a one-element PCollection) with every analysis result as a side input; yields the number
    of vocabularies written."""

    def __init__(self, staging: str, vocab_features: Sequence[str], numeric_names: Sequence[str]):
        self._staging, self._vocab_features, self._numeric = staging, tuple(vocab_features), tuple(numeric_names)
        self._files = Metrics.counter("preprocess", "staged_files")

    def process(self, _, vocab, numeric, boundaries, counts, rule):
        sizes = {}
        for name in self._vocab_features:
            items = vocab.get(name, [])
            sizes[name] = len(items)
            beam_files.write_text(staged_vocab_path(self._staging, name), vocab_text(items))
        stats = build_stats(int(numeric.get(LABEL_KEY, (0,))[0]), numeric, boundaries, sizes, self._numeric)
        staged = {STATS: stats_to_json(stats), COUNTS: dict(sorted(counts.items())), SPLIT_RULE: rule}
        for name, doc in staged.items():
            beam_files.write_text(beam_files.join(self._staging, name), json.dumps(doc, indent=2) + "\n")
        self._files.inc(len(sizes) + len(staged))
        yield len(sizes)
