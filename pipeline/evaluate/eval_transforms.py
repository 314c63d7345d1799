"""The eval job's Beam pieces: parse the non-feature fields, turn predictions into scored rows, and the
combines that compute every metric per (model, cut) key so the job scales out.

A cut is "all" or "<slice feature>=<value>". Scaling choices:
- totals (counts, logloss, mean CTRs) are one associative CombineFn per key;
- global AUC: impressions are first summed per (key, score bucket) with a lifted combine, then each key's
  buckets are sorted and swept in one CombineFn. A bucket is the logit rounded to a multiple of `logit_step`
  (default 2^-14 ~ 6e-5 in logit, i.e. ~0.006% relative in CTR), so a key holds at most ~655k buckets for
  logits in [-20, 20] however many impressions there are. Pairs inside one bucket count 1/2, so the AUC is
  exact up to `auc_max_bucket_error` = (tied-pair share)/2, reported alongside. logit_step = 0 keys on the
  float32 logit itself: exact, but the bucket count then grows with the number of distinct scores;
- per-user AUC is exact: GroupByKey on (key, user), then a CombineFn of metrics.GaucSums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from common import metrics

ALL = "all"
MISSING = "<missing>"
DEFAULT_LOGIT_STEP = 2.0 ** -14
DATA = "<data>"  # the model label under which record-level rejections are counted
COUNTERS = "rocketctr_eval"  # the Beam Metrics namespace of the eval job's counters


class Meta(NamedTuple):
    """The non-feature fields of one example, carried as the RunInference key."""

    label: float
    weight: float
    group: str  # "" when the record has no group key
    slice: str | None


class Scored(NamedTuple):
    logit: float
    ctr: float
    label: float
    weight: float
    group: str
    logit_uncalibrated: float | None = None  # the raw logit when the model exports it (calibration before)


def _one(feature: Any, kind: str) -> Any:
    values = getattr(feature, kind).value
    return values[0] if len(values) == 1 else None


@beam.typehints.with_output_types(tuple[Meta, bytes])
class ParseMeta(beam.DoFn):
    """serialized Example -> (Meta, serialized); malformed label/weight go to the `rejected` output by reason."""

    REJECTED = "rejected"

    def __init__(self, label_key: str, group_key: str | None, weight_key: str | None, slice_key: str | None):
        self._keys = (label_key, group_key, weight_key, slice_key)
        self._parse = None
        self._parsed = Metrics.counter(COUNTERS, "examples_parsed")
        self._rejected = Metrics.counter(COUNTERS, "examples_rejected")

    def setup(self) -> None:
        from tensorflow.core.example import example_pb2

        self._parse = example_pb2.Example.FromString

    def process(self, record: bytes):
        for out in self._meta(record):
            (self._rejected if isinstance(out, beam.pvalue.TaggedOutput) else self._parsed).inc()
            yield out

    def _meta(self, record: bytes):
        label_key, group_key, weight_key, slice_key = self._keys
        feats = self._parse(record).features.feature
        y = _one(feats[label_key], "float_list") if label_key in feats else None
        if y is None:
            yield beam.pvalue.TaggedOutput(self.REJECTED, (DATA, f"missing or multi-valued label {label_key!r}"))
            return
        if y not in (0.0, 1.0):
            yield beam.pvalue.TaggedOutput(self.REJECTED, (DATA, f"label {label_key!r} not 0/1"))
            return
        w = 1.0
        if weight_key is not None and weight_key in feats:
            w = _one(feats[weight_key], "float_list")
            if w is None or not math.isfinite(w) or w < 0:
                yield beam.pvalue.TaggedOutput(self.REJECTED, (DATA, f"weight {weight_key!r} not a finite value >= 0"))
                return
        group = (_text(feats, group_key) or "") if group_key else ""
        cut = (_text(feats, slice_key) or MISSING) if slice_key else None
        yield Meta(float(y), float(w), group, cut), record


def _text(feats: Any, key: str) -> str | None:
    if key not in feats:
        return None
    v = _one(feats[key], "bytes_list")
    return v.decode("utf-8", "replace") if v else None


@beam.typehints.with_output_types(tuple[tuple[str, str], Scored])
class ToScored(beam.DoFn):
    """(Meta, PredictionResult) -> ((model, cut), Scored) for "all" and the record's slice value."""

    REJECTED = "rejected"

    def __init__(self, model: str, slice_name: str | None):
        self._model, self._slice = model, slice_name
        self._scored = Metrics.counter(COUNTERS, "scores_accepted")
        self._rejected = Metrics.counter(COUNTERS, "scores_rejected")

    def process(self, element):
        meta, pred = element
        ctr, logit, *rest = pred.inference
        raw = rest[0] if rest else None
        if not (math.isfinite(ctr) and math.isfinite(logit)) or not 0.0 <= ctr <= 1.0 \
                or (raw is not None and not math.isfinite(raw)):
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(self.REJECTED, (self._model, "score not finite or ctr outside [0, 1]"))
            return
        self._scored.inc()
        row = Scored(logit, ctr, meta.label, meta.weight, meta.group, raw)
        yield (self._model, ALL), row
        if self._slice is not None:
            yield (self._model, f"{self._slice}={meta.slice}"), row


