"""model.sharing: "interval" (the paper's second scheme) shares the first hidden layer between the towers, and only
then: one set of variables, owned by the shared part, outside the hint when hint_into_shared is off, exported
with the light net (no booster variable), checkpointed once; bad configs are errors naming the key."""

from __future__ import annotations

import dataclasses
import json

import feature_specs
import numpy as np
import pytest
import tensorflow as tf
import yaml
from fixtures_data import fixture_batch, tiny_dataset

from feature_specs import derive
from models.config import SHARINGS, ConfigError, LossConfig, ModelConfig, RunConfig, TowerConfig, TrainConfig, \
    config_from_dict, load_config
from models.rocket import build_model
from tests.train_helpers import REPO, fast_config, fixture_data

INTERVAL_KERNEL, INTERVAL_BIAS = "shared/interval_dense/kernel:0", "shared/interval_dense/bias:0"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Light-only (page) and booster-only (u_city, u_age, hist_shop) features: each tower also has its own rows."""
    return tiny_dataset(tmp_path_factory.mktemp("tiny_interval"), 200)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Both towers read every feature (the shipped specs): the two first layers are one kernel and one bias."""
    return fixture_data(tmp_path_factory.mktemp("interval_synth") / "data", rows=1500)


def _cfg(sharing="interval", mode="rocket", **loss) -> RunConfig:
    return RunConfig(model=ModelConfig(sharing=sharing, light=TowerConfig("mlp", (8,)),
                                       booster=TowerConfig("mlp", (8, 4)), loss=LossConfig(hint_clip=None, **loss)),
                     train=TrainConfig(mode=mode, batch_size=32)).validate()


def _first(model, tower):
    return getattr(model, tower).body.layers_[0]


# ------------------------------------------------------------------------------------- (a) one set of variables
def test_interval_shares_one_first_layer_and_bottom_does_not(synthetic):
    spec = feature_specs.load_spec("synthetic")
    model = build_model(spec, synthetic, _cfg("interval"))
    light, booster = _first(model, "light"), _first(model, "booster")
    assert light.kernel is booster.kernel is model.interval_layer.kernel  # literally the same variables
    assert light.bias is booster.bias is model.interval_layer.bias
    names = [v.name for v in model.trainable_variables]
    assert len(names) == len(set(names)) and names.count(INTERVAL_KERNEL) == 1
    assert {INTERVAL_KERNEL, INTERVAL_BIAS} <= {v.name for v in model.shared_variables}
    assert not [v for v in model.light_variables + model.booster_variables if "interval" in v.name]
    assert not [v for v in model.light_variables + model.booster_variables if "dense_0" in v.name]

    x, _ = fixture_batch(spec, synthetic, "eval", batch_size=16)
    before = model(x)
    model.interval_layer.kernel.assign_add(tf.fill(model.interval_layer.kernel.shape, 0.05))
    after = model(x)
    for key in ("light_logit", "booster_logit"):  # one change moves both towers
        assert np.abs(after[key] - before[key]).max() > 1e-4, key

    bottom = build_model(spec, synthetic, _cfg("bottom"))
    assert bottom.interval_layer is None and not [v for v in bottom.variables if "interval" in v.name]
    assert _first(bottom, "light").kernel is not _first(bottom, "booster").kernel
    before = bottom(x)["booster_logit"]
    _first(bottom, "light").kernel.assign_add(tf.fill(_first(bottom, "light").kernel.shape, 0.05))
    tf.debugging.assert_equal(bottom(x)["booster_logit"], before)


def test_tower_only_fields_get_their_own_rows_and_the_shared_layer_one_optimizer(tiny):
    spec, data, batch = tiny
    model = build_model(spec, data, _cfg())
    light, booster = _first(model, "light"), _first(model, "booster")
    assert light.shared is booster.shared is model.interval_layer
    # common fields: user_id, ad_id, ad_cate, ad_price, hist_cate (5 x 8); own: page (8) | u_city, u_age (8+8), hist_shop (4)
    assert tuple(model.interval_layer.kernel.shape) == (40, 8)
    assert tuple(light.own_kernel.shape) == (8, 8) and tuple(booster.own_kernel.shape) == (20, 8)
    assert light.own_kernel.name == "light/mlp/dense_0/own_kernel:0"
    assert booster.own_kernel.name == "booster/mlp/dense_0/own_kernel:0"
    model.compile()
    groups = [[v.name for v in vs] for _, vs in model._optimizer_groups()]
    flat = [n for g in groups for n in g]
    assert len(flat) == len(set(flat)) == len(model.trainable_variables)  # every variable: one optimizer
    owner = {n: opt for opt, vs in model._optimizer_groups() for n in (v.name for v in vs)}
    assert owner[INTERVAL_KERNEL] is owner[INTERVAL_BIAS] is model.light_optimizer  # dense: not the tables' Adagrad
    model.set_tower_trainable("booster", False)  # freezing the booster leaves the shared layer training
    assert model.interval_layer.trainable and INTERVAL_KERNEL in [v.name for v in model.trainable_variables]


