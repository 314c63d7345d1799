"""The eval job's Beam pieces on their own (TestPipeline + assert_that): the per-(model, cut) combines feed the
in-pipeline writer of metrics.json, whose numbers equal the direct numpy definitions; the counters count."""

from __future__ import annotations

import json
import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

import eval_fixtures as fx
from common import metrics
from pipeline.evaluate import eval_report
from pipeline.evaluate.eval_results import WriteEvalMetrics
from pipeline.evaluate.eval_transforms import ALL, COUNTERS, DATA, ComputeMetrics, ParseMeta, Scored
from pipeline.evaluate.model_source import ModelRef

CANDIDATE = ModelRef(label="cand/1", path="/models/cand/1", role="candidate", group="cand")
BASELINE = ModelRef(label="base/1", path="/models/base/1", role="baseline", group="base")
HEADER = {"warnings": ["w"], "spec": "evaltiny", "created": None, "settings": {"logit_step": 0.0}}


def rows(n: int = 60, seed: int = 0) -> list[tuple[float, float, float, str]]:
    """(logit, label, weight, user) with ties, weights and single-class users."""
    rng = np.random.default_rng(seed)
    logit = np.round(rng.normal(size=n), 1)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    weight = np.round(rng.uniform(0.5, 2.0, size=n), 2)
    users = [f"u{u}" for u in rng.integers(0, 6, size=n)]
    return list(zip(logit.tolist(), label.tolist(), weight.tolist(), users))


def scored(data, model: str = "cand/1") -> list:
    return [((model, ALL), Scored(z, 1 / (1 + math.exp(-z)), y, w, u)) for z, y, w, u in data]


def run_writer(tmp_path, data, rejected, refs=(CANDIDATE, BASELINE), gated=True, lift=0.0):
    out = tmp_path / "eval"
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        cuts = p | "Scored" >> beam.Create(scored(data)) | ComputeMetrics(0.0, 4)
        counts = p | "Rejected" >> beam.Create(rejected)
        docs = (cuts, counts) | WriteEvalMetrics(list(refs), str(out), HEADER, gated=gated, min_gauc_lift=lift)
        assert_that(docs | beam.Map(lambda d: (sorted(d["models"]), d["rejected"], d["created"] is not None)),
                    equal_to([(sorted(r.label for r in refs), {r["model"]: {r["reason"]: r["count"]}
                                                              for r in rejected}, True)]))
    return out


def test_metrics_doc_written_in_pipeline_equals_direct_numbers(tmp_path):
    data = rows()
    out = run_writer(tmp_path, data, [{"model": DATA, "reason": "label 'clk' not 0/1", "count": 2}])
    assert sorted(p.name for p in out.iterdir()) == [eval_report.METRICS_FILE]  # no temporary left behind
    doc = eval_report.read_metrics(out)
    z, y, w, u = (np.array(c) for c in zip(*data))
    m = doc["models"]["cand/1"]["metrics"]
    assert m["auc"] == pytest.approx(metrics.auc(z, y, w), abs=1e-12)
    assert m["gauc"] == pytest.approx(metrics.gauc(z, y, u, w).gauc, abs=1e-12)
    assert m["logloss"] == pytest.approx(metrics.logloss(1 / (1 + np.exp(-z)), y, w), rel=1e-9)
    assert m["impressions"] == len(data) and doc["rejected"] == {DATA: {"label 'clk' not 0/1": 2}}
    # the driver's header is kept in its order, "created" is stamped at write time
    assert list(doc)[:4] == ["kind", "version", "models", "rejected"] and list(doc)[4:8] == list(HEADER)
    assert doc["warnings"] == ["w"] and doc["created"]
    # the baseline has no rows: undefined metrics, and a gate that refuses rather than crashes
    assert doc["models"]["base/1"]["metrics"]["impressions"] == 0
    assert doc["gate"]["passed"] is False and "GAUC undefined" in doc["gate"]["reason"]


def test_no_rows_still_writes_a_document(tmp_path):
    out = run_writer(tmp_path, [], [], refs=(CANDIDATE,), gated=False)
    doc = json.loads((out / eval_report.METRICS_FILE).read_text())
    assert doc["models"]["cand/1"]["metrics"]["auc"] is None and "gate" not in doc


def test_parse_meta_counts_parsed_and_rejected_examples():
    good = [fx.example({"clk": float(i % 2), "user_id": f"u{i}", "pid": "p1", "x": 0.1 * i, "w": 1.0},
                       weighted=True) for i in range(5)]
    bad = fx.example({"clk": 3.0, "user_id": "u9", "pid": "p1", "x": 0.0, "w": 1.0}, weighted=True)
    p = test_pipeline.TestPipeline(runner="FnApiRunner")
    out = (p | beam.Create(good + [bad])
           | beam.ParDo(ParseMeta("clk", "user_id", "w", "pid")).with_outputs(ParseMeta.REJECTED, main="ok"))
    assert_that(out.ok | beam.Map(lambda kv: kv[0].group), equal_to([f"u{i}" for i in range(5)]), label="ok")
    assert_that(out[ParseMeta.REJECTED], equal_to([(DATA, "label 'clk' not 0/1")]), label="rejected")
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace(COUNTERS))["counters"]}
    assert counters == {"examples_parsed": 5, "examples_rejected": 1}


def test_models_on_a_url_are_resolved_and_scored_without_pathlib(tmp_path):
    """A model on TensorFlow's in-memory ram:// file system (a stand-in for gs://; the in-process runner shares
    it) scores exactly like the same model on disk: nothing folds or stats the URL with pathlib."""
    from pipeline.evaluate.eval_job import evaluate
    from pipeline.evaluate.model_source import resolve_model

    data = fx.write_data(tmp_path / "data", fx.frame(rows=80, users=6), shards=1)
    url = f"ram://evaltest-{tmp_path.name}/base/4"
    fx.save_linear(url, 1.5, -1.0)
    (ref,) = resolve_model(url)
    assert (ref.path, ref.label) == (url, "base/4")
    local = fx.save_linear(tmp_path / "base" / "4", 1.5, -1.0)
    # one example per model call: TF's float32 kernels may round a row differently inside a different batch
    docs = [eval_report.read_metrics(evaluate(m, data, tmp_path / f"e{i}", batch_size=1,
                                              beam_args=["--runner=FnApiRunner"]))
            for i, m in enumerate((url, local))]
    assert docs[0]["models"]["base/4"]["path"] == url
    assert docs[0]["models"]["base/4"]["metrics"] == docs[1]["models"]["base/4"]["metrics"]
