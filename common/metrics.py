"""CTR metrics in numpy: the one definition of AUC, GAUC, logloss and calibration that training (models), the Beam
eval job, the simulator and the benchmarks share. All are weighted (weights default to 1).

AUC is the Mann-Whitney statistic (a tied positive/negative pair counts 1/2), computed from per-score
"tie groups" (positive and negative weight at each distinct score, scores ascending). The Beam job builds
exactly those groups with a combine per score key, so the same `auc_from_counts` serves both paths.
GAUC follows Alibaba (Zhou et al., DIN): the impression-weighted mean of per-user AUCs over users who have
both clicks and non-clicks; single-class users are excluded and counted.
Logloss and calibration come from mergeable weighted sums (`CtrSums`), so a streaming pass (a Beam combine) and
the direct functions finish with the same arithmetic.
Undefined metrics (empty input, one class only, no clicks) are None, never NaN, so they survive JSON and no caller
mistakes a missing figure for a number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np

AUC_HIST_BINS = 20  # bins of the per-user AUC histogram over [0, 1]
LOGLOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] (the tf.keras default epsilon)


def check_inputs(scores, labels, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 arrays of equal length; labels must be 0/1, weights finite and >= 0 (ValueError otherwise)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (len(s) == len(y) == len(w)):
        raise ValueError(f"scores, labels and weights differ in length: {len(s)}, {len(y)}, {len(w)}")
    if len(y) and not np.isin(y, (0.0, 1.0)).all():
        bad = y[~np.isin(y, (0.0, 1.0))][:5]
        raise ValueError(f"labels must be 0 or 1, got e.g. {bad.tolist()}")
    if len(w) and (not np.isfinite(w).all() or (w < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    if len(s) and not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s, y, w


def tie_groups(scores, labels, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct scores ascending, positive weight per score, negative weight per score)."""
    s, y, w = check_inputs(scores, labels, weights)
    keys, inv = np.unique(s, return_inverse=True)
    pos = np.bincount(inv, weights=w * y, minlength=len(keys))
    neg = np.bincount(inv, weights=w * (1.0 - y), minlength=len(keys))
    return keys, pos, neg


def auc_from_counts(pos, neg) -> float | None:
    """Mann-Whitney AUC from tie groups sorted by ascending score; None without both classes."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    p_total, n_total = pos.sum(), neg.sum()
    if p_total <= 0 or n_total <= 0:
        return None
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (p_total * n_total))


def auc(scores, labels, weights=None) -> float | None:
    """Exact (weighted) AUC, ties counted 1/2; None when there are no positives or no negatives."""
    _, pos, neg = tie_groups(scores, labels, weights)
    return auc_from_counts(pos, neg)


def tie_fraction(pos, neg) -> float:
    """Share of positive/negative pairs that tie (same group): bounds how far bucketing can move the AUC.

    When groups are score *buckets* rather than exact scores, each within-bucket pair is counted 1/2 but
    could truly be 0 or 1, so |AUC_bucketed - AUC_exact| <= tie_fraction / 2.
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    denom = pos.sum() * neg.sum()
    return float(np.sum(pos * neg) / denom) if denom > 0 else 0.0


def roc_from_counts(pos, neg, max_points: int = 201) -> list[tuple[float, float]]:
    """ROC curve points (fpr, tpr) from tie groups (ascending score), thinned to about max_points."""
    pos = np.asarray(pos, dtype=np.float64)[::-1]
    neg = np.asarray(neg, dtype=np.float64)[::-1]
    if pos.sum() <= 0 or neg.sum() <= 0:
        return []
    tpr = np.concatenate([[0.0], np.cumsum(pos) / pos.sum()])
    fpr = np.concatenate([[0.0], np.cumsum(neg) / neg.sum()])
    idx = np.unique(np.linspace(0, len(tpr) - 1, min(len(tpr), max_points)).round().astype(int))
    return [(float(fpr[i]), float(tpr[i])) for i in idx]


