"""Each Rocket Launching switch changes the hint's gradients as intended (GradientTape on the hint alone)."""

from __future__ import annotations

import dataclasses

import pytest
import tensorflow as tf
from fixtures_data import tiny_dataset

from models.config import LossConfig, ModelConfig, RunConfig, TowerConfig, TrainConfig
from models.rocket import build_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("tiny_grads"), 200)


def _model(tiny, share: bool = True, **loss):
    """The paper's switches (hint into the shared tables) unless a test flips one: each test isolates one switch."""
    spec, data, _ = tiny
    loss.setdefault("hint_into_shared", True)
    cfg = RunConfig(model=ModelConfig(share_embeddings=share, light=TowerConfig("mlp", (8,)),
                                      booster=TowerConfig("mlp", (16, 8)), loss=LossConfig(hint_clip=None, **loss)))
    return build_model(spec, data, cfg)


def _hint_grads(model, batch) -> dict[str, float]:
    """|d hint / d v| summed, per variable name (0.0 for no gradient)."""
    x, y = batch
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        losses, _ = model.compute_losses(x, y, training=False)
    grads = tape.gradient(losses["hint"], variables)
    return {v.name: 0.0 if g is None else float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g))))
            for v, g in zip(variables, grads)}


def _by_part(grads: dict[str, float], prefix: str) -> list[float]:
    vals = [g for n, g in grads.items() if n.startswith(prefix)]
    assert vals, f"no variables under {prefix}"
    return vals


def test_gradient_block_on_keeps_the_hint_out_of_the_booster(tiny):
    g = _hint_grads(_model(tiny, gradient_block=True), tiny[2])
    assert all(v == 0.0 for v in _by_part(g, "booster/"))  # booster tower and booster-only tables
    assert all(v > 0.0 for n, v in g.items() if n.startswith("light/") and "kernel" in n)
    assert _by_part(g, "shared/")[0] > 0.0


def test_gradient_block_off_lets_the_hint_train_the_booster(tiny):
    g = _hint_grads(_model(tiny, gradient_block=False), tiny[2])
    assert any(v > 0.0 for n, v in g.items() if n.startswith("booster/") and "kernel" in n)
    assert g["booster/embeddings_d8:0"] > 0.0  # the booster-only table (u_city, u_age) too


def test_hint_into_shared_off_trains_only_the_light_tower(tiny):
    g = _hint_grads(_model(tiny, hint_into_shared=False), tiny[2])
    assert all(v == 0.0 for v in _by_part(g, "shared/"))
    assert all(v > 0.0 for n, v in g.items() if n.startswith("light/") and "kernel" in n)
    assert all(v == 0.0 for v in _by_part(g, "booster/"))
    on = _hint_grads(_model(tiny, hint_into_shared=True), tiny[2])
    assert _by_part(on, "shared/")[0] > 0.0


def test_a_kd_student_gets_the_hint_into_its_tables_whatever_hint_into_shared_says(tiny):
    """The switch protects a co-trained booster; a kd student's tables serve no one else. Blocking the hint
    there left two-stage KD exactly as good as the light net alone (measured on the simulator)."""
    spec, data, batch = tiny
    teacher = lambda feats: tf.linspace(-3.0, 3.0, tf.shape(feats["user_id"])[0])  # noqa: E731
    for into_shared in (False, True):
        cfg = RunConfig(model=ModelConfig(light=TowerConfig("mlp", (8,)), booster=TowerConfig("mlp", (16, 8)),
                                          loss=LossConfig(hint_clip=None, hint_into_shared=into_shared)),
                        train=TrainConfig(mode="kd"))
        g = _hint_grads(build_model(spec, data, cfg, teacher=teacher), batch)
        tables = [v for n, v in g.items() if "embeddings" in n]
        assert tables and all(v > 0.0 for v in tables), (into_shared, g)


