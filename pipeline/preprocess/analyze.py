"""Analyze the TRAIN split only (no eval leakage): vocabularies, numeric statistics, label rate.

One DoFn walks each training record once and pre-aggregates per bundle (token counts in a dict, numeric
moments as shifted sums), flushing in finish_bundle; CombinePerKey then merges the partials. Tokens of a
feature with `shares_embedding_with: X` count toward X's vocabulary. Quantile boundaries for
`transform: bucketize` come from Beam's ApproximateQuantiles (exact while the data fits its buffers).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain
from operator import itemgetter

import apache_beam as beam
import numpy as np

from feature_specs.numeric import pre_transform

from feature_specs.schema import FeatureSpec
from pipeline.preprocess.counting import global_value
from pipeline.preprocess.record_layout import RecordLayout

LABEL_KEY = "\x00label"  # moments of the label: count = train rows, mean = label rate
VOCAB, NUMERIC = "vocab", "numeric"
EMPTY_MOMENTS = (0, 0, 0.0, 0.0, math.inf, -math.inf)  # count, missing, mean, M2, min, max


def merge_moments(a: tuple, b: tuple) -> tuple:
    """Chan et al.'s parallel merge of (count, missing, mean, M2, min, max)."""
    na, nb = a[0], b[0]
    if nb == 0:
        return (na, a[1] + b[1], *a[2:])
    if na == 0:
        return (nb, a[1] + b[1], *b[2:])
    n = na + nb
    delta = b[2] - a[2]
    return (n, a[1] + b[1], a[2] + delta * nb / n, a[3] + b[3] + delta * delta * na * nb / n,
            min(a[4], b[4]), max(a[5], b[5]))


class MergeMoments(beam.CombineFn):
    def create_accumulator(self):
        return EMPTY_MOMENTS

    def add_input(self, acc, moments):
        return merge_moments(acc, moments)

    def merge_accumulators(self, accs):
        out = EMPTY_MOMENTS
        for a in accs:
            out = merge_moments(out, a)
        return out

    def extract_output(self, acc):
        return acc


def finalize_vocab(items: Iterable[tuple[str, int]], min_count: int, top_k: int | None) -> list[tuple[str, int]]:
    """Tokens seen >= min_count times, most frequent first, ties broken by token, at most top_k."""
    kept = sorted(((t, c) for t, c in items if c >= min_count), key=lambda tc: (-tc[1], tc[0]))
    return kept[:top_k] if top_k is not None else kept


def boundaries_from_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """[min, q1, ..., max] -> the distinct interior boundaries q1..q(n-1)."""
    return tuple(sorted(set(float(q) for q in quantiles[1:-1])))


def moments_of(values: Sequence[float], missing: int) -> tuple:
    """(count, missing, mean, M2, min, max) of a batch, computed in C by numpy."""
    if not values:
        return (0, missing, 0.0, 0.0, math.inf, -math.inf)
    a = np.asarray(values, dtype=np.float64)
    mean = float(a.mean())
    return (len(a), missing, mean, float(((a - mean) ** 2).sum()), float(a.min()), float(a.max()))


