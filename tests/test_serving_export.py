"""`rocketctr export`: layout, no booster variable, parity with the training model, atomic publication,
and a version exported while the server runs gets served.

The run is built without training (models.rocket.build_model + a final checkpoint): export and parity do not
depend on the weights being good, only on them being the training model's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import feature_specs
from feature_specs import derive
from fixtures_data import synthetic_frame, write_fixture_dataset
from models.config import config_from_dict
from serving import export as export_mod
from common.versions import next_version
from serving.export import ExportError, export_run, exported_variable_names, read_eval_examples
from serving.server import serve
from serving.tensors import fill_proto, to_numpy
from serving.warmup import read_warmup


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from models.rocket import build_model
    from models.run import RunPaths, write_run_config

    root = tmp_path_factory.mktemp("export")
    spec = feature_specs.load_spec("synthetic")
    data = write_fixture_dataset(spec, synthetic_frame(spec, 160, seed=0), root / "data")
    cfg = config_from_dict({"model": {"light": {"kind": "mlp", "hidden": [8]},
                                      "booster": {"kind": "mlp", "hidden": [16]}}})
    model = build_model(spec, str(data), cfg)
    run = root / "run"
    write_run_config(run, cfg, data, spec)
    tf.train.Checkpoint(model=model).save(str(Path(RunPaths(run).final) / "ckpt"))
    (run / "metrics.json").write_text(json.dumps({"light": {"auc": 0.5}}))
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("model_base")
    return export_run(run_dir, base, warmup_rows=6)


@pytest.fixture(scope="module")
def loaded_run(run_dir):
    from models.run import load_run
    return load_run(run_dir)


def test_layout_warmup_and_metadata(exported, run_dir):
    base = exported.parent
    assert exported.name == "1" and [p.name for p in base.iterdir()] == ["1"]  # no .tmp-* left behind
    assert (exported / "saved_model.pb").exists() and (exported / "variables" / "variables.index").exists()
    reqs, skipped = read_warmup(exported)
    assert skipped == 0 and {r.model_spec.signature_name for r in reqs} == {"serving_default", "predict_raw",
                                                                            "score_candidates", "score_packed"}
    assert max(r.inputs["examples"].tensor_shape.dim[0].size for r in reqs if "examples" in r.inputs) == 6
    meta = json.loads((exported / "assets.extra" / "rocketctr.json").read_text())
    spec = feature_specs.load_spec("synthetic")
    assert meta["tower"] == "light" and meta["for_serving"] is True and meta["version"] == 1
    assert meta["spec"]["hash"] == feature_specs.spec_hash(spec)
    assert meta["spec"]["sides"]["item"] == [f.name for f in spec.by_side("item")]
    assert meta["run"]["run_dir"] == str(run_dir.resolve()) and meta["run"]["metrics"] == {"light": {"auc": 0.5}}
    assert meta["parity_max_abs_logit_diff"] < 1e-5
    assert next_version(base) == 2


def test_no_booster_variable_in_the_light_export(exported, loaded_run):
    names = exported_variable_names(exported)
    assert names and not [n for n in names if "booster" in n]
    assert any(n.startswith("light/") for n in names)
    booster = {v.name.split(":")[0] for v in loaded_run.model.booster_variables}
    assert booster and not booster & set(names)
    ckpt_keys = [k for k, _ in tf.train.list_variables(str(exported / "variables" / "variables"))]
    assert not [k for k in ckpt_keys if "booster" in k.lower()]


def test_parity_with_the_training_light_tower(exported, loaded_run):
    spec, model = loaded_run.spec, loaded_run.model
    examples = read_eval_examples(loaded_run.data_dir, 20)
    parsed = tf.io.parse_example(tf.constant(examples), derive.parse_spec(spec, features_only=True))
    x = derive.to_model_inputs(spec, parsed)
    want = model.light_logits(x).numpy()
    m = tf.saved_model.load(str(exported))
    got = m.signatures["serving_default"](examples=tf.constant(examples))
    assert np.max(np.abs(got["logit"].numpy() - want)) < 1e-5
    np.testing.assert_allclose(got["ctr"].numpy(), 1 / (1 + np.exp(-want)), atol=1e-6)
    raw = m.signatures["predict_raw"](**x)
    assert np.max(np.abs(raw["logit"].numpy() - want)) < 1e-5
    user = set(derive.serving_input_specs(spec, sides=("user", "context"), batch=1))
    for row in (0, 7):  # every row's user against all candidates
        cand = m.signatures["score_candidates"](**{k: (v[row:row + 1] if k in user else v) for k, v in x.items()})
        same = {k: (tf.repeat(v[row:row + 1], len(examples), axis=0) if k in user else v) for k, v in x.items()}
        assert np.max(np.abs(cand["logit"].numpy() - model.light_logits(same).numpy())) < 1e-5


def test_a_crash_mid_export_leaves_no_visible_version(run_dir, tmp_path, monkeypatch):
    import models.saved

    base = tmp_path / "base"
    base.mkdir()
    (base / "3").mkdir()

    def crash(model, tower, path):
        Path(path).mkdir(parents=True)
        (Path(path) / "saved_model.pb").write_bytes(b"half")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(models.saved, "save_tower", crash)
    with pytest.raises(OSError, match="simulated"):
        export_run(run_dir, base)
    assert sorted(p.name for p in base.iterdir()) == ["3"]
    with pytest.raises(ExportError, match="already exists"):
        export_run(run_dir, base, version=3)


def test_a_leaky_export_is_refused(run_dir, tmp_path, monkeypatch):
    import models.saved

    real = models.saved.save_tower
    monkeypatch.setattr(models.saved, "save_tower", lambda model, tower, path: real(model, "booster", path))
    with pytest.raises(ExportError, match="booster variables"):
        export_run(run_dir, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_booster_export_is_labelled_not_for_serving(run_dir, tmp_path, capsys):
    from rocketctr import cli

    assert cli.main(["export", "--run", str(run_dir), "--model-base", str(tmp_path), "--tower", "booster",
                     "--version", "5", "--warmup-rows", "2"]) == 0
    out = capsys.readouterr()
    assert "benchmarking only" in out.err and "booster net" in out.out
    meta = json.loads((tmp_path / "5" / "assets.extra" / "rocketctr.json").read_text())
    assert meta["tower"] == "booster" and meta["for_serving"] is False and "NOT" in meta["warning"]
    assert any(n.startswith("booster/") for n in exported_variable_names(tmp_path / "5"))


def test_export_while_serving_gets_served(exported, run_dir, loaded_run):
    base = exported.parent
    examples = read_eval_examples(loaded_run.data_dir, 5)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "ctr"
    fill_proto(req.inputs["examples"], np.asarray(examples, dtype=object))
    with serve(base, "ctr", port=0, poll_seconds=0.2) as handle:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(handle.target))
        first = stub.Predict(req)
        assert first.model_spec.version.value == 1
        export_run(run_dir, base, warmup_rows=2)
        deadline = time.monotonic() + 60
        while stub.Predict(req).model_spec.version.value != 2:
            assert time.monotonic() < deadline, "version 2 was not served within 60 s"
            time.sleep(0.1)
        np.testing.assert_allclose(to_numpy(stub.Predict(req).outputs["ctr"]), to_numpy(first.outputs["ctr"]),
                                   atol=1e-6)  # same run, same weights
        assert handle.registry.available_versions == [2]
    assert export_mod.PARITY_TOLERANCE == 1e-5 and sys.modules["serving.export"] is export_mod


# ---- the export as TF's own tooling sees it (what the TF Serving binary will load) -------------------------

def _saved_model_cli(*args: str) -> str:
    """Run TF's saved_model_cli in a fresh process (the venv's console script); its stdout."""
    import subprocess

    cli = Path(sys.executable).with_name("saved_model_cli")
    proc = subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, f"saved_model_cli {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def _example_literal(serialized: bytes) -> str:
    """A serialized tf.Example as saved_model_cli's --input_examples literal ({feature: [values]})."""
    ex = tf.train.Example.FromString(serialized)
    row = {}
    for name, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        values = list(getattr(feat, kind).value)
        if not values:
            continue  # the CLI types a feature by its first value; a missing one is parsed as its default
        row[name] = [v.decode() for v in values] if kind == "bytes_list" else \
            [float(v) for v in values] if kind == "float_list" else [int(v) for v in values]
    return repr(row)


