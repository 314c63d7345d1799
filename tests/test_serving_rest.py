"""TF Serving's REST API and the gRPC health service of `rocketctr serve`, against a live server on 127.0.0.1.

The REST requests are plain urllib calls shaped like the examples of tensorflow_serving/g3doc/api_rest.md
(row "instances", columnar "inputs", {"b64": ...} strings, /versions/N and /labels/L routing, status and
metadata objects, {"error": ...} bodies). Scores are compared with the same request over gRPC through the stock
stub (< 1e-6), and with the SavedModel loaded in process. Two toy versions are served at once so routing is
visible in the scores.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from serving import health
from serving.client import PredictClient
from serving.rest_client import RestError
from serving.server import serve
from serving.tensors import from_numpy, to_numpy
from test_serving_toy import rows_to_examples, rows_to_inputs, save_toy, toy_rows

MODEL = "ctr"


@pytest.fixture(scope="module")
def server(tmp_path_factory, spec):
    base = tmp_path_factory.mktemp("rest_models")
    save_toy(base, 1, seed=1, spec=spec)
    save_toy(base, 2, seed=2, spec=spec)
    handle = serve(base, MODEL, port=0, rest_port=0, num_versions=2, max_message_mb=1,
                   version_labels={"stable": 1, "canary": 2})
    yield handle, base
    handle.stop()


@pytest.fixture(scope="module")
def stub(server):
    ch = grpc.insecure_channel(server[0].target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(ch)
    ch.close()


def http(handle, method: str, path: str, body=None) -> tuple[int, dict]:
    """One plain HTTP call; (status, parsed JSON body) for successes and errors alike."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{handle.rest_target}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _rows(spec, n=4, seed=0):
    """n rows sharing one user/context (so every signature can score them)."""
    rows = toy_rows(spec, n, seed=seed)
    user = {f.name: rows[0][f.name] for f in spec.features if f.side != "item"}
    return [{**r, **user} for r in rows]


def _json_columns(x: dict[str, np.ndarray]) -> dict:
    """numpy inputs -> JSON columns: strings as text, numbers as numbers (the REST API's natural form)."""
    return {k: (v.tolist() if v.dtype.kind == "f" else np.vectorize(bytes.decode, otypes=[object])(v).tolist())
            for k, v in x.items()}


def _score_inputs(spec, rows):
    side = {f.name: f.side for f in spec.features}
    return {k: (v[:1] if side[k] != "item" else v) for k, v in rows_to_inputs(spec, rows).items()}


def _grpc(stub, sig: str, inputs: dict, version=None) -> dict[str, np.ndarray]:
    req = predict_pb2.PredictRequest()
    req.model_spec.name, req.model_spec.signature_name = MODEL, sig
    if version is not None:
        req.model_spec.version.value = version
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(from_numpy(v))
    return {k: to_numpy(v) for k, v in stub.Predict(req).outputs.items()}


def _columns_of_predictions(preds: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.asarray([p[k] for p in preds], np.float32) for k in preds[0]}


# ---- predict ------------------------------------------------------------------------------------------------
def test_serving_default_with_b64_examples_row_and_columnar(server, stub, spec):
    handle, _ = server
    rows = _rows(spec, 5, seed=3)
    examples = rows_to_examples(spec, rows)
    want = _grpc(stub, "serving_default", {"examples": np.asarray(examples, object)})
    b64 = [{"b64": base64.b64encode(e).decode()} for e in examples]
    code, doc = http(handle, "POST", f"/v1/models/{MODEL}:predict", {"instances": b64})  # one input: a plain list
    assert code == 200 and list(doc) == ["predictions"] and len(doc["predictions"]) == 5
    assert set(doc["predictions"][0]) == set(want)  # several outputs: one object per row
    for k, v in _columns_of_predictions(doc["predictions"]).items():
        np.testing.assert_allclose(v, want[k], atol=1e-6)
    for inputs in (b64, {"examples": b64}):  # columnar: the tensor itself, or keyed by name
        code, doc = http(handle, "POST", f"/v1/models/{MODEL}:predict",
                         {"signature_name": "serving_default", "inputs": inputs})
        assert code == 200 and list(doc) == ["outputs"] and set(doc["outputs"]) == set(want)
        for k in want:
            np.testing.assert_allclose(doc["outputs"][k], want[k], atol=1e-6)
    loaded = tf.saved_model.load(str(server[1] / "2"))
    direct = loaded.signatures["serving_default"](examples=tf.constant(examples))["ctr"].numpy()
    np.testing.assert_allclose(doc["outputs"]["ctr"], direct, atol=1e-6)


