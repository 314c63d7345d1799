"""models.saved: the light export reproduces the in-memory light logits through all three signatures and
carries no booster variable; the booster export carries them."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from fixtures_data import fixture_batch, synthetic_frame, tiny_spec, write_fixture_dataset

from feature_specs import artifacts, derive, packed
from models.config import ModelConfig, RunConfig, TowerConfig, TrainConfig
from models.rocket import build_model
from models.saved import save_tower, tower_module


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_saved")
    spec = tiny_spec(d)
    data = write_fixture_dataset(spec, synthetic_frame(spec, 200, 0), d / "data")
    cfg = RunConfig(model=ModelConfig(light=TowerConfig("fm"),
                                      booster=TowerConfig("din", (16,), attention_hidden=(8,))))
    model = build_model(spec, data, cfg)
    model.compile()
    model.fit(tf.data.Dataset.from_tensors(fixture_batch(spec, data, batch_size=32)).repeat(2), verbose=0)
    paths = {t: save_tower(model, t, d / "export" / t) for t in ("light", "booster")}
    return spec, data, model, paths


def _eval_batch(spec, data, n=16):
    raw = next(iter(tf.data.TFRecordDataset(artifacts.list_shards(data, "eval"), compression_type="GZIP").batch(n)))
    return raw, derive.to_model_inputs(spec, tf.io.parse_example(raw, derive.parse_spec(spec)))


@pytest.mark.parametrize("tower", ["light", "booster"])
def test_export_matches_in_memory_logits_through_every_signature(exported, tower):
    spec, data, model, paths = exported
    loaded = tf.saved_model.load(str(paths[tower]))
    assert set(loaded.signatures) == {"serving_default", "predict_raw", "score_candidates", "score_packed"}
    raw, x = _eval_batch(spec, data)
    want = (model.light_logits(x) if tower == "light" else model.booster_logits(x)).numpy()
    assert np.abs(want - model(x)[f"{tower}_logit"].numpy()).max() < 1e-5
    got = loaded.signatures["serving_default"](examples=raw)
    assert np.abs(got["logit"].numpy() - want).max() < 1e-5
    np.testing.assert_allclose(got["ctr"].numpy(), tf.sigmoid(want).numpy(), atol=1e-6)
    got = loaded.signatures["predict_raw"](**x)
    assert np.abs(got["logit"].numpy() - want).max() < 1e-5
    user = {k: v[:1] for k, v in x.items() if spec.feature(k).side != "item"}
    items = {k: v for k, v in x.items() if spec.feature(k).side == "item"}
    n = int(tf.shape(items["ad_id"])[0])
    want_c = (model.tower_path(tower).logits({**{k: tf.repeat(v, n, axis=0) for k, v in user.items()}, **items}))
    got = loaded.signatures["score_candidates"](**user, **items)
    assert got["logit"].shape == (n,) and np.abs(got["logit"].numpy() - want_c.numpy()).max() < 1e-5
    # the lean path: the same features packed one tensor per side and dtype (hashed, bucketized, max-pooled and
    # per-tower features included; the fm light tower and the din booster take the broadcast path)
    packed_x = packed.pack(packed.packed_layout(spec), {k: v.numpy() for k, v in user.items()},
                           {k: v.numpy() for k, v in items.items()})
    got = loaded.signatures["score_packed"](**{k: tf.constant(v) for k, v in packed_x.items()})
    assert got["logit"].shape == (n,) and np.abs(got["logit"].numpy() - want_c.numpy()).max() < 1e-5


def test_serving_default_ignores_label_and_extra_keys(exported):
    spec, data, model, paths = exported
    loaded = tf.saved_model.load(str(paths["light"]))
    ex = tf.train.Example()
    ex.features.feature["user_id"].bytes_list.value.append(b"never-seen")
    ex.features.feature["clk"].float_list.value.append(1.0)
    ex.features.feature["unrelated"].int64_list.value.append(7)
    out = loaded.signatures["serving_default"](examples=tf.constant([ex.SerializeToString()]))
    assert out["logit"].shape == (1,) and np.isfinite(out["logit"].numpy()).all()


def test_light_export_has_no_booster_variable(exported):
    spec, data, model, paths = exported
    light = tf.saved_model.load(str(paths["light"]))
    booster = tf.saved_model.load(str(paths["booster"]))
    light_names = {v.name for v in light.tower_variables}
    booster_names = {v.name for v in booster.tower_variables}
    assert light_names == {v.name for v in model.tower_path("light").variables}
    assert light_names and not [n for n in light_names if n.startswith("booster/")]
    assert {v.name for v in model.booster_variables} <= booster_names
    assert not [n for n in booster_names if n.startswith("light/")]
    # the checkpoint itself: the light one is smaller and holds exactly the light path's shapes
    ckpt = dict(tf.train.list_variables(str(paths["light"] / "variables" / "variables")))
    shapes = sorted(tuple(s) for k, s in ckpt.items() if k.startswith("tower_variables/"))
    assert shapes == sorted(tuple(v.shape) for v in model.tower_path("light").variables)
    booster_only_shapes = {tuple(v.shape) for v in model.booster_variables} - {
        tuple(v.shape) for v in model.tower_path("light").variables}
    assert booster_only_shapes and not booster_only_shapes & set(shapes)


def test_tower_module_rejects_unknown_tower(exported):
    with pytest.raises(ValueError, match="tower"):
        tower_module(exported[2], "medium")


def test_light_only_model_exports(tmp_path):
    spec = tiny_spec(tmp_path)
    data = write_fixture_dataset(spec, synthetic_frame(spec, 80, 2), tmp_path / "data")
    model = build_model(spec, data, RunConfig(model=ModelConfig(light=TowerConfig("lr")),
                                              train=TrainConfig(mode="light")))
    path = save_tower(model, "light", tmp_path / "light")
    raw, x = _eval_batch(spec, data, 8)
    got = tf.saved_model.load(str(path)).signatures["serving_default"](examples=raw)["logit"]
    assert np.abs(got.numpy() - model.light_logits(x).numpy()).max() < 1e-5


def test_light_export_carries_only_the_light_lookup_tables(exported):
    spec, _, _, paths = exported
    light = tf.saved_model.load(str(paths["light"]))
    booster = tf.saved_model.load(str(paths["booster"]))
    # light reads the user_id / ad_id / ad_cate vocabularies; the booster also u_city and hist_shop
    assert len(light.lookup_tables) == 3 and len(booster.lookup_tables) == 5


def test_kd_teacher_from_a_booster_export(exported):
    spec, data, model, paths = exported
    student = build_model(spec, data, RunConfig(model=ModelConfig(light=TowerConfig("lr")),
                                                train=TrainConfig(mode="kd")), teacher=str(paths["booster"]))
    _, x = _eval_batch(spec, data)
    y = tf.zeros(tf.shape(x["user_id"])[0])
    _, out = student.compute_losses(x, y)
    assert np.abs(out["teacher_logit"].numpy() - model.booster_logits(x).numpy()).max() < 1e-5
