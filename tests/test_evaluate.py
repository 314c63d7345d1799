"""The eval Beam job on a fixture dataset: its AUC / GAUC / logloss / calibration equal direct numpy / pandas
computations on the same records, slices and rejections are counted, and the report files are written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import eval_fixtures as fx
from common import metrics
from pipeline.evaluate.model_source import ModelResolveError, resolve_model
from pipeline.evaluate.eval_job import evaluate
from test_metrics import brute_auc

A, B = 1.5, -1.0  # the candidate scores logit = A * x + B


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One run: weighted data with a bad-label record and a record without a user, sliced by pid, with a
    constant-score baseline and a gate. logit_step=0 keys the AUC on exact float32 logits."""
    root = tmp_path_factory.mktemp("eval")
    df = fx.frame(rows=400, users=25, seed=0)
    no_user = fx.example({"clk": 1.0, "user_id": "", "pid": "p2", "x": 0.3, "w": 1.0}, weighted=True)
    bad_label = fx.example({"clk": 2.0, "user_id": "u3", "pid": "p1", "x": 0.1, "w": 1.0}, weighted=True)
    data = fx.write_data(root / "data", df, weighted=True, extra_records=[no_user, bad_label])
    model = fx.save_linear(root / "export" / "7", A, B)
    base = fx.save_linear(root / "const" / "1", 0.0, -0.5)
    out = evaluate(model, data, root / "eval", slice_feature="pid", baseline=base, min_gauc_lift=0.01, logit_step=0.0)
    doc = json.loads((out / "metrics.json").read_text())
    # the direct reference sees the same accepted records: df plus the user-less impression
    ref = pd.concat([df, pd.DataFrame([{"clk": 1.0, "user_id": "", "pid": "p2", "x": 0.3, "w": 1.0}])],
                    ignore_index=True)
    ref["w"] = ref.w.astype(np.float32).astype(np.float64)  # as stored in the Example
    ref["logit"], ref["ctr"] = fx.expected_scores(ref, A, B)
    return out, doc, ref


def candidate(doc):
    return doc["models"]["export/7"]


def test_global_auc_equals_brute_force(job):
    _, doc, ref = job
    m = candidate(doc)["metrics"]
    assert m["auc"] == pytest.approx(brute_auc(ref.logit.to_numpy(), ref.clk.to_numpy(), ref.w.to_numpy()), abs=1e-12)
    assert m["auc_max_bucket_error"] == 0.0  # exact keys
    assert m["score_buckets"] == ref.x.nunique()


def test_gauc_equals_direct_pandas(job):
    _, doc, ref = job
    users = ref[ref.user_id != ""]
    num = den = 0.0
    used = imps = 0
    for _, u in users.groupby("user_id"):
        a = brute_auc(u.logit.to_numpy(), u.clk.to_numpy(), u.w.to_numpy())
        if a is not None:
            num, den, used, imps = num + u.w.sum() * a, den + u.w.sum(), used + 1, imps + len(u)
    m = candidate(doc)["metrics"]
    assert m["gauc"] == pytest.approx(num / den, abs=1e-12)
    assert (m["users_total"], m["users_used"], m["impressions_used"]) == (users.user_id.nunique(), used, imps)
    assert m["users_used"] < m["users_total"]  # the fixture has single-class users
    assert m["impressions_no_group"] == 1
    assert sum(candidate(doc)["curves"]["user_auc_hist"]) == used


def test_logloss_calibration_and_counts_equal_direct(job):
    _, doc, ref = job
    m = candidate(doc)["metrics"]
    w, y, p = ref.w.to_numpy(), ref.clk.to_numpy(), ref.ctr.to_numpy()
    assert m["impressions"] == len(ref) and m["weight"] == pytest.approx(w.sum())
    assert m["logloss"] == pytest.approx(metrics.logloss(p, y, w), rel=1e-6)
    assert m["ctr_observed"] == pytest.approx(np.sum(w * y) / w.sum())
    assert m["calibration"] == pytest.approx(np.sum(w * p) / np.sum(w * y), rel=1e-6)
    rel = candidate(doc)["curves"]["reliability"]
    direct = metrics.reliability_table(ref.logit.to_numpy(), y, w, n_bins=10)  # same order, same bins
    assert [r["weight"] for r in rel] == pytest.approx([r.weight for r in direct])
    assert [r["observed"] for r in rel] == pytest.approx([r.observed for r in direct])


def test_slices_match_direct_subsets(job):
    _, doc, ref = job
    slices = candidate(doc)["slices"]
    assert sorted(slices) == ["pid=p1", "pid=p2", "pid=p3"]
    for pid, sub in ref.groupby("pid"):
        s = slices[f"pid={pid}"]
        assert s["impressions"] == len(sub)
        assert s["auc"] == pytest.approx(brute_auc(sub.logit.to_numpy(), sub.clk.to_numpy(), sub.w.to_numpy()))
        assert s["gauc"] == pytest.approx(metrics.gauc(sub.logit[sub.user_id != ""], sub.clk[sub.user_id != ""],
                                                       sub.user_id[sub.user_id != ""],
                                                       sub.w[sub.user_id != ""]).gauc)


def test_rejected_records_are_counted_not_lost(job):
    _, doc, _ = job
    assert doc["rejected"] == {"<data>": {"label 'clk' not 0/1": 1}}