class SummarizeBundle(beam.DoFn):
    """train records -> partials: (owner, Counter of tokens) on "vocab", (name, moments) on "numeric", and
    lists of values on "q:<name>" for bucketized features.

    Records are buffered (at most BATCH) and summarized column by column with C-level tools (Counter over
    itemgetter, numpy moments); token counts accumulate per bundle and are flushed in finish_bundle."""

    BATCH = 4096

    def __init__(self, layout: RecordLayout):
        self._vocab = []      # (record index, owner, is_sequence)
        self._numeric = []    # (record index, name, bucketize tag or None)
        self._features = {}   # numeric name -> Feature (stats describe numeric.pre_transform of the value)
        for i, (rf, f) in enumerate(zip(layout.fields, layout.features)):  # positions as the layout assigns them
            if rf.role == "label":
                self._numeric.append((i, LABEL_KEY, None))
            elif f is not None and f.kind == "numeric":
                self._numeric.append((i, f.name, f"q:{f.name}" if f.transform == "bucketize" else None))
                self._features[f.name] = f
            elif f is not None and not f.is_hashed:
                self._vocab.append((i, f.vocab_owner, rf.varlen))

    def start_bundle(self):
        self._buffer: list = []
        self._counts = {owner: Counter() for _, owner, _ in self._vocab}
        self._moments = {name: EMPTY_MOMENTS for _, name, _ in self._numeric}

    def process(self, record):
        self._buffer.append(record)
        if len(self._buffer) >= self.BATCH:
            yield from self._summarize()
            if sum(len(c) for c in self._counts.values()) > 1_000_000:  # bound memory on huge vocabularies
                yield from self._flush_counts(lambda kv: kv)

    def _summarize(self):
        batch, self._buffer = self._buffer, []
        for i, owner, is_seq in self._vocab:
            column = map(itemgetter(i), batch)
            self._counts[owner].update(chain.from_iterable(column) if is_seq else column)
        for i, name, qtag in self._numeric:
            values = [x for x in map(itemgetter(i), batch) if x is not None]
            if name in self._features and values:
                values = pre_transform(self._features[name], values).tolist()
            self._moments[name] = merge_moments(self._moments[name], moments_of(values, len(batch) - len(values)))
            if qtag is not None and values:
                yield beam.pvalue.TaggedOutput(qtag, values)

    def _flush_counts(self, wrap):
        counts, self._counts = self._counts, {owner: Counter() for _, owner, _ in self._vocab}
        for owner, counter in counts.items():
            counter.pop(None, None)
            if counter:
                yield beam.pvalue.TaggedOutput(VOCAB, wrap((owner, counter)))

    def finish_bundle(self):
        for out in self._summarize():
            yield beam.pvalue.TaggedOutput(out.tag, global_value(out.value))
        yield from self._flush_counts(global_value)
        for name, moments in self._moments.items():
            yield beam.pvalue.TaggedOutput(NUMERIC, global_value((name, moments)))


class MergeCounters(beam.CombineFn):
    """Sum per-bundle token Counters of one vocabulary owner."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, counter):
        acc.update(counter)
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        out = next(accs, Counter())
        for a in accs:
            out.update(a)
        return out

    def extract_output(self, acc):
        return acc


class AnalyzeTrain(beam.PTransform):
    """train records -> {"vocab": (owner, [(token, count)]), "numeric": (name, moments),
    "boundaries": (name, boundaries)}."""

    def __init__(self, spec: FeatureSpec, layout: RecordLayout):
        super().__init__()
        self._spec, self._layout = spec, layout

    def expand(self, records):
        spec = self._spec
        buckets = {f.name: f.num_buckets for f in spec.by_kind("numeric") if f.transform == "bucketize"}
        parts = records | "Summarize" >> beam.ParDo(SummarizeBundle(self._layout)).with_outputs(
            VOCAB, NUMERIC, *(f"q:{n}" for n in buckets))
        vocab_params = {f.name: (f.vocab.min_count, f.vocab.top_k) for f in spec.vocab_features}
        vocab = (parts[VOCAB]
                 | "SumTokens" >> beam.CombinePerKey(MergeCounters())
                 | "Finalize" >> beam.MapTuple(lambda owner, counts: (owner, finalize_vocab(
                     counts.items(), *vocab_params[owner]))))
        numeric = parts[NUMERIC] | "MergeMoments" >> beam.CombinePerKey(MergeMoments())
        bounds = [parts[f"q:{name}"]
                  | f"Quantiles[{name}]" >> beam.ApproximateQuantiles.Globally(nb + 1, input_batched=True)
                  | f"Boundaries[{name}]" >> beam.Map(lambda q, n=name: (n, boundaries_from_quantiles(q)))
                  for name, nb in buckets.items()]
        boundaries = (tuple(bounds) | "FlattenBoundaries" >> beam.Flatten() if bounds
                      else records.pipeline | "NoBoundaries" >> beam.Create([]))
        return {"vocab": vocab, "numeric": numeric, "boundaries": boundaries}