def test_sharing_off_gives_the_light_net_its_own_tables(tiny):
    model = _model(tiny, share=False)
    assert model.shared_variables == []
    light_tables = [v for v in model.light_variables if "embeddings" in v.name]
    booster_tables = [v for v in model.booster_variables if "embeddings" in v.name]
    assert light_tables and booster_tables
    assert not {id(v) for v in light_tables} & {id(v) for v in booster_tables}
    g = _hint_grads(model, tiny[2])
    assert all(g[v.name] > 0.0 for v in light_tables) and all(g[v.name] == 0.0 for v in booster_tables)
    x, _ = tiny[2]
    before = model(x)["booster_logit"]
    light_tables[0].assign(light_tables[0] + 1.0)  # moving the light copy leaves the booster untouched
    tf.debugging.assert_equal(model(x)["booster_logit"], before)


def test_embedding_gradients_stay_sparse(tiny):
    model = _model(tiny)
    x, y = tiny[2]
    with tf.GradientTape() as tape:
        losses, _ = model.compute_losses(x, y, training=True)
    grads = tape.gradient(losses["total"], model.embedding_variables)
    assert grads and all(isinstance(g, tf.IndexedSlices) for g in grads)


def test_warmup_ramps_the_weight_over_train_steps(tiny):
    spec, data, (x, y) = tiny
    cfg = RunConfig(model=ModelConfig(light=TowerConfig("lr"), booster=TowerConfig("mlp", (8,)),
                                      loss=LossConfig(hint_weight=0.5, warmup_steps=4)),
                    train=TrainConfig(batch_size=32))
    model = build_model(spec, data, cfg)
    model.compile()
    seen = []
    for _ in range(5):
        seen.append(float(model.compute_losses(x, y)[0]["hint_weight"]))
        model.train_step((x, y))
    assert seen == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    assert int(model.hint_step.numpy()) == 5


def test_hint_clip_bounds_the_target_inside_the_model(tiny):
    spec, data, (x, y) = tiny
    model = _model(tiny)
    booster = model.booster.out
    booster.bias.assign([50.0])  # push the booster logits far out
    clipped = dataclasses.replace(model.cfg.model.loss, hint_clip=1.0)
    model.cfg = dataclasses.replace(model.cfg, model=dataclasses.replace(model.cfg.model, loss=clipped))
    losses, out = model.compute_losses(x, y)
    want = tf.reduce_mean(tf.square(out["light_logit"] - tf.clip_by_value(out["booster_logit"], -1.0, 1.0)))
    assert float(losses["hint"]) == pytest.approx(float(want), rel=1e-5)
    assert float(tf.reduce_min(out["booster_logit"])) > 1.0


def test_tower_l2_adds_the_kernel_norm(tiny):
    spec, data, (x, y) = tiny
    cfg = RunConfig(model=ModelConfig(light=TowerConfig("mlp", (8,), l2=0.01), booster=TowerConfig("mlp", (8,))))
    model = build_model(spec, data, cfg)
    losses, _ = model.compute_losses(x, y)
    kernels = [v for v in model.light.trainable_weights if "kernel" in v.name]
    want = 0.01 * sum(float(tf.reduce_sum(tf.square(k))) for k in kernels)
    assert float(losses["regularization"]) == pytest.approx(want, rel=1e-5)
    assert float(losses["total"]) == pytest.approx(float(losses["light_bce"] + losses["booster_bce"]
                                                         + losses["hint_weight"] * losses["hint"]) + want, rel=1e-5)


def test_freezing_a_tower_stops_its_updates_but_not_the_other(tiny):
    spec, data, batch = tiny
    model = _model(tiny)
    model.compile()
    model.set_tower_trainable("booster", False)
    frozen = [v.numpy().copy() for v in model.booster_variables]
    light = [v.numpy().copy() for v in model.light_variables]
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), verbose=0)
    assert all((a == v.numpy()).all() for a, v in zip(frozen, model.booster_variables))
    assert any((a != v.numpy()).any() for a, v in zip(light, model.light_variables))
