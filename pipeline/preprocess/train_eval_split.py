"""Deterministic train/eval split per spec.split, recorded in the manifest.

- hash_group: blake2b(seed, group key) -> a user's rows all land in one split (no user leaks across splits).
- hash_row:   blake2b(seed, raw line).
- time_fraction: rows at or after a cutoff minute go to eval; the cutoff is the latest minute boundary with
  at least eval_fraction of the rows at or after it (computed exactly from per-minute counts).
- time_last_day: eval = the last UTC calendar day present in the data.
The hash is stable across processes, machines and Python versions (unlike `hash()`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import apache_beam as beam

from feature_specs.schema import Split
from pipeline.preprocess.counting import CountKeys

TRAIN, EVAL = "train", "eval"


def hash_fraction(seed: int | str, key: str) -> float:
    """A stable pseudo-uniform number in [0, 1) for (seed, key); a string seed salts other draws (sampling)."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


class SplitToken:
    """(group, raw line, timestamp) -> the number the split rule compares: a hash fraction or a timestamp."""

    def __init__(self, split: Split):
        self.method, self.seed = split.method, split.seed

    def __call__(self, group: str | None, text: str, ts: int | None) -> float:
        if self.method == "hash_group":
            return hash_fraction(self.seed, group)
        if self.method == "hash_row":
            return hash_fraction(self.seed, text)
        return ts


def time_cutoff(minute_counts: Mapping[int, int], split: Split) -> int:
    """The timestamp from which rows go to eval, from {minute: rows} (minute = ts // 60)."""
    if not minute_counts:
        return 0
    if split.method == "time_last_day":
        return (max(minute_counts) * 60 // 86400) * 86400
    total, target, acc = sum(minute_counts.values()), split.eval_fraction * sum(minute_counts.values()), 0
    for minute in sorted(minute_counts, reverse=True):
        acc += minute_counts[minute]
        if acc >= target:
            return minute * 60
    return min(minute_counts) * 60  # pragma: no cover - acc reaches total >= target


def split_rule(split: Split, cutoff: int | None = None) -> dict:
    """The rule as recorded in manifest.json."""
    rule = {"method": split.method, "eval_fraction": split.eval_fraction, "seed": split.seed}
    if split.method.startswith("hash"):
        rule["rule"] = ("eval iff blake2b(f'{seed}\\x1f{key}', 8 bytes) / 2**64 < eval_fraction, key = "
                        + ("group key" if split.method == "hash_group" else "raw line"))
    else:
        rule["rule"] = "eval iff timestamp >= cutoff"
        rule["cutoff"] = cutoff
    return rule


def _minute(kv) -> tuple:
    return (int(kv[0]) // 60,)


def _choose(token: float, cutoff: int | None, method: str, eval_fraction: float) -> int:
    if method.startswith("hash"):
        return 1 if token < eval_fraction else 0
    return 1 if token >= cutoff else 0


class _Partition(beam.DoFn):
    def __init__(self, split: Split):
        self._method, self._fraction = split.method, split.eval_fraction

    def process(self, element, cutoff=None):
        token, record = element
        yield beam.pvalue.TaggedOutput(EVAL if _choose(token, cutoff, self._method, self._fraction) else TRAIN,
                                       record)


class AssignSplit(beam.PTransform):
    """(token, record) -> {"train": records, "eval": records, "rule": one dict for the manifest}."""

    def __init__(self, split: Split):
        super().__init__()
        self._split = split

    def expand(self, tokens):
        p = tokens.pipeline
        if self._split.method.startswith("hash"):
            parts = tokens | "Partition" >> beam.ParDo(_Partition(self._split)).with_outputs(TRAIN, EVAL)
            rule = p | "Rule" >> beam.Create([split_rule(self._split)])
        else:
            split = self._split
            cutoff = (tokens
                      | "CountMinutes" >> CountKeys(_minute)
                      | "ToDict" >> beam.combiners.ToDict()
                      | "Cutoff" >> beam.Map(time_cutoff, split))
            parts = tokens | "Partition" >> beam.ParDo(_Partition(split), cutoff=beam.pvalue.AsSingleton(
                cutoff)).with_outputs(TRAIN, EVAL)
            rule = cutoff | "Rule" >> beam.Map(lambda c: split_rule(split, c))
        return {TRAIN: parts[TRAIN], EVAL: parts[EVAL], "rule": rule}
