"""The gRPC server through the stock tensorflow-serving-api stubs, against stand-in SavedModels.

One server per module (port 0 on loopback, 0.2 s polling) serves toy versions written with the same three
signatures as the real export; scores are checked against the SavedModel loaded in process.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

import grpc
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from tensorflow.core.framework.tensor_pb2 import TensorProto

from serving.client import PredictClient
from serving.server import serve
from serving.tensors import from_numpy, to_numpy
from test_serving_toy import rows_to_examples, rows_to_inputs, save_toy, toy_rows

MODEL = "ctr"


@pytest.fixture(scope="module")
def server(tmp_path_factory, spec):
    base = tmp_path_factory.mktemp("models")
    save_toy(base, 1, seed=1, spec=spec)
    handle = serve(base, MODEL, port=0, poll_seconds=0.2, metrics_port=0, max_message_mb=1,
                   version_labels={"stable": 1})
    yield handle, base
    handle.stop()


@pytest.fixture(scope="module")
def stubs(server):
    handle, _ = server
    ch = grpc.insecure_channel(handle.target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(ch), model_service_pb2_grpc.ModelServiceStub(ch)
    ch.close()


def _request(inputs: dict, signature: str = "serving_default", model: str = MODEL, version=None):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(v if isinstance(v, TensorProto) else from_numpy(v))
    return req


def _candidates(spec, n=5, seed=0):
    rows = toy_rows(spec, n, seed=seed)
    user = {f.name: rows[0][f.name] for f in spec.features if f.side != "item"}
    return [{**r, **user} for r in rows], user


def _score_inputs(spec, rows):
    x = rows_to_inputs(spec, rows)
    side = {f.name: f.side for f in spec.features}
    return {k: (v[:1] if side[k] != "item" else v) for k, v in x.items()}


def _expected(base, version, spec, rows):
    m = tf.saved_model.load(str(base / str(version)))
    return m.signatures["serving_default"](examples=tf.constant(rows_to_examples(spec, rows)))["ctr"].numpy()


def test_all_signatures_match_the_saved_model(server, stubs, spec):
    handle, base = server
    predict, _ = stubs
    rows, _ = _candidates(spec, 6)
    want = _expected(base, 1, spec, rows)
    examples = np.asarray(rows_to_examples(spec, rows), dtype=object)
    r1 = predict.Predict(_request({"examples": examples}))
    r2 = predict.Predict(_request(rows_to_inputs(spec, rows), "predict_raw"))
    r3 = predict.Predict(_request(_score_inputs(spec, rows), "score_candidates"))
    for r in (r1, r2, r3):
        assert r.model_spec.name == MODEL and r.model_spec.version.value == 1
        assert set(r.outputs) == {"ctr", "logit"}
        assert r.outputs["ctr"].tensor_content  # fast encoding
        np.testing.assert_allclose(to_numpy(r.outputs["ctr"]), want, atol=1e-6)
    filtered = _request({"examples": examples}, version=1)
    filtered.output_filter.append("logit")
    only = predict.Predict(filtered)
    assert set(only.outputs) == {"logit"}
    labelled = _request({"examples": examples})
    labelled.model_spec.version_label = "stable"
    np.testing.assert_allclose(to_numpy(predict.Predict(labelled).outputs["ctr"]), want, atol=1e-6)


def test_metadata_and_status(server, stubs):
    predict, model = stubs
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = MODEL
    resp = predict.GetModelMetadata(req)
    assert resp.metadata["signature_def"].type_url.endswith("tensorflow.serving.SignatureDefMap")
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def) == {"serving_default", "predict_raw", "score_candidates", "score_packed"}
    assert list(sig_map.signature_def["serving_default"].inputs) == ["examples"]
    assert sig_map.signature_def["score_candidates"].inputs["user_id"].tensor_shape.dim[0].size == 1
    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = MODEL
    sreq.model_spec.version.value = 1
    st = model.GetModelStatus(sreq).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in st] == [(1, 30, 0)]


def _code(call, req) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(req)
    return e.value.code(), e.value.details()


def test_bad_requests_become_grpc_errors(server, stubs, spec):
    predict, model = stubs
    rows, _ = _candidates(spec, 3)
    raw = rows_to_inputs(spec, rows)
    nf = grpc.StatusCode.NOT_FOUND
    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert _code(predict.Predict, _request(raw, "predict_raw", model="nope"))[0] == nf
    assert _code(predict.Predict, _request(raw, "predict_raw", version=99))[0] == nf
    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = "nope"
    assert _code(model.GetModelStatus, sreq)[0] == nf
    missing = {k: v for k, v in raw.items() if k != "ad_id"}
    code, msg = _code(predict.Predict, _request(missing, "predict_raw"))
    assert code == bad and "missing" in msg and "'ad_id'" in msg
    code, msg = _code(predict.Predict, _request({**raw, "surprise": np.zeros(3, np.float32)}, "predict_raw"))
    assert code == bad and "'surprise'" in msg
    code, msg = _code(predict.Predict, _request({**raw, "ad_price": raw["ad_price"].astype(np.float64)}, "predict_raw"))
    assert code == bad and "'ad_price'" in msg and "dtype" in msg
    code, msg = _code(predict.Predict, _request({**raw, "ad_price": np.asarray([b"1", b"2", b"3"], object)}, "predict_raw"))
    assert code == bad and "'ad_price'" in msg
    code, msg = _code(predict.Predict, _request({**raw, "ad_id": raw["ad_id"].reshape(3, 1)}, "predict_raw"))
    assert code == bad and "'ad_id'" in msg and "shape" in msg
    code, msg = _code(predict.Predict, _request({**raw, "ad_id": raw["ad_id"][:2]}, "predict_raw"))
    assert code == bad and "rows" in msg
    cand = _score_inputs(spec, rows)
    code, msg = _code(predict.Predict, _request({**cand, "user_id": raw["user_id"]}, "score_candidates"))
    assert code == bad and "'user_id'" in msg  # the user side is batch 1
    nan = raw["ad_price"].copy()
    nan[1] = np.nan
    code, msg = _code(predict.Predict, _request({**raw, "ad_price": nan}, "predict_raw"))
    assert code == bad and "'ad_price'" in msg and "NaN" in msg
    inf = raw["user_age"].copy()
    inf[0] = np.inf
    assert _code(predict.Predict, _request({**raw, "user_age": inf}, "predict_raw"))[0] == bad
    code, msg = _code(predict.Predict, _request({"examples": np.zeros(0, object)}))
    assert code == bad and "empty" in msg
    bad_len = from_numpy(raw["ad_price"])
    bad_len.tensor_content = bad_len.tensor_content[:-4]
    code, msg = _code(predict.Predict, _request({**raw, "ad_price": bad_len}, "predict_raw"))
    assert code == bad and "'ad_price'" in msg
    assert _code(predict.Predict, _request(raw, "no_such_signature"))[0] == bad
    code, msg = _code(predict.Predict, _request({"examples": np.asarray([b"not a proto"], object)}))
    assert code == bad
    nan_example = rows_to_examples(spec, [{**rows[0], "ad_price": float("nan")}])
    assert _code(predict.Predict, _request({"examples": np.asarray(nan_example, object)}))[0] == bad
    big = np.asarray([b"x" * 1000] * 2000, dtype=object)  # ~2 MB > --max-message-mb 1
    assert _code(predict.Predict, _request({"examples": big}))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    mreq = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["bogus"])
    mreq.model_spec.name = MODEL
    assert _code(predict.GetModelMetadata, mreq)[0] == bad
    # still healthy afterwards
    assert predict.Predict(_request(raw, "predict_raw")).outputs["ctr"].tensor_shape.dim[0].size == 3


def _wait(cond, timeout=30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_new_version_is_served_and_broken_one_is_reported(server, stubs, spec):
    handle, base = server
    predict, _ = stubs
    rows, _ = _candidates(spec, 4, seed=7)
    req = _request(rows_to_inputs(spec, rows), "predict_raw")
    v1 = to_numpy(predict.Predict(req).outputs["ctr"])
    save_toy(base, 2, seed=2, spec=spec)
    assert _wait(lambda: predict.Predict(req).model_spec.version.value == 2)
    v2 = to_numpy(predict.Predict(req).outputs["ctr"])
    np.testing.assert_allclose(v2, _expected(base, 2, spec, rows), atol=1e-6)
    assert np.abs(v2 - v1).max() > 1e-3
    # a version whose variables are gone fails to load: reported, and version 2 keeps serving
    broken = save_toy(base / "staging", 3, seed=3, spec=spec)
    shutil.rmtree(broken / "variables")
    broken.rename(base / "3")
    client = PredictClient(handle.target, MODEL)
    assert _wait(lambda: any(s["version"] == 3 and s["state"] == "END" for s in client.status()))
    st = {s["version"]: s for s in client.status()}
    assert st[3]["error_code"] != 0 and st[3]["error_message"]
    assert st[2]["state"] == "AVAILABLE" and st[1]["state"] == "END"
    assert predict.Predict(req).model_spec.version.value == 2
    with urllib.request.urlopen(f"http://127.0.0.1:{handle.metrics_port}/metrics") as r:
        text = r.read().decode()
    assert 'rocketctr_model_loads_total{model="ctr",outcome="failed"}' in text
    assert 'rocketctr_model_version{model="ctr"} 2' in text
    assert 'code="INVALID_ARGUMENT"' in text or handle.metrics.request_count("Predict", "OK") > 0


def test_client_builds_requests_from_rows(server, spec):
    handle, base = server
    rows, user = _candidates(spec, 5, seed=3)
    version = max(handle.registry.available_versions)
    want = _expected(base, version, spec, rows)
    df = pd.DataFrame(rows)
    df["hist_cate"] = ["|".join(v) for v in df["hist_cate"]]  # CSV-style delimited sequence
    for client in (PredictClient(handle.target, MODEL, spec=spec), PredictClient(handle.target, MODEL)):
        with client:
            np.testing.assert_allclose(client.predict_raw(df), want, atol=1e-6)
            items = df[[f.name for f in spec.features if f.side == "item"]]
            np.testing.assert_allclose(client.score_candidates(user, items), want, atol=1e-6)
            np.testing.assert_allclose(client.predict_examples(rows_to_examples(spec, rows)), want, atol=1e-6)
            assert set(client.metadata()) == {"serving_default", "predict_raw", "score_candidates", "score_packed"}
    with PredictClient(handle.target, MODEL, spec=spec) as client:
        with pytest.raises(ValueError, match="'ad_id'"):
            client.predict_raw(df.drop(columns=["ad_id"]))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls(tmp_path, spec):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    save_toy(tmp_path / "m", 1, seed=1, spec=spec)
    with serve(tmp_path / "m", MODEL, port=0, tls_cert=cert, tls_key=key) as h:
        rows, _ = _candidates(spec, 2)
        with PredictClient(h.target, MODEL, spec=spec, tls=cert) as c:
            assert c.predict_raw(pd.DataFrame(rows)).shape == (2,)
        with PredictClient(h.target, MODEL, spec=spec, timeout=2) as plain:
            with pytest.raises(grpc.RpcError):
                plain.status()