@dataclass
class Totals:
    """TotalsFn's accumulator: common.metrics.CtrSums of the served CTR and of the uncalibrated logit's CTR (rows
    that carry one), plus rows pending in a buffer so the sums are added in numpy batches, not row by row."""

    served: metrics.CtrSums = field(default_factory=metrics.CtrSums)
    raw: metrics.CtrSums = field(default_factory=metrics.CtrSums)
    no_group: int = 0
    pending: list = field(default_factory=list)  # (ctr, label, weight, raw logit or NaN)

    def flush(self) -> "Totals":
        if self.pending:
            ctr, y, w, raw = np.asarray(self.pending, dtype=np.float64).T
            self.served.add(ctr, y, w)
            has_raw = ~np.isnan(raw)
            if has_raw.any():
                self.raw.add(metrics.sigmoid(raw[has_raw]), y[has_raw], w[has_raw])
            self.pending = []
        return self


class TotalsFn(beam.CombineFn):
    """Impressions, weight, clicks, predicted CTR and logloss sums -> scalar metrics; the same CTR and logloss
    sums of the uncalibrated logit when the model exports it (calibration and logloss before calibration)."""

    BATCH = 4096  # rows buffered before they are added to the sums in one numpy pass

    def create_accumulator(self) -> Totals:
        return Totals()

    def add_input(self, acc: Totals, row: Scored) -> Totals:
        raw = math.nan if row.logit_uncalibrated is None else row.logit_uncalibrated
        acc.pending.append((row.ctr, row.label, row.weight, raw))
        acc.no_group += row.group == ""
        return acc.flush() if len(acc.pending) >= self.BATCH else acc

    def merge_accumulators(self, accs) -> Totals:
        out = Totals()
        for a in accs:
            a.flush()
            out.served.merge(a.served)
            out.raw.merge(a.raw)
            out.no_group += a.no_group
        return out

    def compact(self, acc: Totals) -> Totals:
        return acc.flush()  # what crosses the shuffle is the sums, not the buffered rows

    def extract_output(self, acc: Totals) -> dict:
        s, r = acc.flush().served, acc.raw
        return {"impressions": s.rows, "weight": s.weight, "clicks": s.clicks, "ctr_observed": s.observed_ctr,
                "ctr_predicted": s.predicted_ctr, "calibration": s.calibration, "logloss": s.logloss,
                "impressions_no_group": acc.no_group,
                # before calibration (the model's logit_uncalibrated output; None when it has none)
                "ctr_predicted_uncalibrated": r.predicted_ctr, "calibration_uncalibrated": r.calibration,
                "logloss_uncalibrated": r.logloss}


def bucket_key(logit: float, step: float) -> float | int:
    """The AUC bucket of a logit: an integer multiple of `step`, or the float32 value itself when step == 0."""
    return round(logit / step) if step > 0 else float(np.float32(logit))