def test_baseline_scored_in_same_job_and_gate_passes(job):
    _, doc, _ = job
    base = doc["models"]["const/1"]
    assert base["role"] == "baseline" and base["metrics"]["gauc"] == pytest.approx(0.5)
    assert base["metrics"]["auc"] == pytest.approx(0.5) and base["metrics"]["auc_max_bucket_error"] == 0.0
    g = doc["gate"]
    assert g["passed"] and g["lift"] == pytest.approx(candidate(doc)["metrics"]["gauc"] - 0.5)


def test_report_and_plots_written(job):
    out, doc, _ = job
    report = (out / "report.md").read_text()
    for png in ("roc.png", "calibration.png", "user_auc_hist.png"):
        assert (out / png).stat().st_size > 1000 and f"({png})" in report
    assert "PASSED" in report and "pid=p2" in report
    assert not (out / "_parts").exists()
    assert doc["spec"] == "evaltiny" and doc["shards"] == 2 and doc["settings"]["runner"] == "FnApiRunner"


def test_default_buckets_stay_within_reported_bound(tmp_path):
    """The default logit bucketing on continuous scores: AUC within auc_max_bucket_error of the exact one;
    also an eval split with no records gives undefined metrics rather than a crash."""
    rng = np.random.default_rng(5)
    df = fx.frame(rows=150, users=10, seed=5)
    df["x"] = rng.normal(size=len(df))  # continuous: no exact ties
    data = fx.write_data(tmp_path / "data", df, shards=1)
    empty = fx.write_data(tmp_path / "empty", df.iloc[:0], shards=1)
    model = fx.save_linear(tmp_path / "m" / "1", A, B)
    doc = json.loads((evaluate(model, data, tmp_path / "e") / "metrics.json").read_text())
    logit, _ = fx.expected_scores(df, A, B)
    m = doc["models"]["m/1"]["metrics"]
    assert abs(m["auc"] - metrics.auc(logit, df.clk)) <= m["auc_max_bucket_error"] + 1e-12
    assert m["auc_max_bucket_error"] < 1e-3
    e = json.loads((evaluate(model, empty, tmp_path / "e0") / "metrics.json").read_text())["models"]["m/1"]
    assert e["metrics"]["impressions"] == 0 and e["metrics"]["auc"] is None and e["metrics"]["gauc"] is None


def test_bad_arguments_fail_before_running(tmp_path):
    data = fx.write_data(tmp_path / "data", fx.frame(rows=10, users=3), shards=1)
    model = fx.save_linear(tmp_path / "m" / "1", A, B)
    with pytest.raises(ValueError, match="--slice 'x'"):
        evaluate(model, data, tmp_path / "e", slice_feature="x")
    with pytest.raises(ValueError, match="needs --baseline"):
        evaluate(model, data, tmp_path / "e", min_gauc_lift=0.1)
    with pytest.raises(ModelResolveError, match="expected a SavedModel"):
        resolve_model(tmp_path)
    with pytest.raises(ValueError, match="no train shards"):
        evaluate(model, data, tmp_path / "e", split="train")


def test_end_to_end_on_the_synthetic_spec_layout(tmp_path, synthetic_spec):
    """The shared fixture writer's layout (the real record keys of the simulator's spec), scored by a SavedModel
    that parses with feature_specs.derive exactly like the exported towers; metrics equal a direct computation."""
    import tensorflow as tf
    from feature_specs import artifacts, derive
    from fixtures_data import synthetic_frame, write_fixture_dataset

    spec = synthetic_spec
    data = write_fixture_dataset(spec, synthetic_frame(spec, 400, seed=2), tmp_path / "data")

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, examples):
            inputs = derive.to_model_inputs(spec, tf.io.parse_example(examples, derive.parse_spec(spec, True)))
            logit = 0.5 * inputs["ad_hist_ctr"] - 0.2 * inputs["ad_price"]
            return {"ctr": tf.sigmoid(logit), "logit": logit}

    m = Scorer()
    tf.saved_model.save(m, str(tmp_path / "m" / "1"), signatures={"serving_default": m.serve.get_concrete_function()})
    doc = json.loads((evaluate(tmp_path / "m" / "1", data, tmp_path / "e", slice_feature="pid", logit_step=0.0)
                      / "metrics.json").read_text())
    got = doc["models"]["m/1"]
    recs = [r.numpy() for r in tf.data.TFRecordDataset(artifacts.list_shards(data, "eval"), compression_type="GZIP")]
    parsed = tf.io.parse_example(recs, derive.parse_spec(spec))
    logit = (0.5 * parsed["ad_hist_ctr"] - 0.2 * parsed["ad_price"]).numpy().astype(np.float64)
    y, users = parsed["clk"].numpy(), parsed["user_id"].numpy()
    assert got["metrics"]["impressions"] == len(recs) > 0 and doc["rejected"] == {}
    assert got["metrics"]["auc"] == pytest.approx(brute_auc(logit, y), abs=1e-12)
    assert got["metrics"]["gauc"] == pytest.approx(metrics.gauc(logit, y, users).gauc, abs=1e-12)
    assert sum(s["impressions"] for s in got["slices"].values()) == len(recs)
