"""score_packed, the lean request path: its layout, its parity with the other signatures and the training model,
gRPC through our server (stock stub and PredictClient), and malformed packed requests refused by name.

The run is built without training (as in test_serving_export): parity does not depend on good weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import feature_specs
from feature_specs import packed
from fixtures_data import synthetic_frame, write_fixture_dataset
from models.config import config_from_dict
from serving.client import PredictClient
from serving.export import export_run, model_inputs_of, read_eval_examples
from serving.server import serve
from serving.signatures import load_servable
from serving.tensors import fill_proto, to_numpy

USER_SIDES = ("user", "context")


@pytest.fixture(scope="module")
def run(tmp_path_factory, spec):
    """(run dir, exported version dir, loaded run) of an untrained synthetic run with an mlp light tower."""
    from models.rocket import build_model
    from models.run import RunPaths, load_run, write_run_config

    root = tmp_path_factory.mktemp("packed")
    data = write_fixture_dataset(spec, synthetic_frame(spec, 160, seed=3), root / "data")
    cfg = config_from_dict({"model": {"light": {"kind": "mlp", "hidden": [8]},
                                      "booster": {"kind": "mlp", "hidden": [16]}}})
    model = build_model(spec, str(data), cfg)
    run_dir = root / "run"
    write_run_config(run_dir, cfg, data, spec)
    tf.train.Checkpoint(model=model).save(str(Path(RunPaths(run_dir).final) / "ckpt"))
    version = Path(export_run(run_dir, root / "models", warmup_rows=4))
    return run_dir, version, load_run(run_dir)


def _candidates(spec, loaded, n: int, user_row: int = 0):
    """Model inputs of n eval rows; the user/context columns of `user_row` at batch 1, the items at batch n."""
    x = model_inputs_of(spec, read_eval_examples(loaded.data_dir, n))
    user = {k: v[user_row:user_row + 1] for k, v in x.items() if spec.feature(k).side in USER_SIDES}
    items = {k: v for k, v in x.items() if spec.feature(k).side not in USER_SIDES}
    return user, items


# ---- the layout ------------------------------------------------------------------------------------------------

def test_layout_is_one_tensor_per_side_and_dtype(spec):
    layout = packed.packed_layout(spec)
    by_name = {p.name: p for p in layout}
    assert list(by_name) == ["user_tokens", "user_numeric", "item_tokens", "item_numeric"]
    user_cat = [f.name for f in spec.features if f.side in USER_SIDES and f.kind == "categorical"]
    user_seq = [f for f in spec.features if f.side in USER_SIDES and f.kind == "sequence"]
    tokens = by_name["user_tokens"]
    assert [c.feature for c in tokens.columns] == user_cat + [f.name for f in user_seq]  # categoricals first
    assert tokens.width == len(user_cat) + sum(f.max_length for f in user_seq)
    assert tokens.tensor_spec().shape.as_list() == [1, tokens.width] and tokens.tensor_spec().dtype == tf.string
    items = by_name["item_numeric"]
    assert items.tensor_spec().shape.as_list() == [None, len(spec.by_side("item")) - len(
        [f for f in spec.by_side("item") if f.kind != "numeric"])]
    assert items.tensor_spec().dtype == tf.float32
    starts = [c.start for p in layout for c in p.columns if p.name == "user_tokens"]
    assert starts == sorted(starts) and starts[0] == 0
    # every feature exactly once, on its side
    assert sorted(c.feature for p in layout for c in p.columns) == sorted(f.name for f in spec.features)
    assert packed.layout_from_dict(json.loads(json.dumps(packed.layout_to_dict(layout)))) == layout


def test_layout_edge_cases(spec):
    criteo = feature_specs.load_spec("criteo")  # no item side: nothing to score candidates against
    assert packed.packed_layout(criteo) == () and packed.packed_input_specs(criteo) == {}
    seq = next(f for f in spec.features if f.kind == "sequence")
    broken = dataclasses.replace(spec, features=tuple(dataclasses.replace(f, max_length=0) if f is seq else f
                                                      for f in spec.features))
    with pytest.raises(ValueError, match=f"{seq.name}.*max_length"):
        packed.packed_layout(broken)
    with pytest.raises(ValueError, match="malformed"):
        packed.layout_from_dict({"inputs": [{"name": "user_tokens"}]})


def test_pack_truncates_pads_and_names_bad_columns(spec, run):
    layout = packed.packed_layout(spec)
    user, items = _candidates(spec, run[2], 3)
    seq = next(f for f in spec.features if f.kind == "sequence")
    long = np.asarray([[f"t{i}".encode() for i in range(seq.max_length + 3)]], dtype=object)
    out = packed.pack(layout, {**user, seq.name: long}, items)
    col = next(c for c in layout[0].columns if c.feature == seq.name)
    np.testing.assert_array_equal(out["user_tokens"][0, col.start:col.start + col.width], long[0, -seq.max_length:])
    short = np.asarray([[b"a", b""]], dtype=object)
    out = packed.pack(layout, {**user, seq.name: short}, items)
    assert list(out["user_tokens"][0, col.start:col.start + col.width]) == [b"a"] + [b""] * (col.width - 1)
    assert out["item_tokens"].shape == (3, layout[2].width) and out["item_numeric"].dtype == np.float32
    with pytest.raises(ValueError, match="ad_id"):
        packed.pack(layout, user, {k: v for k, v in items.items() if k != "ad_id"})
    with pytest.raises(ValueError, match="'ad_price'.*cannot be packed as float"):
        packed.pack(layout, user, {**items, "ad_price": np.asarray(["cheap"] * 3, dtype=object)})
    with pytest.raises(ValueError, match="'ad_price'.*expected \\[3\\]"):
        packed.pack(layout, user, {**items, "ad_price": items["ad_price"][:2]})


# ---- parity ----------------------------------------------------------------------------------------------------

def test_packed_matches_every_signature_and_the_training_model(spec, run):
    _, version, loaded = run
    meta = json.loads((version / "assets.extra" / "rocketctr.json").read_text())
    assert packed.layout_from_dict(meta["packed"]) == packed.packed_layout(spec)  # clients can pack from this
    assert meta["parity_max_abs_logit_diff"] < 1e-5
    servable = load_servable(version, 1)
    assert set(servable.runners) == {"serving_default", "predict_raw", "score_candidates", "score_packed"}
    layout = packed.layout_from_dict(meta["packed"])
    n = 12
    x = model_inputs_of(spec, read_eval_examples(loaded.data_dir, n))
    for row in (0, 5):  # each row's user against all candidates
        user, items = _candidates(spec, loaded, n, row)
        got = servable.runner("score_packed").run(packed.pack(layout, user, items))
        cand = servable.runner("score_candidates").run({**user, **items})
        same = {k: (np.repeat(v, n, axis=0) if k in user else v) for k, v in {**user, **items}.items()}
        raw = servable.runner("predict_raw").run(same)
        want = loaded.model.calibrated_logits("light", {k: tf.constant(v) for k, v in same.items()}).numpy()
        assert got["logit"].shape == (n,)
        for other in (cand, raw):
            for k in ("ctr", "logit", "logit_uncalibrated"):
                assert np.max(np.abs(got[k] - other[k])) < 1e-5, k
        assert np.max(np.abs(got["logit"] - want)) < 1e-5
    # and serving_default on rows whose user is the same as the packed request's
    examples = read_eval_examples(loaded.data_dir, n)
    by_examples = servable.runner("serving_default").run({"examples": np.asarray(examples, dtype=object)})
    user0 = {k: v[:1] for k, v in x.items() if spec.feature(k).side in USER_SIDES}
    items = {k: v for k, v in x.items() if k not in user0}
    got = servable.runner("score_packed").run(packed.pack(layout, user0, items))
    assert abs(got["logit"][0] - by_examples["logit"][0]) < 1e-5  # row 0 is that user's own row


# ---- through the server ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(run):
    with serve(run[1].parent, "ctr", port=0, poll_seconds=60) as handle:
        yield handle


def _request(inputs: dict, signature: str = "score_packed") -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name, req.model_spec.signature_name = "ctr", signature
    for k, v in inputs.items():
        fill_proto(req.inputs[k], v)
    return req


def test_grpc_predict_on_the_packed_signature(spec, run, server):
    _, version, loaded = run
    layout = packed.packed_layout(spec)
    user, items = _candidates(spec, loaded, 9, 2)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.target))
    resp = stub.Predict(_request(packed.pack(layout, user, items)), timeout=30)
    assert resp.model_spec.signature_name == "score_packed" and resp.model_spec.version.value == 1
    want = load_servable(version, 1).runner("score_candidates").run({**user, **items})
    for k in ("ctr", "logit", "logit_uncalibrated"):
        np.testing.assert_allclose(to_numpy(resp.outputs[k]), want[k], atol=1e-5)
    # the client packs from raw rows (spec or the export's metadata layout) and gets score_candidates' scores
    raw_user = {k: (list(v[0]) if v.ndim == 2 else v[0]) for k, v in user.items()}
    meta = json.loads((version / "assets.extra" / "rocketctr.json").read_text())
    meta_layout = packed.layout_from_dict(meta["packed"])
    with PredictClient(server.target, "ctr", spec=spec) as client:
        np.testing.assert_allclose(client.score_packed(raw_user, items), want["ctr"], atol=1e-6)
        np.testing.assert_allclose(client.score_candidates(raw_user, items), want["ctr"], atol=1e-6)
    with PredictClient(server.target, "ctr") as bare:
        np.testing.assert_allclose(bare.score_packed(raw_user, items, layout=meta_layout), want["ctr"], atol=1e-6)
        with pytest.raises(ValueError, match="packed layout"):
            bare.score_packed(raw_user, items)


def test_malformed_packed_requests_name_the_input_and_what_was_expected(spec, run, server):
    layout = packed.packed_layout(spec)
    user, items = _candidates(spec, run[2], 4)
    good = packed.pack(layout, user, items)
    width = {p.name: p.width for p in layout}
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.target))

    def refused(inputs: dict) -> str:
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(_request(inputs), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        return e.value.details()

    msg = refused({**good, "item_tokens": good["item_tokens"][:, :-1]})  # a column short
    assert "'item_tokens'" in msg and f"[4, {width['item_tokens'] - 1}]" in msg \
        and f"string[None, {width['item_tokens']}]" in msg
    msg = refused({**good, "item_numeric": good["item_numeric"].astype(np.float64)})
    assert "'item_numeric'" in msg and "float64" in msg and f"float[None, {width['item_numeric']}]" in msg
    msg = refused({**good, "item_numeric": good["item_numeric"].astype(str).astype(object)})
    assert "'item_numeric'" in msg and "string" in msg and "expected float" in msg
    msg = refused({**good, "user_tokens": np.repeat(good["user_tokens"], 2, axis=0)})  # two users
    assert "'user_tokens'" in msg and f"string[1, {width['user_tokens']}]" in msg
    msg = refused({**good, "item_numeric": good["item_numeric"][:3]})
    assert "item_numeric" in msg and "item_tokens" in msg and "must agree" in msg
    msg = refused({k: v for k, v in good.items() if k != "user_numeric"})
    assert "missing" in msg and "'user_numeric'" in msg
    msg = refused({**good, "ad_id": items["ad_id"]})
    assert "unexpected" in msg and "'ad_id'" in msg
    bad = good["item_numeric"].copy()
    bad[2, 1] = np.nan
    assert "row 2" in refused({**good, "item_numeric": bad})
    msg = refused({**good, "item_tokens": good["item_tokens"][:0], "item_numeric": good["item_numeric"][:0]})
    assert "empty batch" in msg
    # the server still answers a valid packed request afterwards
    assert to_numpy(stub.Predict(_request(good), timeout=30).outputs["ctr"]).shape == (4,)


def test_runner_calls_the_atomic_function_directly_with_the_same_scores(spec, run):
    """The fast call path (captured handles resolved once) is active on a real export, and it scores exactly
    like ConcreteFunction._call_flat: a TensorFlow upgrade that changed the restored function's layout would
    show here, not as a silent slowdown."""
    _, version, loaded = run
    runner = load_servable(version, 1).runner("score_packed")
    assert runner._direct is not None
    x = packed.pack(packed.packed_layout(spec), *_candidates(spec, loaded, 6))
    fast = runner.run(x)
    runner._direct = None
    slow = runner.run(x)
    for k in fast:
        np.testing.assert_array_equal(fast[k], slow[k])


def test_bench_prints_the_lean_path_targets():
    from rocketctr.bench.serve_latency import target_lines

    rows = [{"model": "light", "signature": "score_packed", "n": 300, "inproc_p99_ms": 0.9, "grpc_p99_ms": 3.5,
             "inproc_cpu_ms": 0.5, "load1": 0.4},
            {"model": "booster", "signature": "score_packed", "n": 300, "inproc_p99_ms": 3.0, "grpc_p99_ms": 4.0,
             "inproc_cpu_ms": 2.5, "load1": 0.4}]
    lines = target_lines(rows)
    assert len(lines) == 3
    assert "in process: p99 <= 1.0 ms: 0.90 ms, met" in lines[0] and "gRPC: p99 <= 3 ms: 3.50 ms, NOT MET" in lines[1]
    assert ">= 4x: 5.00x, met" in lines[2]
    assert target_lines([r for r in rows if r["model"] == "light"])[-1].startswith("target lean path")  # no ratio
    assert target_lines([{**rows[0], "n": 100}]) == []  # only N=300 is a target