def test_single_tower_modes_have_nothing_to_share(tiny):
    spec, data, batch = tiny
    for mode in ("light", "booster"):
        model = build_model(spec, data, _cfg(mode=mode))
        assert model.interval_layer is None
        assert isinstance(_first(model, mode), tf.keras.layers.Dense)
        assert np.isfinite(model(batch[0])[f"{mode}_logit"].numpy()).all()


# ------------------------------------------------------------------------------------- (b) gradients
def _grads(model, batch, loss: str) -> dict[str, float]:
    """|d loss / d v| summed, per variable name (0.0 for no gradient)."""
    x, y = batch
    with tf.GradientTape() as tape:
        losses, _ = model.compute_losses(x, y, training=False)
    grads = tape.gradient(losses[loss], model.trainable_variables)
    return {v.name: 0.0 if g is None else float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g))))
            for v, g in zip(model.trainable_variables, grads)}


def test_gradient_block_keeps_the_hint_out_of_the_booster_which_learns_from_its_own_bce(tiny):
    spec, data, batch = tiny
    model = build_model(spec, data, _cfg(gradient_block=True, hint_into_shared=True))
    hint = _grads(model, batch, "hint")
    booster = [n for n in hint if n.startswith("booster/")]
    assert booster and all(hint[n] == 0.0 for n in booster), hint
    x, y = batch
    with tf.GradientTape(persistent=True) as tape:
        losses, _ = model.compute_losses(x, y, training=False)
    for v in model.booster_variables:  # the booster's whole gradient is its BCE's
        total, own = tape.gradient(losses["total"], v), tape.gradient(losses["booster_bce"], v)
        np.testing.assert_allclose(tf.convert_to_tensor(total), tf.convert_to_tensor(own), atol=1e-7, err_msg=v.name)
        assert float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(own)))) > 0.0, v.name
    for loss in ("light_bce", "booster_bce"):  # the shared layer learns from both towers
        g = _grads(model, batch, loss)
        assert g[INTERVAL_KERNEL] > 0.0 and g[INTERVAL_BIAS] > 0.0, loss
    off = _grads(build_model(spec, data, _cfg(gradient_block=False, hint_into_shared=True)), batch, "hint")
    assert off["booster/mlp/dense_1/kernel:0"] > 0.0 and off["booster/mlp/dense_0/own_kernel:0"] > 0.0


@pytest.mark.parametrize("into_shared", [False, True])
def test_hint_into_shared_switches_the_hint_in_and_out_of_the_shared_layer(tiny, into_shared):
    spec, data, batch = tiny
    model = build_model(spec, data, _cfg(hint_into_shared=into_shared))
    g = _grads(model, batch, "hint")
    shared = [n for n in g if n.startswith("shared/")]
    assert {INTERVAL_KERNEL, INTERVAL_BIAS, "shared/embeddings_d8:0"} <= set(shared)
    assert all((g[n] > 0.0) == into_shared for n in shared), g
    assert g["light/mlp/dense_0/own_kernel:0"] > 0.0 and g["light/logit/kernel:0"] > 0.0  # the light net's own
    assert all(g[n] == 0.0 for n in g if n.startswith("booster/"))
    # the hint's value does not depend on the switch: only where its gradient goes
    losses, _ = model.compute_losses(*batch)
    ref, _ = build_model(spec, data, _cfg(hint_into_shared=not into_shared)).compute_losses(*batch)
    assert float(losses["hint"]) == pytest.approx(float(ref["hint"]), rel=1e-6)


# ------------------------------------------------------------------------------------- scoring paths, checkpoints
def test_split_first_layer_scores_candidates_like_the_tower(tiny):
    spec, data, (x, _) = tiny
    model = build_model(spec, data, _cfg())
    for tower in ("light", "booster"):
        path = model.tower_path(tower)
        assert model.interval_layer in path.shared and INTERVAL_KERNEL in {v.name for v in path.variables}
        calls = []
        split = path.tower.split_logits
        path.tower.split_logits = lambda parts, kernels=None, _f=split: calls.append(len(parts)) or _f(parts, kernels)
        user = {k: v[3:4] for k, v in x.items() if spec.feature(k).side != "item"}
        items = {k: v for k, v in x.items() if spec.feature(k).side == "item"}
        n = int(tf.shape(items["ad_id"])[0])
        want = path.logits({**{k: tf.repeat(v, n, axis=0) for k, v in user.items()}, **items}).numpy()
        got = path.candidate_logits(user, items).numpy()
        assert calls == [2] and np.abs(got - want).max() < 1e-5 and np.std(want) > 0, tower


