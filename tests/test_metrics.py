"""Hand-worked and brute-force checks of the pure metric functions (common/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common import metrics


def brute_auc(s, y, w=None) -> float | None:
    """O(n^2) Mann-Whitney: every positive/negative pair, ties 1/2, weighted by w_i * w_j."""
    w = np.ones(len(s)) if w is None else np.asarray(w, float)
    num = den = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if y[i] == 1 and y[j] == 0:
                pair = w[i] * w[j]
                den += pair
                num += pair * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return num / den if den > 0 else None


def test_auc_hand_worked_without_ties():
    # positives 0.35 (beats 0.1, loses to 0.4) and 0.8 (beats both): 3 of 4 pairs
    assert metrics.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auc_ties_count_half():
    # positive 0.5 ties two negatives (2 * 1/2), positive 0.9 beats both (2): 3 / 4
    assert metrics.auc([0.5, 0.5, 0.5, 0.9], [1, 0, 0, 1]) == pytest.approx(0.75)
    assert metrics.auc([0.3] * 6, [0, 1, 0, 1, 1, 0]) == pytest.approx(0.5)


def test_auc_weighted_hand_worked():
    # pos (score 2, w 3) vs neg (1, w 2): wins 6; vs neg (3, w 1): loses; 6 / (3 * 3)
    assert metrics.auc([1, 2, 3], [0, 1, 0], [2, 3, 1]) == pytest.approx(6 / 9)


def test_auc_undefined_is_none():
    assert metrics.auc([], []) is None
    assert metrics.auc([0.1, 0.2], [1, 1]) is None
    assert metrics.auc([0.1, 0.2], [0, 0]) is None
    assert metrics.auc([0.1, 0.2], [1, 0], [0, 1]) is None  # the only positive has zero weight


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_brute_force_with_ties_and_weights(seed):
    rng = np.random.default_rng(seed)
    n = 60
    s = rng.integers(0, 8, n) / 8  # heavy ties
    y = (rng.random(n) < 0.4).astype(float)
    w = rng.uniform(0.1, 3, n)
    assert metrics.auc(s, y, w) == pytest.approx(brute_auc(s, y, w), abs=1e-12)
    assert metrics.auc(s, y) == pytest.approx(brute_auc(s, y), abs=1e-12)


def test_integer_weights_equal_repeated_rows():
    s, y, w = [0.2, 0.2, 0.7, 0.4], [1, 0, 1, 0], [2, 1, 3, 2]
    rep = np.repeat(np.arange(4), w)
    assert metrics.auc(s, y, w) == pytest.approx(metrics.auc(np.take(s, rep), np.take(y, rep)))
    assert metrics.logloss([0.3, 0.6, 0.7, 0.1], y, w) == pytest.approx(
        metrics.logloss(np.take([0.3, 0.6, 0.7, 0.1], rep), np.take(y, rep)))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.auc([0.1, 0.2], [0])
    with pytest.raises(ValueError, match="weights"):
        metrics.auc([0.1, 0.2], [0, 1], [1, -1])
    with pytest.raises(ValueError, match="scores must be finite"):
        metrics.auc([float("nan"), 0.2], [0, 1])


def test_roc_area_is_the_auc_and_ends_at_corners():
    rng = np.random.default_rng(3)
    s, y = rng.integers(0, 20, 200) / 20, (rng.random(200) < 0.3).astype(float)
    _, pos, neg = metrics.tie_groups(s, y)
    roc = metrics.roc_from_counts(pos, neg, max_points=10_000)
    assert roc[0] == (0.0, 0.0) and roc[-1] == (1.0, 1.0)
    fpr, tpr = np.array(roc).T
    # trapezoids across tie groups give exactly the ties-count-1/2 statistic
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(metrics.auc(s, y), abs=1e-12)
    assert len(metrics.roc_from_counts(pos, neg, max_points=11)) <= 11
    assert metrics.roc_from_counts([1.0], [0.0]) == []


def test_tie_fraction_bounds_bucketing_error():
    assert metrics.tie_fraction([2.0], [3.0]) == pytest.approx(1.0)  # everything in one bucket
    assert metrics.tie_fraction([0, 1], [1, 0]) == 0.0
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=300), (rng.random(300) < 0.5).astype(float)
    exact = metrics.auc(s, y)
    keys, pos, neg = metrics.tie_groups(np.round(s / 0.25), y)  # coarse buckets
    assert abs(metrics.auc_from_counts(pos, neg) - exact) <= metrics.tie_fraction(pos, neg) / 2


def test_logloss_hand_worked_and_clipped():
    assert metrics.logloss([0.5, 0.9], [1, 0]) == pytest.approx((math.log(2) + math.log(10)) / 2)
    assert metrics.logloss([0.5, 0.9], [1, 0], [3, 1]) == pytest.approx((3 * math.log(2) + math.log(10)) / 4)
    assert metrics.logloss([0.0, 1.0], [1, 0]) == pytest.approx(-math.log(metrics.LOGLOSS_EPS))
    assert metrics.logloss([], []) is None


def test_calibration_ratio():
    assert metrics.calibration_ratio(0.2, 0.1) == pytest.approx(2.0)
    assert metrics.calibration_ratio(0.2, 0.0) is None
    assert metrics.calibration_ratio(None, 0.1) is None


def test_calibration_hand_worked_weighted_and_undefined():
    # predicted (0.2 + 0.4) / 2 = 0.3, observed 1 / 2: 0.6; weighted 3:1 -> (0.6 + 0.4) / 4 over 1 / 4 = 1.0
    assert metrics.calibration([0.2, 0.4], [0, 1]) == pytest.approx(0.6)
    assert metrics.calibration([0.2, 0.4], [0, 1], [3, 1]) == pytest.approx(1.0)
    assert metrics.calibration([0.2, 0.4], [0, 0]) is None and metrics.calibration([], []) is None


def test_ctr_sums_merge_equals_one_pass_and_the_direct_functions():
    rng = np.random.default_rng(3)
    p, y, w = rng.uniform(0, 1, 500), (rng.random(500) < 0.3).astype(float), rng.uniform(0.1, 2, 500)
    whole = metrics.CtrSums().add(p, y, w)
    merged = metrics.CtrSums().merge(metrics.CtrSums().add(p[:123], y[:123], w[:123])).merge(
        metrics.CtrSums().add(p[123:], y[123:], w[123:]))
    assert merged.rows == whole.rows == 500
    for name in ("logloss", "calibration", "observed_ctr", "predicted_ctr"):
        assert getattr(merged, name) == pytest.approx(getattr(whole, name), rel=1e-12)
    assert whole.logloss == pytest.approx(metrics.logloss(p, y, w), rel=1e-12)
    assert whole.observed_ctr == pytest.approx(np.sum(w * y) / np.sum(w))
    empty = metrics.CtrSums()
    assert (empty.logloss, empty.calibration, empty.observed_ctr, empty.predicted_ctr) == (None, None, None, None)


def test_probabilities_outside_0_1_are_an_error():
    with pytest.raises(ValueError, match=r"probabilities must be in \[0, 1\], got e.g. \[1.5\]"):
        metrics.logloss([0.5, 1.5], [0, 1])


def test_logit_terms_equal_the_clipped_metric_where_clipping_is_idle_and_stay_finite():
    z = np.linspace(-12, 12, 49)
    y = (np.arange(49) % 2).astype(float)
    p = metrics.sigmoid(z)
    np.testing.assert_allclose(metrics.logit_logloss_terms(z, y), metrics.logloss_terms(p, y), rtol=1e-9)
    assert np.all(np.isfinite(metrics.logit_logloss_terms(np.array([-800.0, 800.0]), np.array([1.0, 0.0]))))
    np.testing.assert_allclose(metrics.sigmoid([-800.0, 0.0, 800.0]), [0.0, 0.5, 1.0])


def test_reliability_table_hand_worked():
    p = [0.1] * 4 + [0.9] * 4
    y = [0, 0, 0, 1, 1, 1, 1, 0]
    rows = metrics.reliability_table(p, y, n_bins=2)
    assert [(r.weight, r.predicted, r.observed) for r in rows] == [
        (4.0, pytest.approx(0.1), 0.25), (4.0, pytest.approx(0.9), 0.75)]
    # one heavy tie cannot be split: one bin, the others omitted
    one = metrics.reliability_table([0.3] * 5, [0, 1, 0, 0, 1], n_bins=3)
    assert len(one) == 1 and one[0].observed == pytest.approx(0.4) and one[0].predicted == pytest.approx(0.3)
    assert metrics.reliability_table([], []) == []


def test_reliability_bins_hold_about_equal_weight():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.2, 1000)
    rows = metrics.reliability_table(p, (rng.random(1000) < p).astype(float), n_bins=10)
    assert len(rows) == 10 and all(r.weight == 100 for r in rows)
    assert all(a.predicted_max <= b.predicted_min for a, b in zip(rows, rows[1:]))


def test_gauc_hand_worked_with_single_class_user():
    # A: AUC 1 over 2 impressions; B: AUC 0 over 3; C: clicks only -> excluded. (2*1 + 3*0) / 5
    s = [0.1, 0.9, 0.2, 0.3, 0.4, 0.5, 0.6]
    y = [0, 1, 1, 0, 0, 1, 1]
    g = ["A", "A", "B", "B", "B", "C", "C"]
    r = metrics.gauc(s, y, g)
    assert r.gauc == pytest.approx(0.4)
    assert (r.users_total, r.users_used, r.impressions_used, r.weight_used) == (3, 2, 5, 5.0)


def test_gauc_weighted_and_empty():
    s, y, g = [0.1, 0.9, 0.2, 0.3, 0.4], [0, 1, 1, 0, 0], ["A", "A", "B", "B", "B"]
    r = metrics.gauc(s, y, g, weights=[1, 1, 2, 2, 2])  # A weight 2 AUC 1, B weight 6 AUC 0
    assert r.gauc == pytest.approx(2 / 8)
    empty = metrics.gauc([], [], [])
    assert empty.gauc is None and empty.users_total == 0
    only_single = metrics.gauc([0.1, 0.2], [1, 1], ["A", "A"])
    assert only_single.gauc is None and (only_single.users_total, only_single.users_used) == (1, 0)


def test_gauc_sums_merge_equals_one_pass():
    users = [(2, 2.0, 1.0), (3, 3.0, 0.0), (2, 2.0, None), (4, 1.5, 0.75)]
    whole = metrics.GaucSums()
    for u in users:
        whole.add(*u)
    a, b = metrics.GaucSums(), metrics.GaucSums()
    for u in users[:2]:
        a.add(*u)
    for u in users[2:]:
        b.add(*u)
    merged = metrics.GaucSums().merge(a).merge(b)
    assert merged.result() == whole.result() == metrics.gauc_from_users(users)
    assert merged.auc_hist == whole.auc_hist and sum(whole.auc_hist) == 3
    assert whole.auc_hist[-1] == 1 and whole.auc_hist[0] == 1  # AUC 1.0 lands in the top bin
