"""Exact end-of-run metrics per tower (AUC, logloss, mean CTR) over a whole split.

Keras' streaming AUC bins scores into a few hundred thresholds, which is fine for progress logs but blurs
the small differences the ablations are about; metrics.json therefore scores every row and computes the
exact weighted AUC and logloss with common.metrics, the same definitions the offline eval job uses.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from common import metrics


def score_dataset_weighted(call: Callable[[dict], dict], ds: tf.data.Dataset
                           ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Labels, every logit `call(features)` returns ({"light_logit": [N], ...}) and the example weights over the
    whole dataset (metrics and calibration are weighted like the loss)."""
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


def tower_metrics(labels: np.ndarray, logits: dict[str, np.ndarray], weights: np.ndarray | None = None
                  ) -> dict[str, dict[str, float | int | None]]:
    """{"light": {"auc", "logloss", "mean_ctr", "rows"}, "booster": {...}} for each `<tower>_logit` present;
    a figure the split cannot define (one class only, no rows) is None (common.metrics)."""
    out = {}
    for key, z in logits.items():
        tower = key.removesuffix("_logit")
        bad = int(np.count_nonzero(~np.isfinite(z)))
        if bad:
            raise ValueError(f"{tower} tower: {bad} of {len(z)} logits are not finite (did training diverge?)")
        sums = metrics.CtrSums().add(metrics.sigmoid(z), labels, weights)
        out[tower] = {"auc": metrics.auc(z, labels, weights), "logloss": sums.logloss, "mean_ctr": sums.predicted_ctr,
                      "rows": int(len(z))}
    return out