def sum_tuples(values) -> tuple:
    """Element-wise sum of equal-length tuples (an associative combine for CombinePerKey)."""
    out = None
    for v in values:
        out = list(v) if out is None else [a + b for a, b in zip(out, v)]
    return tuple(out) if out is not None else ()


class SweepFn(beam.CombineFn):
    """(bucket, pos, neg, sum w*ctr) of one key -> AUC, its bucketing error bound, ROC and reliability."""

    def __init__(self, bucketed: bool, calibration_bins: int, roc_points: int = 201):
        self._bucketed, self._bins, self._roc_points = bucketed, calibration_bins, roc_points

    def create_accumulator(self):
        return []

    def add_input(self, acc, bucket):
        acc.append(bucket)
        return acc

    def merge_accumulators(self, accs):
        out = []
        for a in accs:
            out.extend(a)
        return out

    def extract_output(self, acc) -> dict:
        acc.sort(key=lambda b: b[0])
        pos = np.array([b[1] for b in acc], dtype=np.float64)
        neg = np.array([b[2] for b in acc], dtype=np.float64)
        swp = np.array([b[3] for b in acc], dtype=np.float64)
        rows = metrics.reliability_from_counts(pos, neg, swp, self._bins)
        return {"auc": metrics.auc_from_counts(pos, neg), "score_buckets": len(acc),
                "auc_max_bucket_error": metrics.tie_fraction(pos, neg) / 2 if self._bucketed else 0.0,
                "roc": metrics.roc_from_counts(pos, neg, self._roc_points),
                "reliability": [r.__dict__ for r in rows]}


def user_auc(element) -> tuple:
    """((key, user), [(logit, label, weight)...]) -> (key, (impressions, weight, AUC or None))."""
    (key, _user), rows = element
    arr = np.asarray(list(rows), dtype=np.float64).reshape(-1, 3)
    return key, metrics.user_weight_and_auc(arr[:, 0], arr[:, 1], arr[:, 2])


class GaucFn(beam.CombineFn):
    def create_accumulator(self):
        return metrics.GaucSums()

    def add_input(self, acc, user):
        return acc.add(*user)

    def merge_accumulators(self, accs):
        out = metrics.GaucSums()
        for a in accs:
            out.merge(a)
        return out

    def extract_output(self, acc) -> dict:
        r = acc.result()
        return {**r.__dict__, "user_auc_hist": acc.auc_hist or [0] * metrics.AUC_HIST_BINS}


class ComputeMetrics(beam.PTransform):
    """((model, cut), Scored) -> one dict per (model, cut) with totals, sweep and gauc sections."""

    def __init__(self, logit_step: float, calibration_bins: int):
        super().__init__()
        self._step, self._bins = logit_step, calibration_bins

    def expand(self, scored):
        step = self._step
        totals = scored | "Totals" >> beam.CombinePerKey(TotalsFn())
        sweep = (scored
                 | "ToBucket" >> beam.Map(lambda kv: ((kv[0], bucket_key(kv[1].logit, step)),
                                                      (kv[1].weight * kv[1].label, kv[1].weight * (1 - kv[1].label),
                                                       kv[1].weight * kv[1].ctr)))
                 | "SumBuckets" >> beam.CombinePerKey(sum_tuples)
                 | "KeyOfBucket" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], *kv[1])))
                 | "Sweep" >> beam.CombinePerKey(SweepFn(step > 0, self._bins)))
        gauc = (scored
                | "WithGroup" >> beam.Filter(lambda kv: kv[1].group != "")
                | "ByUser" >> beam.Map(lambda kv: ((kv[0], kv[1].group), (kv[1].logit, kv[1].label, kv[1].weight)))
                | "GroupUser" >> beam.GroupByKey()
                | "UserAuc" >> beam.Map(user_auc)
                | "Gauc" >> beam.CombinePerKey(GaucFn()))
        return ({"totals": totals, "sweep": sweep, "gauc": gauc}
                | "Join" >> beam.CoGroupByKey()
                | "ToDict" >> beam.MapTuple(lambda key, parts: {"model": key[0], "cut": key[1],
                                                               **{k: (v[0] if v else None) for k, v in parts.items()}}))
