"""Calibrated served scores: the Platt fit, the map baked into every export signature, the config switch, old
checkpoints, and negative down-sampling (the Beam step, the end-to-end job, the log(r) correction)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import apache_beam as beam
import feature_specs
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from feature_specs import artifacts, derive
from feature_specs.example_fields import RecordField
from feature_specs.loader import SpecError, load_spec, spec_from_dict, spec_hash
from feature_specs.schema import Feature
from models import calibration
from models.config import ConfigError, load_config
from models.rocket import build_model
from models.run import RunPaths, load_run, write_run_config
from models.train import train
from pipeline.preprocess.record_layout import RecordLayout
from pipeline.preprocess.negative_sampling import SampleNegatives, keep_negative, sampling_seed
from serving.export import export_run, read_eval_examples
from tests.fixtures_data import synthetic_frame, write_fixture_dataset
from tests.train_helpers import CONFIG, fast_config, fixture_data

SIGNATURES = ("serving_default", "predict_raw", "score_candidates")


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _calibration(labels, logits):
    """Reference figures written out here, independent of common.metrics: mean predicted CTR / observed CTR."""
    return float(np.mean(_sigmoid(logits)) / np.mean(labels))


def _logloss(labels, logits):
    p, y = _sigmoid(logits), np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


# ---------------------------------------------------------------------------------------------- the fit
def test_platt_recovers_known_parameters_and_improves_logloss():
    rng = np.random.default_rng(0)
    z = rng.normal(-2.0, 1.5, 200_000)
    y = (rng.random(len(z)) < _sigmoid(0.7 * z - 0.4)).astype(np.float32)  # over-confident, biased logits
    fit = calibration.fit_platt(y, z)
    assert fit.method == "platt" and fit.reason is None
    assert abs(fit.a - 0.7) < 0.02 and abs(fit.b + 0.4) < 0.04
    s = calibration.summary(y, z, fit.a, fit.b)
    assert s["logloss_after"] < s["logloss_before"] - 0.005
    assert abs(s["calibration_after"] - 1.0) < 0.005 < abs(s["calibration_before"] - 1.0)
    assert s["rows"] == len(z) and s["positives"] == int(y.sum())


def test_weights_count_like_repeated_rows():
    rng = np.random.default_rng(1)
    z = rng.normal(-1.0, 1.0, 4000)
    y = (rng.random(len(z)) < _sigmoid(1.3 * z + 0.2)).astype(np.float32)
    w = rng.integers(1, 4, len(z)).astype(np.float64)
    weighted = calibration.fit_platt(y, z, w)
    repeated = calibration.fit_platt(np.repeat(y, w.astype(int)), np.repeat(z, w.astype(int)))
    assert abs(weighted.a - repeated.a) < 1e-6 and abs(weighted.b - repeated.b) < 1e-6


def test_too_few_positives_keeps_the_identity_with_a_reason(caplog):
    z = np.linspace(-3, 3, 1000)
    y = np.zeros(1000)
    y[:29] = 1
    with caplog.at_level("WARNING", logger="rocketctr.calibration"):
        fit = calibration.fit_platt(y, z)
    assert (fit.a, fit.b, fit.method) == (1.0, 0.0, "identity")
    assert "29 positives" in fit.reason and "at least 30" in fit.reason
    assert "identity kept" in caplog.text


def test_the_slope_stays_positive_so_the_ranking_never_changes():
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 1.0, 5000)
    y = (rng.random(len(z)) < _sigmoid(-0.8 * z - 1.0)).astype(np.float32)  # a logit that ranks backwards
    fit = calibration.fit_platt(y, z)
    assert fit.method == "intercept" and fit.a == 1.0 and "slope" in fit.reason
    # the intercept alone matches the base rate: mean predicted == observed at the optimum
    assert abs(_calibration(y, z + fit.b) - 1.0) < 1e-3


def test_sampling_correction_is_the_closed_form():
    q = np.array([0.01, 0.2, 0.5, 0.9])
    r = 0.25
    via_logit = _sigmoid(np.log(q / (1 - q)) + math.log(r))
    np.testing.assert_allclose(calibration.corrected_ctr(q, r), via_logit, rtol=1e-12)
    with pytest.raises(ValueError, match="negative_sampling_rate"):
        calibration.log_rate(0.0)


# ---------------------------------------------------------------------------------------------- config / spec
def test_calibration_switch_is_validated_in_the_config():
    assert load_config(CONFIG).train.calibration == "platt"
    assert load_config(CONFIG, None, {"train": {"calibration": "none"}}).train.calibration == "none"
    with pytest.raises(ConfigError, match="train.calibration: 'isotonic' is not one of platt, none"):
        load_config(CONFIG, None, {"train": {"calibration": "isotonic"}})


def _raw_spec(**top) -> dict:
    return {"name": "t", "format": {"columns": ["clk", "u"]}, "label": {"name": "clk"},
            "split": {"method": "hash_row"}, "features": [{"name": "u", "kind": "categorical", "side": "user"}],
            **top}


@pytest.mark.parametrize("value,message", [(0, "must be in \\(0, 1\\]"), (1.5, "must be in \\(0, 1\\]"),
                                           (-0.1, "must be in \\(0, 1\\]"), ("half", "expected float"),
                                           (True, "expected float, got a boolean")])
def test_spec_rejects_a_bad_sampling_rate(value, message):
    with pytest.raises(SpecError, match=f"top level: key 'negative_sampling_rate': {message}"):
        spec_from_dict(_raw_spec(negative_sampling_rate=value), "s.yaml")


def test_spec_sampling_rate_default_and_hash():
    plain = spec_from_dict(_raw_spec())
    assert plain.negative_sampling_rate == 1.0
    assert spec_hash(spec_from_dict(_raw_spec(negative_sampling_rate=1))) == spec_hash(plain)  # old hashes hold
    assert spec_hash(spec_from_dict(_raw_spec(negative_sampling_rate=0.25))) != spec_hash(plain)
    shipped = [load_spec(p) for p in feature_specs.loader.shipped_specs()]
    assert shipped and all(0.0 < s.negative_sampling_rate <= 1.0 for s in shipped)


# ---------------------------------------------------------------------------------------------- trained runs
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return fixture_data(tmp_path_factory.mktemp("cal_data") / "data")


@pytest.fixture(scope="module")
def platt_run(data_dir, tmp_path_factory) -> Path:
    return train(fast_config("rocket", validation_fraction=0.2, epochs=1), data_dir,
                 tmp_path_factory.mktemp("cal_runs") / "platt", verbose=0)


@pytest.fixture(scope="module")
def exported(platt_run, tmp_path_factory) -> Path:
    return export_run(platt_run, tmp_path_factory.mktemp("cal_models"), warmup_rows=4)


def test_the_run_fits_and_records_platt_per_tower(platt_run):
    m = json.loads((platt_run / "metrics.json").read_text())
    loaded = load_run(platt_run)
    for tower in ("light", "booster"):
        c = m["calibration"][tower]
        assert c["method"] == "platt" and c["a"] > 0 and c["negative_sampling_rate"] == 1.0
        v = c["validation"]
        assert v["rows"] > 100 and v["positives"] >= 30
        assert v["logloss_after"] <= v["logloss_before"] + 1e-12  # fitted on this slice: never worse there
        assert abs(v["calibration_after"] - 1.0) < 1e-3  # at the optimum the mean prediction matches
        assert set(c["eval"]) >= {"calibration_before", "calibration_after", "logloss_before", "logloss_after"}
        # the final checkpoint carries the map: load_run (what export uses) restores it
        p = loaded.model.attach_calibration().towers[tower].params()
        assert p["a"] == pytest.approx(c["a"], abs=1e-6) and p["b"] == pytest.approx(c["b"], abs=1e-6)


def _eval_inputs(loaded, n: int = 24):
    examples = read_eval_examples(loaded.data_dir, n)
    parsed = tf.io.parse_example(tf.constant(examples), derive.parse_spec(loaded.spec, features_only=True))
    return examples, derive.to_model_inputs(loaded.spec, parsed)


def _all_signatures(version_dir: Path, examples, x, spec):
    m = tf.saved_model.load(str(version_dir))
    user = set(derive.serving_input_specs(spec, sides=("user", "context"), batch=1))
    return m, {"serving_default": m.signatures["serving_default"](examples=tf.constant(examples)),
               "predict_raw": m.signatures["predict_raw"](**x),
               "score_candidates": m.signatures["score_candidates"](**{k: (v[:1] if k in user else v)
                                                                       for k, v in x.items()})}, user


def test_every_signature_serves_the_calibrated_training_score(platt_run, exported):
    loaded = load_run(platt_run)
    m = json.loads((platt_run / "metrics.json").read_text())["calibration"]["light"]
    examples, x = _eval_inputs(loaded)
    _, outs, user = _all_signatures(exported, examples, x, loaded.spec)
    same_user = {k: (tf.repeat(v[:1], len(examples), axis=0) if k in user else v) for k, v in x.items()}
    for sig in SIGNATURES:
        inputs = same_user if sig == "score_candidates" else x
        raw = loaded.model.light_logits(inputs).numpy()
        want = m["a"] * raw + m["b"]
        out = {k: v.numpy() for k, v in outs[sig].items()}
        assert set(out) == {"ctr", "logit", "logit_uncalibrated"}
        assert np.max(np.abs(out["logit"] - want)) < 1e-5, sig
        assert np.max(np.abs(out["logit"] - loaded.model.calibrated_logits("light", inputs).numpy())) < 1e-5, sig
        assert np.max(np.abs(out["logit_uncalibrated"] - raw)) < 1e-5, sig
        np.testing.assert_allclose(out["ctr"], _sigmoid(out["logit"]), atol=1e-6)
    meta = json.loads((exported / "assets.extra" / "rocketctr.json").read_text())
    assert meta["parity_max_abs_logit_diff"] < 1e-5
    cal = meta["calibration"]
    assert cal["method"] == "platt" and cal["negative_sampling_rate"] == 1.0 and cal["log_rate"] == 0.0
    assert cal["a"] == pytest.approx(m["a"], abs=1e-6) and cal["b"] == pytest.approx(m["b"], abs=1e-6)
    assert meta["spec"]["negative_sampling_rate"] == 1.0


def test_calibration_none_keeps_the_identity(data_dir, tmp_path):
    run = train(fast_config("light", validation_fraction=0.2, calibration="none", max_steps=10), data_dir,
                tmp_path / "none", verbose=0)
    c = json.loads((run / "metrics.json").read_text())["calibration"]["light"]
    assert (c["a"], c["b"], c["method"], c["reason"]) == (1.0, 0.0, "none", "train.calibration is 'none'")
    assert c["validation"]["calibration_after"] == c["validation"]["calibration_before"]
    loaded = load_run(run)
    _, x = _eval_inputs(loaded, 8)
    served = tf.saved_model.load(str(run / "towers" / "light")).signatures["predict_raw"](**x)
    np.testing.assert_array_equal(served["logit"].numpy(), served["logit_uncalibrated"].numpy())
    np.testing.assert_allclose(served["logit"].numpy(), loaded.model.light_logits(x).numpy(), atol=1e-5)


def test_a_checkpoint_without_calibration_restores_as_identity(data_dir, tmp_path):
    """Runs from before calibration (and every periodic checkpoint) have no a/b: the strict restore of
    load_run and --resume still matches every object, and the served map is the identity."""
    spec = load_spec(artifacts.spec_copy_path(data_dir))
    cfg = fast_config("rocket")
    model = build_model(spec, str(data_dir), cfg)
    run = tmp_path / "old"
    write_run_config(run, cfg, data_dir, spec)
    path = tf.train.Checkpoint(model=model).save(str(Path(RunPaths(run).final) / "ckpt"))
    assert not [k for k, _ in tf.train.list_variables(path) if "calibration" in k]
    fresh = build_model(spec, str(data_dir), cfg)
    tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()  # the resume path
    loaded = load_run(run)
    for tower in ("light", "booster"):
        p = loaded.model.attach_calibration().towers[tower].params()
        assert (p["a"], p["b"], p["log_rate"]) == (1.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------- down-sampling
LAYOUT = RecordLayout([RecordField("row", "bytes", False, "feature", "row"),
                       RecordField("clk", "float", False, "label", "clk")],
                      ("row", "clk"), {"row": Feature("row", "categorical", "item", "row")})


def test_sample_negatives_drops_only_train_negatives_at_the_rate():
    records = [(f"n{i}", 0.0) for i in range(4000)] + [(f"p{i}", 1.0) for i in range(300)]
    rate = 0.3
    expected = [r for r in records if r[1] == 1.0 or keep_negative(sampling_seed(5), r, rate)]
    kept_neg = sum(r[1] == 0.0 for r in expected)
    assert abs(kept_neg - rate * 4000) < 4 * math.sqrt(4000 * rate * (1 - rate))  # ~ Binomial(4000, 0.3)
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        out = (p | beam.Create(records)
               | beam.ParDo(SampleNegatives(LAYOUT, rate, 5)).with_outputs(SampleNegatives.COUNTS, main="kept"))
        assert_that(out.kept, equal_to(expected), label="KeptRows")
        assert_that(out[SampleNegatives.COUNTS] | beam.CombinePerKey(sum),
                    equal_to([("sampled_out:train", 4000 - kept_neg), ("negatives_kept:train", kept_neg)]),
                    label="Counts")
    # deterministic, and salted apart from the split's hash of the same key
    assert expected == [r for r in records if r[1] == 1.0 or keep_negative(sampling_seed(5), r, rate)]
    other = [r for r in records if r[1] == 1.0 or keep_negative(sampling_seed(6), r, rate)]
    assert other != expected
    with pytest.raises(ValueError, match="negative_sampling_rate"):
        SampleNegatives(LAYOUT, 0.0, 5)


def _sampled_spec_file(directory: Path, rate: float) -> Path:
    text = (Path(feature_specs.loader.SPEC_DIR) / "synthetic.yaml").read_text()
    p = directory / "synthetic_sampled.yaml"
    p.write_text(text + f"\nnegative_sampling_rate: {rate}\n")
    return p


def test_preprocess_samples_train_negatives_only(tmp_path):
    from pipeline.preprocess.preprocess_job import preprocess
    from pipeline.simulator.click_logs import simulate
    from pipeline.preprocess.train_eval_split import hash_fraction

    rate = 0.25
    sim = simulate(3000, tmp_path / "raw", seed=4)
    spec = load_spec(_sampled_spec_file(tmp_path, rate))
    out = preprocess(spec, [str(f) for f in sim.click_files], str(tmp_path / "data"),
                     beam_args=["--runner=FnApiRunner"])
    frame = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False) for f in sim.click_files])
    is_eval = np.array([hash_fraction(spec.split.seed, u) < spec.split.eval_fraction for u in frame["user_id"]])
    clicks = frame["clk"].astype(float).to_numpy() == 1.0
    m = artifacts.read_manifest(out)
    rows, ns = m["rows"], m["negative_sampling"]
    assert rows["rejected_total"] == 0 and rows["read"] == len(frame)
    assert rows["written"]["eval"] == int(is_eval.sum())  # the eval split is never sampled
    train_neg = int((~is_eval & ~clicks).sum())
    dropped = rows["sampled_out"]["train"]
    assert abs(dropped - (1 - rate) * train_neg) < 4 * math.sqrt(train_neg * rate * (1 - rate))
    assert rows["written"]["train"] == int((~is_eval).sum()) - dropped
    assert ns["negative_sampling_rate"] == rate and ns["negatives_dropped"] == dropped
    assert ns["negatives_kept"] == train_neg - dropped
    assert m["metrics"].get("negatives_dropped", dropped) == dropped  # Beam counter (when the runner reports)
    labels = [float(tf.train.Example.FromString(r.numpy()).features.feature["clk"].float_list.value[0])
              for r in tf.data.TFRecordDataset(artifacts.list_shards(out, "train"), compression_type="GZIP")]
    assert sum(labels) == int((~is_eval & clicks).sum())  # every train positive kept
    assert artifacts.read_stats(out).train_rows == rows["written"]["train"]  # analysed what is trained on
    assert load_spec(artifacts.spec_copy_path(out)).negative_sampling_rate == rate


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sampled")
    spec = load_spec(_sampled_spec_file(d, 0.25))
    data = write_fixture_dataset(spec, synthetic_frame(spec, 3000, 0), d / "data")
    cfg = replace(fast_config("light", validation_fraction=0.2), spec=str(spec.path))  # the data's spec
    return train(cfg, data, d / "run", verbose=0)


def test_sampling_correction_restores_calibration_on_the_unsampled_eval(sampled_run, tmp_path):
    rate = 0.25
    c = json.loads((sampled_run / "metrics.json").read_text())["calibration"]["light"]
    assert c["negative_sampling_rate"] == rate
    base = export_run(sampled_run, tmp_path / "models", warmup_rows=4)
    meta = json.loads((base / "assets.extra" / "rocketctr.json").read_text())
    assert meta["calibration"]["negative_sampling_rate"] == rate
    assert meta["calibration"]["log_rate"] == pytest.approx(math.log(rate))
    loaded = load_run(sampled_run)
    shards = artifacts.list_shards(loaded.data_dir, "eval")
    examples = [r.numpy() for r in tf.data.TFRecordDataset(shards, compression_type="GZIP")]
    labels = np.array([tf.train.Example.FromString(e).features.feature["clk"].float_list.value[0]
                       for e in examples])
    parsed = tf.io.parse_example(tf.constant(examples), derive.parse_spec(loaded.spec, features_only=True))
    x = derive.to_model_inputs(loaded.spec, parsed)
    _, outs, _ = _all_signatures(base, examples, x, loaded.spec)
    out = outs["serving_default"]
    raw = out["logit_uncalibrated"].numpy().astype(np.float64)
    q = _sigmoid(c["a"] * raw + c["b"])  # calibrated on the sampled distribution
    np.testing.assert_allclose(out["ctr"].numpy(), calibration.corrected_ctr(q, rate), atol=1e-5)
    served = abs(_calibration(labels, out["logit"].numpy()) - 1.0)
    uncorrected = abs(_calibration(labels, np.log(q / (1 - q))) - 1.0)
    assert served < uncorrected and uncorrected > 0.3  # sampled at 1/4: without log(r) it overpredicts a lot
    ev = c["eval"]
    assert abs(ev["calibration_after"] - 1.0) < abs(ev["calibration_without_sampling_correction"] - 1.0)


def test_offline_eval_reports_calibration_before_and_after(exported, data_dir, tmp_path):
    from pipeline.evaluate import eval_report
    from pipeline.evaluate.eval_job import evaluate

    out = evaluate(exported, data_dir, tmp_path / "eval", beam_args=["--runner=FnApiRunner"])
    doc = json.loads((out / eval_report.METRICS_FILE).read_text())
    (label, model), = doc["models"].items()
    got = model["metrics"]
    examples = [r.numpy() for r in tf.data.TFRecordDataset(artifacts.list_shards(data_dir, "eval"),
                                                           compression_type="GZIP")]
    labels = np.array([tf.train.Example.FromString(e).features.feature["clk"].float_list.value[0]
                       for e in examples])
    scores = tf.saved_model.load(str(exported)).signatures["serving_default"](examples=tf.constant(examples))
    raw, served = scores["logit_uncalibrated"].numpy(), scores["logit"].numpy()
    assert got["calibration_uncalibrated"] == pytest.approx(_calibration(labels, raw), rel=1e-5)
    assert got["calibration"] == pytest.approx(_calibration(labels, served), rel=1e-5)
    assert got["logloss_uncalibrated"] == pytest.approx(_logloss(labels, raw), rel=1e-5)
    assert got["logloss"] == pytest.approx(_logloss(labels, served), rel=1e-5)
    report = (out / eval_report.REPORT_FILE).read_text()
    assert "## Calibration before / after" in report and eval_report.calibration_table(doc) in report