def test_predict_raw_row_and_columnar_match_grpc(server, stub, spec):
    handle, _ = server
    rows = _rows(spec, 4, seed=5)
    x = rows_to_inputs(spec, rows)
    want = _grpc(stub, "predict_raw", x)
    cols = _json_columns(x)
    code, doc = http(handle, "POST", f"/v1/models/{MODEL}:predict", {"signature_name": "predict_raw",
                                                                     "inputs": cols})
    assert code == 200
    for k in want:
        np.testing.assert_allclose(doc["outputs"][k], want[k], atol=1e-6)
    instances = [{k: cols[k][i] for k in cols} for i in range(4)]  # a sequence feature is a list per row
    code, doc = http(handle, "POST", f"/v1/models/{MODEL}:predict", {"signature_name": "predict_raw",
                                                                     "instances": instances})
    assert code == 200
    for k, v in _columns_of_predictions(doc["predictions"]).items():
        np.testing.assert_allclose(v, want[k], atol=1e-6)


def test_score_candidates_columnar_and_single_row(server, stub, spec):
    handle, _ = server
    rows = _rows(spec, 6, seed=7)
    x = _score_inputs(spec, rows)
    want = _grpc(stub, "score_candidates", x)
    cols = _json_columns(x)  # user side at batch 1, items at batch 6: only the columnar format can say that
    code, doc = http(handle, "POST", f"/v1/models/{MODEL}:predict", {"signature_name": "score_candidates",
                                                                     "inputs": cols})
    assert code == 200
    for k in want:
        np.testing.assert_allclose(doc["outputs"][k], want[k], atol=1e-6)
    one = {k: v[0] for k, v in cols.items()}  # one candidate: every input has one row, so a row request works
    code, doc = http(handle, "POST", f"/v1/models/{MODEL}:predict", {"signature_name": "score_candidates",
                                                                     "instances": [one]})
    assert code == 200
    np.testing.assert_allclose(doc["predictions"][0]["ctr"], want["ctr"][0], atol=1e-6)
    code, doc = http(handle, "POST", f"/v1/models/{MODEL}:predict", {"signature_name": "score_candidates",
                                                                     "instances": [one, one]})
    assert code == 400 and "batch 1" in doc["error"] and "columnar" in doc["error"]


def test_version_and_label_routing(server, stub, spec):
    handle, _ = server
    rows = _rows(spec, 3, seed=9)
    examples = rows_to_examples(spec, rows)
    body = {"instances": [{"b64": base64.b64encode(e).decode()} for e in examples]}
    per_version = {v: _grpc(stub, "serving_default", {"examples": np.asarray(examples, object)}, v)["ctr"]
                   for v in (1, 2)}
    assert np.abs(per_version[1] - per_version[2]).max() > 1e-3  # the versions are told apart by their scores
    for path, version in (("", 2), ("/versions/1", 1), ("/versions/2", 2), ("/labels/stable", 1),
                          ("/labels/canary", 2)):
        code, doc = http(handle, "POST", f"/v1/models/{MODEL}{path}:predict", body)
        assert code == 200, doc
        np.testing.assert_allclose([p["ctr"] for p in doc["predictions"]], per_version[version], atol=1e-6)
    code, doc = http(handle, "POST", f"/v1/models/{MODEL}/labels/nope:predict", body)
    assert code == 404 and "nope" in doc["error"]


