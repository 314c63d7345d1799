"""Calibrated served scores: Platt scaling of a tower's logit, plus the negative down-sampling correction.

Ads are ranked and priced on pCTR x bid, so the served CTR must be calibrated, not just well ranked. A tower's
logit z is typically a little over- or under-confident (mean predicted / observed CTR was 1.116 for the demo's
served net) and, when the training data had its negatives down-sampled at rate r, shifted by -log(r).

Why Platt on the logit: ctr = sigmoid(a * z + b) is a two-parameter logistic regression on the logit, the
model's own scale. With a > 0 it is strictly monotone, so the ranking, AUC and GAUC are exactly those of the
uncalibrated net (isotonic regression would tie scores and change them); two parameters fitted on tens of
thousands of rows do not overfit, and the map costs one multiply-add in the serving graph. `a` corrects the
confidence (the spread of the logits), `b` the base rate.

Platt is fitted on the validation slice of the (possibly sampled) train split, i.e. in the sampled
distribution; the sampling correction comes after it: logit = a * z + b + log(r), which is exactly
p = q / (q + (1 - q) / r) for the calibrated sampled-data score q. Both are baked into the exported graph.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from common import metrics

log = logging.getLogger("rocketctr.calibration")

MIN_POSITIVES = 30  # fewer positives (or negatives) on the validation slice: keep the identity
MIN_SLOPE = 0.01  # below this a Platt slope flattens the scores into float32 ties: fit the intercept only
_EPS = 1e-12


@dataclass(frozen=True)
class PlattFit:
    """The fitted map ctr = sigmoid(a * z + b) and how it was obtained.

    method: "platt" (both parameters), "intercept" (a = 1, only b: the slope came out <= MIN_SLOPE),
    "identity" (too little data; `reason` says why) or "none" (calibration switched off in the config).
    """

    a: float
    b: float
    method: str
    reason: str | None
    rows: int
    positives: int
    iterations: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def _mean_logit_loss(y: np.ndarray, z: np.ndarray, w: np.ndarray) -> float:
    """The fit's objective: weighted mean cross-entropy on the logit scale (unclipped, so the surface is smooth)."""
    return float(np.sum(w * metrics.logit_logloss_terms(z, y)) / max(float(np.sum(w)), _EPS))


def _loss_grad_hess(theta: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray
                    ) -> tuple[float, np.ndarray, np.ndarray]:
    z = x @ theta
    p = metrics.sigmoid(z)
    sw = np.sum(w)
    grad = x.T @ (w * (p - y)) / sw
    hess = (x * (w * p * (1.0 - p))[:, None]).T @ x / sw
    return _mean_logit_loss(y, z, w), grad, hess


def _newton(x: np.ndarray, y: np.ndarray, w: np.ndarray, theta: np.ndarray, max_iter: int, tol: float
            ) -> tuple[np.ndarray, int]:
    """Damped Newton (IRLS) from `theta`: every accepted step lowers the weighted logloss, so the result is
    never worse on the fitting rows than the start (the identity)."""
    loss, grad, hess = _loss_grad_hess(theta, x, y, w)
    for it in range(1, max_iter + 1):
        ridge = 1e-10 * max(1.0, float(np.trace(hess)))
        step = np.linalg.solve(hess + ridge * np.eye(len(theta)), grad)
        t = 1.0
        while t > 1e-6:
            cand = theta - t * step
            c_loss, c_grad, c_hess = _loss_grad_hess(cand, x, y, w)
            if c_loss <= loss + 1e-15:
                break
            t *= 0.5
        else:
            return theta, it  # no decrease along the Newton direction: at the optimum up to float error
        converged = abs(loss - c_loss) < tol and float(np.max(np.abs(t * step))) < 1e-7
        theta, loss, grad, hess = cand, c_loss, c_grad, c_hess
        if converged:
            return theta, it
    return theta, max_iter