def sigmoid(z) -> np.ndarray:
    """The CTR of a logit (float64, no overflow for large |z|)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def logloss_terms(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-impression cross-entropy of already-clipped probabilities."""
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def logit_logloss_terms(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The same cross-entropy on the logit scale, unclipped and stable for any |z|: the smooth objective a logistic
    fit (Platt scaling) minimises, where the metric's clipping would flatten the loss surface."""
    return np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))


@dataclass
class CtrSums:
    """Mergeable weighted sums behind logloss and calibration: a Beam CombineFn accumulator, a streaming pass and
    the direct functions `logloss` / `calibration` alike, so the three cannot drift apart."""

    rows: int = 0
    weight: float = 0.0
    clicks: float = 0.0  # sum of w * y
    predicted: float = 0.0  # sum of w * p
    loss: float = 0.0  # sum of w * cross-entropy, p clipped to [eps, 1 - eps]

    def add(self, probs, labels, weights=None, eps: float = LOGLOSS_EPS) -> "CtrSums":
        p, y, w = check_inputs(probs, labels, weights)
        if len(p) and ((p < 0.0) | (p > 1.0)).any():
            raise ValueError(f"probabilities must be in [0, 1], got e.g. {p[(p < 0.0) | (p > 1.0)][:5].tolist()}")
        self.rows += len(p)
        self.weight += float(w.sum())
        self.clicks += float(np.sum(w * y))
        self.predicted += float(np.sum(w * p))
        self.loss += float(np.sum(w * logloss_terms(np.clip(p, eps, 1.0 - eps), y)))
        return self

    def merge(self, other: "CtrSums") -> "CtrSums":
        for f in fields(self):  # every field is a plain sum
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def observed_ctr(self) -> float | None:
        return self.clicks / self.weight if self.weight > 0 else None

    @property
    def predicted_ctr(self) -> float | None:
        return self.predicted / self.weight if self.weight > 0 else None

    @property
    def calibration(self) -> float | None:
        return calibration_ratio(self.predicted_ctr, self.observed_ctr)

    @property
    def logloss(self) -> float | None:
        return self.loss / self.weight if self.weight > 0 else None


def logloss(probs, labels, weights=None, eps: float = LOGLOSS_EPS) -> float | None:
    """Weighted mean binary cross-entropy with probabilities clipped to [eps, 1-eps]; None if no weight."""
    return CtrSums().add(probs, labels, weights, eps).logloss


def calibration(probs, labels, weights=None) -> float | None:
    """Weighted mean predicted CTR / observed CTR (1.0 = calibrated on average); None without clicks."""
    return CtrSums().add(probs, labels, weights).calibration


def calibration_ratio(mean_predicted: float | None, observed: float | None) -> float | None:
    """Mean predicted CTR / observed CTR (1.0 = calibrated); None when nothing was clicked."""
    if mean_predicted is None or not observed:
        return None
    return float(mean_predicted / observed)


@dataclass(frozen=True)
class ReliabilityRow:
    """One predicted-CTR bin of the reliability table (bins hold about equal impression weight)."""

    weight: float
    predicted: float  # weighted mean predicted CTR in the bin
    observed: float  # weighted click rate in the bin
    predicted_min: float
    predicted_max: float


