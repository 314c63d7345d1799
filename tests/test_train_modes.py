"""A seeded short training runs every mode (booster, rocket, light, kd) and leaves a complete run dir."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from models.data import make_dataset
from models.run import load_run
from models.train import train
from tests.train_helpers import fast_config, fixture_data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return fixture_data(tmp_path_factory.mktemp("train_modes") / "data")


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """booster first: it is the kd run's teacher."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for mode in ("booster", "rocket", "light", "kd"):
        extra = {"teacher_run": str(out["booster"])} if mode == "kd" else {}
        out[mode] = train(fast_config(mode, **extra), data_dir, root / mode, verbose=0)
    return out


@pytest.mark.parametrize("mode,towers", [("booster", {"booster"}), ("rocket", {"light", "booster"}),
                                         ("light", {"light"}), ("kd", {"light"})])
def test_mode_writes_sane_metrics_and_towers(runs, mode, towers):
    run = runs[mode]
    m = json.loads((run / "metrics.json").read_text())
    assert m["mode"] == mode and set(m["eval"]) == towers
    for tower, res in m["eval"].items():
        assert res["auc"] > 0.58, (mode, tower, res)  # planted signal; chance is 0.5 (SE ~0.025 at 600 rows)
        assert 0.0 < res["logloss"] < 0.75 and res["rows"] > 100
        assert (run / "towers" / tower / "saved_model.pb").exists()
    assert m["steps"] > 10 and m["examples_per_sec"] > 0 and m["wall_seconds"] >= m["train_seconds"] > 0
    assert set(m["towers"]) == towers
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["train"]["mode"] == mode and cfg["data_dir"] and (run / "spec.yaml").exists()
    assert list((run / "tb" / "train").glob("events.out.tfevents.*"))


def test_load_run_restores_the_final_weights(runs, data_dir):
    """load_run's model scores exactly like the exported light SavedModel (both are the final weights, and the
    final checkpoint's calibration map)."""
    loaded = load_run(runs["rocket"])
    assert loaded.cfg.train.mode == "rocket"
    x, _, _ = next(iter(make_dataset(data_dir, loaded.spec, "eval", 32)))
    ours = loaded.model.calibrated_logits("light", x).numpy()
    exported = tf.saved_model.load(str(runs["rocket"] / "towers" / "light"))
    theirs = exported.signatures["predict_raw"](**x)["logit"].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_load_run_of_a_kd_student_needs_no_teacher(runs):
    loaded = load_run(runs["kd"])
    assert loaded.cfg.train.mode == "kd" and loaded.model.tower_names == ("light",)


def test_tower_metrics_are_weighted_and_say_none_when_undefined():
    from common import metrics
    from models.split_scoring import tower_metrics

    z = np.array([-2.0, 0.5, 1.0, -1.0])
    y = np.array([0.0, 1.0, 0.0, 1.0])
    w = np.array([1.0, 2.0, 1.0, 3.0])
    m = tower_metrics(y, {"light_logit": z}, w)["light"]
    assert m["auc"] == pytest.approx(metrics.auc(z, y, w)) and m["rows"] == 4
    # by hand: the positives 0.5 (w 2) and -1 (w 3) beat the negative at -2 (w 1) and lose to the one at 1 (w 1)
    assert m["auc"] == pytest.approx((2 * 1 + 3 * 1) / (5 * 2))
    p = 1 / (1 + np.exp(-z))
    assert m["logloss"] == pytest.approx(-np.sum(w * (y * np.log(p) + (1 - y) * np.log(1 - p))) / w.sum())
    assert m["mean_ctr"] == pytest.approx(np.sum(w * p) / w.sum())
    one_class = tower_metrics(np.zeros(3), {"booster_logit": np.zeros(3)})["booster"]
    assert one_class["auc"] is None and one_class["logloss"] == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="light tower: 1 of 2 logits are not finite"):
        tower_metrics(np.array([0.0, 1.0]), {"light_logit": np.array([0.0, np.nan])})