def fit_platt(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray | None = None, *,
              min_positives: int = MIN_POSITIVES, max_iter: int = 50, tol: float = 1e-12) -> PlattFit:
    """Fit ctr = sigmoid(a * z + b) by weighted logistic regression of the labels on the logit z.

    Guards: fewer than `min_positives` positives or negatives -> the identity (a=1, b=0) with a logged warning
    and the reason; a slope <= MIN_SLOPE (a net whose logit does not rank the slice) -> a = 1 and only the
    intercept is fitted, so a stays > 0 and the ranking never changes.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (len(y) == len(z) == len(w)):
        raise ValueError(f"fit_platt: labels, logits and weights differ in length ({len(y)}, {len(z)}, {len(w)})")
    keep = np.isfinite(z) & (w > 0)
    y, z, w = y[keep], z[keep], w[keep]
    positives, negatives = int(np.sum(y > 0.5)), int(np.sum(y <= 0.5))
    if min(positives, negatives) < min_positives:
        reason = (f"{positives} positives and {negatives} negatives on {len(y)} validation rows; Platt scaling "
                  f"needs at least {min_positives} of each")
        log.warning("calibration: identity kept: %s", reason)
        return PlattFit(1.0, 0.0, "identity", reason, len(y), positives)
    x = np.stack([z, np.ones_like(z)], axis=1)
    theta, iters = _newton(x, y, w, np.array([1.0, 0.0]), max_iter, tol)
    a, b = float(theta[0]), float(theta[1])
    if math.isfinite(a) and math.isfinite(b) and a > MIN_SLOPE:
        return PlattFit(a, b, "platt", None, len(y), positives, iters)
    # the slope guard: keep a = 1 (ranking untouched) and correct the base rate only
    reason = (f"fitted slope a={a:.4g} <= {MIN_SLOPE}: the logit barely ranks the validation slice; "
              f"only the intercept is fitted (a = 1)")
    log.warning("calibration: %s", reason)
    b, iters_b = _fit_intercept(y, z, w, max_iter, tol)
    return PlattFit(1.0, b, "intercept", reason, len(y), positives, iters + iters_b)


def _fit_intercept(y: np.ndarray, z: np.ndarray, w: np.ndarray, max_iter: int, tol: float) -> tuple[float, int]:
    """argmin_b weighted logloss of sigmoid(z + b), z a fixed offset: 1-D damped Newton (convex)."""
    b, sw = 0.0, float(np.sum(w))
    cur = _mean_logit_loss(y, z, w)
    for it in range(1, max_iter + 1):
        p = metrics.sigmoid(z + b)
        step = float(np.sum(w * (p - y)) / sw) / (float(np.sum(w * p * (1.0 - p)) / sw) + _EPS)
        t = 1.0
        while t > 1e-6 and _mean_logit_loss(y, z + b - t * step, w) > cur + 1e-15:
            t *= 0.5
        nb = b - t * step
        nl = _mean_logit_loss(y, z + nb, w)
        if nl > cur + 1e-15:
            return b, it
        done = abs(cur - nl) < tol and abs(nb - b) < 1e-9
        b, cur = nb, nl
        if done:
            return b, it
    return b, max_iter


def identity(method: str, reason: str, rows: int = 0, positives: int = 0) -> PlattFit:
    """The identity map with the reason it was kept (calibration off, no validation slice)."""
    return PlattFit(1.0, 0.0, method, reason, rows, positives)


def summary(labels: np.ndarray, logits: np.ndarray, a: float, b: float, weights: np.ndarray | None = None,
            log_rate: float = 0.0) -> dict:
    """Calibration (mean predicted / observed CTR) and logloss (common.metrics, as the eval job reports them) of
    the raw logit (before) and of a * z + b + log_rate (after), with the row and positive counts; None where the
    rows cannot define a figure (no clicks)."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    before = metrics.CtrSums().add(metrics.sigmoid(z), y, weights)
    after = metrics.CtrSums().add(metrics.sigmoid(a * z + b + log_rate), y, weights)
    return {"calibration_before": before.calibration, "calibration_after": after.calibration,
            "logloss_before": before.logloss, "logloss_after": after.logloss,
            "rows": int(len(y)), "positives": int(np.sum(y > 0.5))}


def log_rate(rate: float) -> float:
    """log(r) of a negative sampling rate r in (0, 1]: the logit shift that undoes the sampling."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"negative_sampling_rate must be in (0, 1], got {rate}")
    return math.log(rate)


def corrected_ctr(q: np.ndarray, rate: float) -> np.ndarray:
    """p = q / (q + (1 - q) / r): the production CTR of a score q calibrated on data whose negatives were kept
    with probability r (the closed form of logit + log r, for tests and readers)."""
    q = np.asarray(q, dtype=np.float64)
    return q / (q + (1.0 - q) / rate)


# ---------------------------------------------------------------------------------------------- in the graph


class TowerCalibration(tf.Module):
    """One tower's served logit: a * z + b + log(r). a, b are non-trainable variables (checkpointed and
    exported with the tower); r is the data's negative sampling rate, a constant of the spec."""

    def __init__(self, tower: str, rate: float = 1.0):
        super().__init__(name=f"{tower}_calibration")
        self.tower, self.rate, self.log_rate = tower, float(rate), log_rate(rate)
        self.a = tf.Variable(1.0, trainable=False, dtype=tf.float32, name=f"calibration_{tower}_a")
        self.b = tf.Variable(0.0, trainable=False, dtype=tf.float32, name=f"calibration_{tower}_b")

    def __call__(self, logit: tf.Tensor) -> tf.Tensor:
        return logit * self.a + (self.b + self.log_rate)

    def set(self, fit: PlattFit) -> None:
        self.a.assign(fit.a)
        self.b.assign(fit.b)

    def params(self) -> dict:
        """What metadata records: the map's parameters as plain floats."""
        return {"a": float(self.a.numpy()), "b": float(self.b.numpy()), "negative_sampling_rate": self.rate,
                "log_rate": self.log_rate}


class Calibration(tf.Module):
    """The per-tower maps of a model (RocketModel.attach_calibration)."""

    def __init__(self, towers: tuple[str, ...], rate: float = 1.0):
        super().__init__(name="calibration")
        self.towers = {t: TowerCalibration(t, rate) for t in towers}
