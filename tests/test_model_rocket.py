"""RocketModel: every mode builds and trains, every tower scores, names/groups are right, bad input is finite."""

from __future__ import annotations

import dataclasses

import feature_specs
import numpy as np
import pytest
import tensorflow as tf
from fixtures_data import fixture_batch, synthetic_frame, tiny_dataset, tiny_spec, write_fixture_dataset

from models.config import ModelConfig, OptimizerConfig, RunConfig, TowerConfig, TrainConfig
from models.rocket import build_model
from models.towers import build_tower, din_pairs

SMALL = dict(light=TowerConfig("mlp", (8,)), booster=TowerConfig("mlp", (16, 8)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("tiny_rocket"), 240)


def _cfg(mode="rocket", **model) -> RunConfig:
    return RunConfig(model=ModelConfig(**{**SMALL, **model}), train=TrainConfig(mode=mode, batch_size=32))


def _dataset(batch, repeat=3):
    return tf.data.Dataset.from_tensors(batch).repeat(repeat)


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _changed(before, variables) -> bool:
    return any(not np.array_equal(b, v.numpy()) for b, v in zip(before, variables))


def test_variables_are_scoped_and_grouped(tiny):
    spec, data, _ = tiny
    model = build_model(spec, data, _cfg())
    names = [v.name for v in model.trainable_variables]
    assert names and all(n.split("/")[0] in ("shared", "light", "booster") for n in names), names
    groups = model.shared_variables + model.light_variables + model.booster_variables
    assert sorted(v.name for v in groups) == sorted(names)
    assert all(v.name.startswith("light/") for v in model.light_variables)
    assert all(v.name.startswith("booster/") for v in model.booster_variables)
    assert {v.name for v in model.embedding_variables} == {  # one concatenated table per (part, dim)
        "shared/embeddings_d8:0", "light/embeddings_d8:0", "booster/embeddings_d8:0", "booster/embeddings_d4:0"}


def test_rocket_mode_trains_all_parts_with_per_part_optimizers(tiny):
    spec, data, batch = tiny
    cfg = _cfg()
    model = build_model(spec, data, cfg)
    model.compile()
    assert isinstance(model.embedding_optimizer, tf.keras.optimizers.Adagrad)
    assert isinstance(model.light_optimizer, tf.keras.optimizers.Adam)
    before = {p: _values(getattr(model, f"{p}_variables")) for p in ("shared", "light", "booster")}
    hist = model.fit(_dataset(batch), epochs=1, verbose=0)
    for part, vals in before.items():
        assert _changed(vals, getattr(model, f"{part}_variables")), part
    for key in ("loss", "hint", "light_auc", "booster_auc", "light_logloss", "booster_logloss"):
        assert np.isfinite(hist.history[key][-1]), key
    ev = model.evaluate(_dataset(batch, 1), verbose=0, return_dict=True)
    assert set(ev) >= {"light_auc", "booster_auc", "hint"}


@pytest.mark.parametrize("mode,tower", [("light", "light"), ("booster", "booster")])
def test_single_tower_modes_build_only_their_tower(tiny, mode, tower):
    spec, data, batch = tiny
    model = build_model(spec, data, _cfg(mode))
    other = "booster" if tower == "light" else "light"
    assert getattr(model, other) is None and getattr(model, f"{other}_variables") == []
    model.compile()
    before = _values(model.trainable_variables)
    model.fit(_dataset(batch), verbose=0)
    assert _changed(before, model.trainable_variables)
    out = model(batch[0])
    assert set(out) == {f"{tower}_logit"}
    with pytest.raises(ValueError, match="no " + other):
        model.tower_path(other)


def test_kd_mode_trains_the_light_net_against_a_frozen_teacher(tiny):
    spec, data, batch = tiny
    teacher = build_model(spec, data, _cfg("booster"))
    frozen = _values(teacher.trainable_variables)
    student = build_model(spec, data, RunConfig(model=ModelConfig(**SMALL), train=TrainConfig(mode="kd")),
                          teacher=teacher)
    assert student.booster is None
    assert not {id(v) for v in student.variables} & {id(v) for v in teacher.variables}
    student.compile()
    before = _values(student.trainable_variables)
    hist = student.fit(_dataset(batch), verbose=0)
    assert _changed(before, student.trainable_variables)
    assert not _changed(frozen, teacher.trainable_variables)
    assert hist.history["hint"][-1] > 0 and 0.0 <= hist.history["teacher_auc"][-1] <= 1.0
    losses, out = student.compute_losses(*batch)
    np.testing.assert_allclose(out["teacher_logit"], teacher.booster_logits(batch[0]), atol=1e-6)


def test_kd_mode_without_a_teacher_is_an_error(tiny):
    spec, data, _ = tiny
    with pytest.raises(ValueError, match="teacher"):
        build_model(spec, data, RunConfig(model=ModelConfig(**SMALL), train=TrainConfig(mode="kd")))


@pytest.mark.parametrize("light,booster", [("lr", "mlp"), ("fm", "dcn"), ("mlp", "din")])
def test_towers_build_and_give_one_logit_per_example(tiny, light, booster):
    spec, data, (x, _) = tiny
    model = build_model(spec, data, _cfg(light=TowerConfig(light, (8,)),
                                         booster=TowerConfig(booster, (16,), cross_layers=2, cross_low_rank=4,
                                                             attention_hidden=(8,))))
    out = model(x)
    n = int(tf.shape(x["user_id"])[0])
    for key in ("light_logit", "booster_logit"):
        assert out[key].shape == (n,) and np.isfinite(out[key].numpy()).all()
    np.testing.assert_allclose(model.light_logits(x), out["light_logit"], atol=1e-6)
    np.testing.assert_allclose(model.booster_logits(x), out["booster_logit"], atol=1e-6)
    if booster == "dcn":
        assert any("cross" in v.name for v in model.booster_variables)
    if booster == "din":
        assert any("din_hist_cate" in v.name for v in model.booster_variables)


def test_oov_tokens_empty_sequences_and_bad_numbers_score_finitely(tiny):
    spec, data, _ = tiny
    model = build_model(spec, data, _cfg(booster=TowerConfig("din", (8,), attention_hidden=(4,))))
    n = 3
    x = {"user_id": tf.constant(["nobody", "", "x"]), "u_city": tf.constant(["?", "", "mars"]),
         "u_age": tf.constant([np.nan, np.inf, -1e30], tf.float32), "ad_id": tf.constant(["new-ad"] * n),
         "ad_cate": tf.constant(["", "", "zz"]), "ad_price": tf.constant([np.nan, -5.0, 1e30], tf.float32),
         "page": tf.constant(["a", "", "b"]), "hist_cate": tf.constant([["", ""], ["", ""], ["zz", ""]]),
         "hist_shop": tf.constant([[""], [""], [""]])}
    out = model(x)
    for key in ("light_logit", "booster_logit"):
        assert out[key].shape == (n,) and np.isfinite(out[key].numpy()).all(), key


def test_din_pairs_and_a_clear_error_without_them(tiny):
    spec = tiny[0]
    assert din_pairs(spec) == [("hist_cate", "ad_cate")]
    synthetic = feature_specs.load_spec("synthetic")
    assert {("hist_cate", "ad_cate"), ("hist_brand", "ad_brand")} <= set(din_pairs(synthetic))
    flat = dataclasses.replace(spec, features=tuple(f for f in spec.features if f.kind != "sequence"))
    with pytest.raises(ValueError, match="din"):
        build_tower("booster", TowerConfig("din"), flat)


def test_mirrored_strategy_fit(tiny):
    spec, data, batch = tiny
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = build_model(spec, data, _cfg())
        model.compile()
    before = _values(model.shared_variables)
    model.fit(_dataset(batch, 2), verbose=0)
    assert _changed(before, model.shared_variables)


def test_learns_the_planted_signal(tmp_path):
    spec = tiny_spec(tmp_path)
    data = write_fixture_dataset(spec, synthetic_frame(spec, 1500, 3), tmp_path / "data", eval_fraction=0.2)
    cfg = RunConfig(model=ModelConfig(light=TowerConfig("lr"), booster=TowerConfig("mlp", (32, 16))),
                    train=TrainConfig(embedding_optimizer=OptimizerConfig("adagrad", 0.1),
                                      booster_optimizer=OptimizerConfig("adam", 0.01),
                                      light_optimizer=OptimizerConfig("adam", 0.01)))
    model = build_model(spec, data, cfg)
    model.compile()
    x, y = fixture_batch(spec, data, "train", batch_size=2000)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(2000, seed=0).batch(64)
    model.fit(ds, epochs=3, verbose=0)
    ev = model.evaluate(tf.data.Dataset.from_tensors(fixture_batch(spec, data, "eval", 1000)), verbose=0,
                        return_dict=True)
    assert ev["booster_auc"] > 0.6 and ev["light_auc"] > 0.6, ev


def test_checkpoint_round_trip_restores_the_same_logits(tiny, tmp_path):
    spec, data, batch = tiny
    model = build_model(spec, data, _cfg())
    model.compile()
    model.fit(_dataset(batch, 2), verbose=0)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    again = build_model(spec, data, _cfg())
    again.compile()
    tf.train.Checkpoint(model=again).read(path).assert_existing_objects_matched()
    for key, value in model(batch[0]).items():
        np.testing.assert_allclose(again(batch[0])[key], value, atol=1e-6)
    assert int(again.hint_step.numpy()) == int(model.hint_step.numpy()) == 2
