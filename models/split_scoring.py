"""Exact end-of-run metrics per tower (AUC, logloss) over a whole split.

Keras' streaming AUC bins scores into a few hundred thresholds, which is fine for progress logs but blurs
the small differences the ablations are about; metrics.json therefore scores every row and computes the
exact rank AUC (ties get their average rank) and the logloss in numpy.
"""

from __future__ import annotations

from typing import Callable

import feature_specs  # noqa: F401
import numpy as np
import tensorflow as tf

_EPS = 1e-7


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties; NaN when only one class is present."""
    y = np.asarray(labels, dtype=np.float64) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average rank within each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy computed from logits (stable for large |z|)."""
    y = np.asarray(labels, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def score_dataset(call: Callable[[dict], dict], ds: tf.data.Dataset) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and every logit `call(features)` returns ({"light_logit": [N], ...}) over the whole dataset."""
    labels, logits, _ = score_dataset_weighted(call, ds)
    return labels, logits


def score_dataset_weighted(call: Callable[[dict], dict], ds: tf.data.Dataset
                           ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """score_dataset plus the example weights (what calibration is fitted and measured with, like the loss)."""
    relaxed = {k: tf.TensorSpec([None] * v.shape.rank, v.dtype) for k, v in ds.element_spec[0].items()}
    fn = tf.function(lambda x: call(x), input_signature=[relaxed])  # one trace for every batch shape
    labels, logits, weights = [], {}, []
    for x, y, w in ds:
        out = fn(x)
        labels.append(y.numpy())
        weights.append(tf.reshape(w, [-1]).numpy())
        for k, v in out.items():
            logits.setdefault(k, []).append(tf.reshape(v, [-1]).numpy())
    return (np.concatenate(labels) if labels else np.zeros(0),
            {k: np.concatenate(v) for k, v in logits.items()},
            np.concatenate(weights) if weights else np.zeros(0))


def tower_metrics(labels: np.ndarray, logits: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{"light": {"auc", "logloss", "mean_ctr"}, "booster": {...}} for each `<tower>_logit` present."""
    out = {}
    for key, z in logits.items():
        tower = key.removesuffix("_logit")
        out[tower] = {"auc": exact_auc(labels, z), "logloss": logloss(labels, z),
                      "mean_ctr": float(np.mean(1.0 / (1.0 + np.exp(-z)))) if len(z) else float("nan"),
                      "rows": int(len(z))}
    return out