def test_saved_model_cli_shows_and_runs_the_export_like_tf_serving(exported, loaded_run):
    shown = _saved_model_cli("show", "--dir", str(exported), "--all")
    for sig in ("serving_default", "predict_raw", "score_candidates"):
        assert f"signature_def['{sig}']" in shown
    assert "outputs['ctr']" in shown and "outputs['logit_uncalibrated']" in shown
    examples = read_eval_examples(loaded_run.data_dir, 3)
    literal = "[" + ",".join(_example_literal(e) for e in examples) + "]"
    out = _saved_model_cli("run", "--dir", str(exported), "--tag_set", "serve", "--signature_def",
                           "serving_default", "--input_examples", f"examples={literal}")
    text = out.split("Result for output key ctr:", 1)[1].split("Result for output key", 1)[0]
    cli_ctr = np.array([float(x) for x in text.replace("[", " ").replace("]", " ").split()], np.float64)
    served = tf.saved_model.load(str(exported)).signatures["serving_default"](
        examples=tf.constant(examples))["ctr"].numpy()
    np.testing.assert_allclose(cli_ctr, served, atol=1e-5)  # the CLI's own Example encoding scores the same


def test_every_op_of_the_export_is_a_stock_tensorflow_op(exported):
    """No PyFunc and no custom op anywhere in the graph or its functions: loadable by the TF Serving binary."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    sm = saved_model_pb2.SavedModel.FromString((exported / "saved_model.pb").read_bytes())
    ops = set()
    for mg in sm.meta_graphs:
        ops |= {n.op for n in mg.graph_def.node}
        for fn in mg.graph_def.library.function:
            ops |= {n.op for n in fn.node_def}
    fn_names = {fn.signature.name for mg in sm.meta_graphs for fn in mg.graph_def.library.function}
    ops -= fn_names  # calls of the graph's own functions
    assert {"ParseExample", "ParseExampleV2"} & ops  # the serving_default parse is in the graph
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    unknown = sorted(op for op in ops if op_def_registry.get(op) is None)
    assert not unknown, f"ops not registered in stock TensorFlow: {unknown}"