def test_checkpoint_holds_the_shared_layer_once_and_resumes_its_optimizer_state(tiny, tmp_path):
    spec, data, batch = tiny
    model = build_model(spec, data, _cfg())
    model.compile()
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), verbose=0)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    values = [k for k, _ in tf.train.list_variables(path) if k.endswith("VARIABLE_VALUE")]
    assert len([k for k in values if "interval_layer/kernel" in k]) == 1, values
    again = build_model(spec, data, _cfg())
    again.compile()
    tf.train.Checkpoint(model=again).read(path).assert_existing_objects_matched()
    for key, value in model(batch[0]).items():
        np.testing.assert_allclose(again(batch[0])[key], value, atol=1e-6)
    for m in (model, again):  # same accumulators restored: the next step moves the shared layer identically
        m.train_step(batch)
    np.testing.assert_allclose(again.interval_layer.kernel.numpy(), model.interval_layer.kernel.numpy(), atol=1e-6)


# ------------------------------------------------------------------------------------- (c) a training run, its export
def test_an_interval_run_trains_and_exports_a_light_net_without_booster_variables(synthetic, tmp_path):
    from models.run import load_run
    from models.train import train
    from serving.export import exported_variable_names, read_eval_examples

    base = fast_config("rocket", epochs=1)
    model_cfg = dataclasses.replace(base.model, sharing="interval",
                                    booster=dataclasses.replace(base.model.booster, hidden=(16, 16)))
    run = train(dataclasses.replace(base, model=model_cfg).validate(), synthetic, tmp_path / "run", verbose=0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"light", "booster"}
    assert all(res["auc"] > 0.55 for res in metrics["eval"].values()), metrics["eval"]  # planted signal; chance 0.5

    loaded = load_run(run)
    assert loaded.model.interval_layer is not None
    light = run / "towers" / "light"
    names = exported_variable_names(light)
    assert INTERVAL_KERNEL.split(":")[0] in names and not [n for n in names if "booster" in n], names
    booster = {v.name.split(":")[0] for v in loaded.model.booster_variables}
    assert booster and not booster & set(names)

    spec, model = loaded.spec, loaded.model
    examples = read_eval_examples(loaded.data_dir, 24)
    x = derive.to_model_inputs(spec, tf.io.parse_example(tf.constant(examples),
                                                        derive.parse_spec(spec, features_only=True)))
    want = model.light_logits(x).numpy()
    saved = tf.saved_model.load(str(light))
    assert np.abs(saved.signatures["serving_default"](examples=tf.constant(examples))["logit"].numpy()
                  - want).max() < 1e-5
    assert np.abs(saved.signatures["predict_raw"](**x)["logit"].numpy() - want).max() < 1e-5
    user = set(derive.serving_input_specs(spec, sides=("user", "context"), batch=1))
    for row in (0, 9):
        got = saved.signatures["score_candidates"](**{k: (v[row:row + 1] if k in user else v) for k, v in x.items()})
        same = {k: (tf.repeat(v[row:row + 1], len(examples), axis=0) if k in user else v) for k, v in x.items()}
        assert np.abs(got["logit"].numpy() - model.light_logits(same).numpy()).max() < 1e-5


# ------------------------------------------------------------------------------------- (d) config errors
@pytest.mark.parametrize("model,match", [
    ({"sharing": "middle"}, r"model\.sharing: 'middle' is not one of bottom, interval"),
    ({"sharing": "interval", "light": {"hidden": [64]}, "booster": {"hidden": [32, 16]}},
     r"model\.light\.hidden / model\.booster\.hidden"),
    ({"sharing": "interval", "light": {"hidden": []}, "booster": {"hidden": [32]}},
     r"model\.light\.hidden / model\.booster\.hidden"),
    ({"sharing": "interval", "light": {"kind": "lr", "hidden": [64]}, "booster": {"hidden": [64]}},
     r"model\.light\.kind"),
    ({"sharing": "interval", "light": {"hidden": [64]}, "booster": {"kind": "dcn", "hidden": [64]}},
     r"model\.booster\.kind"),
    ({"sharing": "interval", "share_embeddings": False, "light": {"hidden": [64]}, "booster": {"hidden": [64]}},
     r"model\.share_embeddings"),
])
def test_bad_sharing_configs_are_errors_naming_the_key(model, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"model": model})


def test_every_config_with_a_rocket_experiment_has_a_valid_interval_one():
    assert SHARINGS == ("bottom", "interval") and ModelConfig().sharing == "bottom"
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if "rocket" not in (yaml.safe_load(path.read_text()).get("experiments") or {}):
            continue
        cfg, base = load_config(path, "interval_sharing"), load_config(path)
        assert cfg.model.sharing == "interval" and cfg.train.mode == "rocket", path
        assert cfg.model.light == base.model.light, path  # the served net is unchanged
        assert cfg.model.booster.hidden[0] == base.model.light.hidden[0], path