# ---- status and metadata ------------------------------------------------------------------------------------
def test_status_and_metadata_objects(server, stub):
    handle, _ = server
    code, doc = http(handle, "GET", f"/v1/models/{MODEL}")
    assert code == 200
    assert doc == {"model_version_status": [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}} for v in ("2", "1")]}
    code, doc = http(handle, "GET", f"/v1/models/{MODEL}/versions/1")
    assert code == 200 and [s["version"] for s in doc["model_version_status"]] == ["1"]
    code, doc = http(handle, "GET", f"/v1/models/{MODEL}/labels/canary")
    assert code == 200 and [s["version"] for s in doc["model_version_status"]] == ["2"]

    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = MODEL
    req.model_spec.version.value = 1
    grpc_map = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(req).metadata["signature_def"].Unpack(grpc_map)
    code, doc = http(handle, "GET", f"/v1/models/{MODEL}/versions/1/metadata")
    assert code == 200 and set(doc) == {"model_spec", "metadata"}
    assert doc["model_spec"] == {"name": MODEL, "version": "1", "signature_name": ""}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["inputs"]["examples"]["dtype"] == "DT_STRING"
    rest_map = json_format.ParseDict(doc["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap())
    assert rest_map == grpc_map
    code, doc = http(handle, "GET", f"/v1/models/{MODEL}/metadata")
    assert code == 200 and doc["model_spec"]["version"] == "2"


# ---- errors ----------------------------------------------------------------------------------------------------
def _error(code_doc, status: int) -> str:
    code, doc = code_doc
    assert code == status, doc
    assert list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"]
    return doc["error"]


def test_errors_are_shaped_like_tf_serving(server, stub, spec):
    handle, _ = server
    cols = _json_columns(rows_to_inputs(spec, _rows(spec, 3)))
    raw = {"signature_name": "predict_raw", "inputs": cols}
    predict = f"/v1/models/{MODEL}:predict"
    assert "nope" in _error(http(handle, "POST", "/v1/models/nope:predict", raw), 404)
    assert "99" in _error(http(handle, "POST", f"/v1/models/{MODEL}/versions/99:predict", raw), 404)
    assert "99" in _error(http(handle, "GET", f"/v1/models/{MODEL}/versions/99"), 404)
    _error(http(handle, "GET", "/v1/models/nope/metadata"), 404)
    assert "JSON" in _error(http(handle, "POST", predict, b'{"instances": [1,'), 400)
    assert "JSON" in _error(http(handle, "POST", predict, b"\xff\xfe"), 400)
    _error(http(handle, "POST", predict, b'["not", "an", "object"]'), 400)

    missing = {k: v for k, v in cols.items() if k != "ad_id"}
    msg = _error(http(handle, "POST", predict, {"signature_name": "predict_raw", "inputs": missing}), 400)
    with pytest.raises(grpc.RpcError) as e:  # the same validation as gRPC, word for word
        _grpc(stub, "predict_raw", {k: v for k, v in rows_to_inputs(spec, _rows(spec, 3)).items() if k != "ad_id"})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and msg == e.value.details() and "'ad_id'" in msg

    wrong_dtype = {**cols, "ad_price": ["1.5", "2", "3"]}  # strings where the signature wants float
    assert "'ad_price'" in _error(http(handle, "POST", predict, {**raw, "inputs": wrong_dtype}), 400)
    numbers_as_strings = {**cols, "ad_id": [1, 2, 3]}
    assert "'ad_id'" in _error(http(handle, "POST", predict, {**raw, "inputs": numbers_as_strings}), 400)
    ragged = {**cols, "hist_cate": [["a", "b"], ["c"], []]}
    assert "'hist_cate'" in _error(http(handle, "POST", predict, {**raw, "inputs": ragged}), 400)
    nan = {**cols, "ad_price": [float("nan"), 1.0, 2.0]}  # NaN is a legal token in TF Serving's JSON
    assert "NaN" in _error(http(handle, "POST", predict, {**raw, "inputs": nan}), 400)
    assert "instances" in _error(http(handle, "POST", predict, {**raw, "instances": [{}]}), 400)
    assert "instances" in _error(http(handle, "POST", predict, {"signature_name": "predict_raw"}), 400)
    assert "nope" in _error(http(handle, "POST", predict, {"signature_name": "nope", "inputs": cols}), 400)
    assert "base64" in _error(http(handle, "POST", predict, {"instances": [{"b64": "%%%"}]}), 400)
    uneven = [{"ad_id": "a"}, {"ad_id": "b", "ad_price": 1.0}]
    assert "'instances'[1]" in _error(http(handle, "POST", predict, {"signature_name": "predict_raw",
                                                                     "instances": uneven}), 400)
    _error(http(handle, "POST", f"/v1/models/{MODEL}:classify", {"examples": [{}]}), 501)
    _error(http(handle, "GET", predict), 405)
    _error(http(handle, "DELETE", f"/v1/models/{MODEL}"), 405)
    _error(http(handle, "GET", "/v2/whatever"), 404)
    big = {"instances": [{"b64": base64.b64encode(b"x" * 1000).decode()}] * 1500}  # ~2 MB > max_message_mb 1
    _error(http(handle, "POST", predict, big), 413)  # the body is read away: the connection survives
    # still healthy, and the refusals were counted
    assert http(handle, "POST", predict, raw)[0] == 200
    assert handle.metrics.request_count("REST.Predict", "INVALID_ARGUMENT") >= 10
    assert handle.metrics.request_count("REST.Predict", "OK") >= 1


# ---- the client over REST -------------------------------------------------------------------------------
def test_client_rest_equals_grpc(server, spec):
    handle, _ = server
    rows = _rows(spec, 5, seed=11)
    user = {f.name: rows[0][f.name] for f in spec.features if f.side != "item"}
    items = {f.name: [r[f.name] for r in rows] for f in spec.features if f.side == "item"}
    cols = {f.name: [r[f.name] for r in rows] for f in spec.features}
    examples = rows_to_examples(spec, rows)
    with PredictClient(handle.target, MODEL, spec=spec) as g, \
            PredictClient(handle.rest_target, MODEL, protocol="rest") as r:  # layout from REST metadata
        np.testing.assert_allclose(r.predict_raw(cols), g.predict_raw(cols), atol=1e-6)
        np.testing.assert_allclose(r.score_candidates(user, items), g.score_candidates(user, items), atol=1e-6)
        np.testing.assert_allclose(r.predict_examples(examples), g.predict_examples(examples), atol=1e-6)
        assert r.status() == g.status()
        assert r.metadata() == g.metadata()
    with PredictClient(handle.rest_target, "nope", protocol="rest") as bad:
        with pytest.raises(RestError) as e:
            bad.predict_examples(examples)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in e.value.details()
    with PredictClient(handle.rest_target, MODEL, protocol="rest", version=1) as v1, \
            PredictClient(handle.target, MODEL, version=1) as g1:
        np.testing.assert_allclose(v1.predict_examples(examples), g1.predict_examples(examples), atol=1e-6)


# ---- health ------------------------------------------------------------------------------------------------
def test_health_not_serving_until_a_version_loads(tmp_path, spec):
    base = tmp_path / "models"
    base.mkdir()
    with serve(base, MODEL, port=0, rest_port=0, poll_seconds=0.1) as handle:
        ch = grpc.insecure_channel(handle.target)
        assert health.check(ch, "") == "NOT_SERVING" and health.check(ch, MODEL) == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as e:
            health.check(ch, "some.other.Service")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        code, doc = http(handle, "GET", f"/v1/models/{MODEL}")  # the REST readiness probe says "not ready"
        assert code == 503 and "error" in doc and doc["model_version_status"] == []
        stream = health.watch(ch, MODEL, timeout=60)
        assert next(stream).status == health.NOT_SERVING
        save_toy(base, 1, seed=1, spec=spec)
        assert next(stream).status == health.SERVING  # sent when the version has loaded and warmed up
        assert health.check(ch, "") == "SERVING" and health.check(ch, MODEL) == "SERVING"
        assert http(handle, "GET", f"/v1/models/{MODEL}")[1]["model_version_status"][0]["state"] == "AVAILABLE"
        unknown = health.watch(ch, "some.other.Service", timeout=10)
        assert next(unknown).status == health.SERVICE_UNKNOWN
        unknown.cancel()
    rest = list(stream)  # stopping the server: NOT_SERVING first, then the stream ends
    assert [r.status for r in rest] == [health.NOT_SERVING]
    ch.close()


def test_stock_health_check_bytes_round_trip(server):
    """A HealthCheckRequest serialized by hand (field 1, the service name) as any grpc.health.v1 client sends it;
    the answer is HealthCheckResponse{status: SERVING} on the wire (field 1, varint 1)."""
    handle, _ = server
    with grpc.insecure_channel(handle.target) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check")  # no serializers: raw bytes both ways
        name = MODEL.encode()
        assert check(b"\x0a" + bytes([len(name)]) + name, timeout=5) == b"\x08\x01"
        assert check(b"", timeout=5) == b"\x08\x01"  # service "" (the default) is the whole server
        assert health.HealthCheckRequest.FromString(b"\x0a\x03ctr").service == "ctr"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_rest_uses_tls_when_grpc_does(tmp_path, spec):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    save_toy(tmp_path / "m", 1, seed=1, spec=spec)
    with serve(tmp_path / "m", MODEL, port=0, rest_port=0, tls_cert=cert, tls_key=key) as h:
        with PredictClient(h.rest_target, MODEL, protocol="rest", tls=cert) as c:
            assert c.status()[0]["state"] == "AVAILABLE"
        with pytest.raises(RestError):  # plaintext HTTP to the TLS port gets no answer
            with PredictClient(h.rest_target, MODEL, protocol="rest", timeout=5) as plain:
                plain.status()
