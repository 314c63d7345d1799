"""models.losses on plain tensors: every switch changes the value / gradient the way the paper needs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from models.config import LossConfig
from models.losses import hint_loss, hint_target, hint_weight_at, kd_divergence, rocket_loss

LABELS = tf.constant([1.0, 0.0, 1.0, 0.0])
Z_LIGHT = tf.constant([0.5, -0.2, 1.5, 0.3])
Z_BOOSTER = tf.constant([2.0, -1.0, 9.0, -7.0])


def _grads(cfg: LossConfig) -> tuple[tf.Tensor | None, tf.Tensor | None]:
    zl, zb = tf.Variable(Z_LIGHT), tf.Variable(Z_BOOSTER)
    with tf.GradientTape() as tape:
        h = hint_loss(zl, zb, cfg)
    return tuple(tape.gradient(h, [zl, zb]))


def test_rocket_loss_is_sum_of_parts():
    cfg = LossConfig(hint_weight=0.3, hint_clip=None)
    out = rocket_loss(LABELS, Z_LIGHT, Z_BOOSTER, cfg, step=10)
    bce = tf.keras.losses.BinaryCrossentropy(from_logits=True)
    np.testing.assert_allclose(out["light_bce"], bce(LABELS, Z_LIGHT), rtol=1e-5)
    np.testing.assert_allclose(out["booster_bce"], bce(LABELS, Z_BOOSTER), rtol=1e-5)
    np.testing.assert_allclose(out["hint"], np.mean((Z_LIGHT.numpy() - Z_BOOSTER.numpy()) ** 2), rtol=1e-5)
    np.testing.assert_allclose(out["total"], out["light_bce"] + out["booster_bce"] + 0.3 * out["hint"], rtol=1e-5)
    assert set(out) >= {"total", "light_bce", "booster_bce", "hint", "hint_weight"}


def test_single_tower_and_teacher_losses():
    cfg = LossConfig()
    light = rocket_loss(LABELS, Z_LIGHT, None, cfg, step=0)
    assert float(light["hint"]) == 0.0 and float(light["total"]) == pytest.approx(float(light["light_bce"]))
    kd = rocket_loss(LABELS, Z_LIGHT, Z_BOOSTER, cfg, step=0, include_booster_bce=False)
    assert float(kd["total"]) == pytest.approx(float(kd["light_bce"] + kd["hint_weight"] * kd["hint"]))


def test_gradient_block_switch():
    g_light, g_booster = _grads(LossConfig(gradient_block=True, hint_clip=None))
    assert g_booster is None and float(tf.reduce_sum(tf.abs(g_light))) > 0
    g_light, g_booster = _grads(LossConfig(gradient_block=False, hint_clip=None))
    assert g_booster is not None and float(tf.reduce_sum(tf.abs(g_booster))) > 0
    np.testing.assert_allclose(g_booster, -g_light, rtol=1e-6)  # mse: symmetric pull


def test_warmup_ramps_the_hint_weight():
    cfg = LossConfig(hint_weight=0.4, warmup_steps=100)
    got = [float(hint_weight_at(cfg, s)) for s in (0, 25, 50, 100, 1000)]
    np.testing.assert_allclose(got, [0.0, 0.1, 0.2, 0.4, 0.4], rtol=1e-6)
    assert float(hint_weight_at(dataclasses.replace(cfg, warmup_steps=0), 0)) == pytest.approx(0.4)
    early = rocket_loss(LABELS, Z_LIGHT, Z_BOOSTER, cfg, step=0)
    assert float(early["total"]) == pytest.approx(float(early["light_bce"] + early["booster_bce"]))


def test_hint_clip_bounds_the_target():
    target = hint_target(Z_BOOSTER, LossConfig(hint_clip=3.0)).numpy()
    np.testing.assert_allclose(target, [2.0, -1.0, 3.0, -3.0])
    clipped = float(hint_loss(Z_LIGHT, Z_BOOSTER, LossConfig(hint_clip=3.0)))
    unclipped = float(hint_loss(Z_LIGHT, Z_BOOSTER, LossConfig(hint_clip=None)))
    assert clipped == pytest.approx(np.mean((Z_LIGHT.numpy() - [2.0, -1.0, 3.0, -3.0]) ** 2), rel=1e-5)
    assert clipped < unclipped


def test_kd_hint_differs_from_mse_and_is_a_divergence():
    mse = float(hint_loss(Z_LIGHT, Z_BOOSTER, LossConfig(hint="mse_logits")))
    kd = float(hint_loss(Z_LIGHT, Z_BOOSTER, LossConfig(hint="kd")))
    both = float(hint_loss(Z_LIGHT, Z_BOOSTER, LossConfig(hint="mse_logits+kd")))
    assert kd > 0 and kd != pytest.approx(mse) and both == pytest.approx(mse + kd, rel=1e-5)
    assert float(tf.reduce_max(tf.abs(kd_divergence(Z_LIGHT, Z_LIGHT, 2.0)))) < 1e-6  # zero at agreement
    hot = float(hint_loss(Z_LIGHT, Z_BOOSTER, LossConfig(hint="kd", temperature=1.0)))
    assert hot != pytest.approx(kd)  # the temperature matters


def test_weights_make_a_weighted_mean():
    w = tf.constant([1.0, 0.0, 0.0, 0.0])
    out = rocket_loss(LABELS, Z_LIGHT, Z_BOOSTER, LossConfig(hint_clip=None), step=0, weights=w)
    assert float(out["hint"]) == pytest.approx((0.5 - 2.0) ** 2)


def test_unknown_hint_is_rejected():
    with pytest.raises(ValueError, match="hint"):
        hint_loss(Z_LIGHT, Z_BOOSTER, LossConfig(hint="l1"))