def reliability_from_counts(pos, neg, sum_wp, n_bins: int = 10) -> list[ReliabilityRow]:
    """Reliability table from score groups (ascending): `sum_wp` is each group's weighted sum of predicted CTR.

    Groups are assigned whole to equal-weight bins by their weight midpoint, so a heavy tie can make a bin
    larger than W / n_bins and leave another empty (empty bins are omitted).
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    swp = np.asarray(sum_wp, dtype=np.float64)
    w = pos + neg
    total = w.sum()
    if total <= 0 or n_bins < 1:
        return []
    keep = w > 0
    pos, w, swp = pos[keep], w[keep], swp[keep]
    mid = np.cumsum(w) - 0.5 * w
    b = np.minimum((mid / total * n_bins).astype(int), n_bins - 1)
    group_pred = swp / w
    rows = []
    for i in range(n_bins):
        m = b == i
        if not m.any():
            continue
        wb = w[m].sum()
        rows.append(ReliabilityRow(weight=float(wb), predicted=float(swp[m].sum() / wb),
                                   observed=float(pos[m].sum() / wb), predicted_min=float(group_pred[m].min()),
                                   predicted_max=float(group_pred[m].max())))
    return rows


def reliability_table(probs, labels, weights=None, n_bins: int = 10) -> list[ReliabilityRow]:
    """Reliability table straight from per-impression predictions (the direct reference path)."""
    keys, pos, neg = tie_groups(probs, labels, weights)
    return reliability_from_counts(pos, neg, keys * (pos + neg), n_bins)  # a group's CTRs all equal its key


@dataclass(frozen=True)
class GaucResult:
    gauc: float | None
    users_total: int
    users_used: int  # users with both clicks and non-clicks
    impressions_used: int  # impressions of the used users
    weight_used: float  # the GAUC denominator: sum of the used users' impression weights


def user_weight_and_auc(scores, labels, weights=None) -> tuple[int, float, float | None]:
    """One user's (impressions, impression weight, AUC or None when single-class)."""
    s, y, w = check_inputs(scores, labels, weights)
    return len(s), float(w.sum()), auc(s, y, w)


@dataclass
class GaucSums:
    """Mergeable running sums behind GAUC (a Beam CombineFn accumulator and the direct path alike)."""

    users_total: int = 0
    users_used: int = 0
    impressions_used: int = 0
    weighted_auc: float = 0.0
    weight_used: float = 0.0
    auc_hist: list[int] | None = None  # per-user AUC counts in AUC_HIST_BINS equal bins over [0, 1]

    def add(self, n_u: int, w_u: float, auc_u: float | None) -> "GaucSums":
        self.users_total += 1
        if auc_u is None or w_u <= 0:
            return self
        self.users_used += 1
        self.impressions_used += n_u
        self.weighted_auc += w_u * auc_u
        self.weight_used += w_u
        hist = self.auc_hist if self.auc_hist is not None else [0] * AUC_HIST_BINS
        hist[min(int(auc_u * AUC_HIST_BINS), AUC_HIST_BINS - 1)] += 1
        self.auc_hist = hist
        return self

    def merge(self, other: "GaucSums") -> "GaucSums":
        self.users_total += other.users_total
        self.users_used += other.users_used
        self.impressions_used += other.impressions_used
        self.weighted_auc += other.weighted_auc
        self.weight_used += other.weight_used
        if other.auc_hist is not None:
            mine = self.auc_hist or [0] * AUC_HIST_BINS
            self.auc_hist = [a + b for a, b in zip(mine, other.auc_hist)]
        return self

    def result(self) -> GaucResult:
        return GaucResult(gauc=self.weighted_auc / self.weight_used if self.weight_used > 0 else None,
                          users_total=self.users_total, users_used=self.users_used,
                          impressions_used=self.impressions_used, weight_used=self.weight_used)


def gauc_from_users(users: Iterable[tuple[int, float, float | None]]) -> GaucResult:
    """GAUC = sum_u w_u AUC_u / sum_u w_u over users with a defined AUC; w_u = the user's impression weight
    (the impression count when unweighted)."""
    sums = GaucSums()
    for n_u, w_u, auc_u in users:
        sums.add(n_u, w_u, auc_u)
    return sums.result()


def gauc(scores, labels, groups, weights=None) -> GaucResult:
    """Direct GAUC over per-impression arrays (`groups` = the user id of each impression)."""
    s, y, w = check_inputs(scores, labels, weights)
    g = np.asarray(groups).reshape(-1)
    if len(g) != len(s):
        raise ValueError(f"groups has length {len(g)}, scores {len(s)}")
    if not len(g):
        return gauc_from_users([])
    _, inv = np.unique(g, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.flatnonzero(np.diff(inv[order])) + 1
    return gauc_from_users(user_weight_and_auc(s[i], y[i], w[i]) for i in np.split(order, bounds))
