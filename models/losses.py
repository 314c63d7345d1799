"""THE Rocket Launching loss, in one place, with every ablation switch of models.config.LossConfig.

total = BCE(light) + BCE(booster) + w(step) * hint + regularization, where the hint pulls the light logit
towards the booster's. The gradient block (stop_gradient on the booster side of the hint) is what keeps
the weaker light net from dragging the booster down; it is a switch so the ablation can show that.
Everything is a weighted batch mean (weights default to 1, i.e. a plain batch mean).
"""

from __future__ import annotations

import tensorflow as tf

from models.config import HINTS, LossConfig


def weighted_mean(values: tf.Tensor, weights: tf.Tensor | None) -> tf.Tensor:
    if weights is None:
        return tf.reduce_mean(values)
    w = tf.cast(weights, values.dtype)
    return tf.reduce_sum(values * w) / tf.maximum(tf.reduce_sum(w), 1e-12)


def bce(labels: tf.Tensor, logits: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    per = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, logits.dtype), logits=logits)
    return weighted_mean(per, weights)


def hint_weight_at(cfg: LossConfig, step: tf.Tensor | int) -> tf.Tensor:
    """hint_weight ramped linearly from 0 over warmup_steps (full weight from then on)."""
    w = tf.constant(cfg.hint_weight, tf.float32)
    if cfg.warmup_steps <= 0:
        return w
    frac = tf.cast(step, tf.float32) / float(cfg.warmup_steps)
    return w * tf.clip_by_value(frac, 0.0, 1.0)


def hint_target(z_booster: tf.Tensor, cfg: LossConfig) -> tf.Tensor:
    """The booster logit the light net is pulled to: clipped, and gradient-blocked when the switch is on."""
    z = z_booster if cfg.hint_clip is None else tf.clip_by_value(z_booster, -cfg.hint_clip, cfg.hint_clip)
    return tf.stop_gradient(z) if cfg.gradient_block else z


def kd_divergence(z_light: tf.Tensor, z_target: tf.Tensor, temperature: float) -> tf.Tensor:
    """Per-example temperature-softened binary KL(teacher || student), times T^2 (Hinton et al.)."""
    t = float(temperature)
    p_t = tf.sigmoid(z_target / t)
    log_pt, log_1mpt = tf.math.log_sigmoid(z_target / t), tf.math.log_sigmoid(-z_target / t)
    log_ps, log_1mps = tf.math.log_sigmoid(z_light / t), tf.math.log_sigmoid(-z_light / t)
    return (p_t * (log_pt - log_ps) + (1.0 - p_t) * (log_1mpt - log_1mps)) * (t * t)


def hint_loss(z_light: tf.Tensor, z_booster: tf.Tensor, cfg: LossConfig,
              weights: tf.Tensor | None = None) -> tf.Tensor:
    """The hint term alone (mse_logits | kd | mse_logits+kd)."""
    if cfg.hint not in HINTS:
        raise ValueError(f"model.loss.hint: {cfg.hint!r} is not one of {', '.join(HINTS)}")
    target = hint_target(z_booster, cfg)
    per = tf.zeros_like(z_light)
    if cfg.hint in ("mse_logits", "mse_logits+kd"):
        per += tf.square(z_light - target)
    if cfg.hint in ("kd", "mse_logits+kd"):
        per += kd_divergence(z_light, target, cfg.temperature)
    return weighted_mean(per, weights)


def rocket_loss(labels: tf.Tensor, z_light: tf.Tensor | None, z_booster: tf.Tensor | None, cfg: LossConfig,
                step: tf.Tensor | int, weights: tf.Tensor | None = None, z_light_hint: tf.Tensor | None = None,
                *, include_booster_bce: bool = True,
                regularization: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """total, light_bce, booster_bce, hint, hint_weight (+ regularization).

    z_light_hint: the light logit to use inside the hint (hint_into_shared off: computed on stop-gradient
    shared embeddings and, with interval sharing, a stop-gradient shared first layer); defaults to z_light. include_booster_bce=False when z_booster is a frozen teacher
    (kd mode): its BCE is reported but not part of the objective.
    """
    zero = tf.constant(0.0)
    out = {"light_bce": zero, "booster_bce": zero, "hint": zero, "hint_weight": zero}
    total = zero
    if z_light is not None:
        out["light_bce"] = bce(labels, z_light, weights)
        total += out["light_bce"]
    if z_booster is not None:
        out["booster_bce"] = bce(labels, z_booster, weights)
        if include_booster_bce:
            total += out["booster_bce"]
    if z_light is not None and z_booster is not None:
        out["hint"] = hint_loss(z_light if z_light_hint is None else z_light_hint, z_booster, cfg, weights)
        out["hint_weight"] = hint_weight_at(cfg, step)
        total += out["hint_weight"] * out["hint"]
    out["regularization"] = zero if regularization is None else regularization
    out["total"] = total + out["regularization"]
    return out
