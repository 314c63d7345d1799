"""The REST side of PredictClient: TF Serving's REST API over HTTP/1.1 keep-alive (stdlib http.client).

It speaks the same JSON as curl would against `rocketctr serve --rest-port` or the tensorflow/serving binary:
columnar predict requests ({"signature_name", "inputs"}), strings as JSON strings when they are UTF-8 and as
{"b64": ...} otherwise (always for serialized tf.Examples), numbers as JSON numbers. Metadata and status come
back as the same protos the gRPC client returns. A refused request raises RestError, which carries the
gRPC code that TF Serving's HTTP status stands for, so callers handle both protocols alike.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

_CODE_OF_HTTP = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                 403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                 409: grpc.StatusCode.ABORTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                 429: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED,
                 501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
                 504: grpc.StatusCode.DEADLINE_EXCEEDED}


class RestError(Exception):
    """A REST call the server refused (or a transport failure): the HTTP status, the gRPC code it maps to and
    the server's {"error": ...} message. code() / details() mirror grpc.RpcError."""

    def __init__(self, http_status: int, message: str):
        super().__init__(f"HTTP {http_status}: {message}")
        self.http_status, self.message = http_status, message

    def code(self) -> grpc.StatusCode:
        return _CODE_OF_HTTP.get(self.http_status, grpc.StatusCode.UNKNOWN if self.http_status else
                                 grpc.StatusCode.UNAVAILABLE)

    def details(self) -> str:
        return self.message


class RestTransport:
    """Calls to one model on a REST endpoint (`host:port`); one persistent connection per calling thread."""

    def __init__(self, target: str, model_name: str, version: int | None = None, timeout: float = 10.0,
                 tls: bool | str | Path = False):
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"REST target must be HOST:PORT, got {target!r}")
        self.host, self.port, self.timeout = host.strip("[]"), int(port), timeout
        self._ctx = None
        if tls:
            self._ctx = ssl.create_default_context(cafile=None if tls is True else str(tls))
        self.model_path = f"/v1/models/{quote(model_name, safe='')}"
        self.path = self.model_path + (f"/versions/{version}" if version is not None else "")
        self._local = threading.local()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ctx) \
                if self._ctx else http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def call(self, method: str, path: str, body: bytes | None = None, ok: tuple[int, ...] = (200,)) -> dict:
        """One request -> the JSON answer; a status outside `ok` raises RestError with the server's message.
        A connection the server closed while idle is reopened once."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                self.close()
                if attempt or isinstance(e, TimeoutError):
                    raise RestError(0, f"{type(e).__name__} talking to {self.host}:{self.port}: {e}") from None
        try:
            doc = json.loads(data) if data else {}
        except ValueError:
            doc = {"error": data[:200].decode("utf-8", "replace")}
        if resp.status not in ok:
            raise RestError(resp.status, doc.get("error", str(doc)[:200]) if isinstance(doc, dict) else str(doc))
        return doc

    def predict(self, inputs: Mapping[str, np.ndarray], signature: str, output: str,
                binary: tuple[str, ...] = ()) -> np.ndarray:
        """Columnar predict; `binary` inputs are always sent as {"b64": ...}."""
        body = {"signature_name": signature, "inputs": {k: _json_tensor(v, k in binary) for k, v in inputs.items()}}
        doc = self.call("POST", self.path + ":predict", json.dumps(body, separators=(",", ":")).encode())
        outputs = doc.get("outputs")
        if isinstance(outputs, dict) and output in outputs:
            return np.asarray(outputs[output], dtype=np.float32)
        raise RestError(200, f"the response has no output {output!r} (got {str(outputs)[:120]})")

    def metadata(self) -> dict:
        """signature name -> SignatureDef, from GET .../metadata."""
        doc = self.call("GET", self.path + "/metadata")
        sig_map = json_format.ParseDict(doc.get("metadata", {}).get("signature_def", {}),
                                        get_model_metadata_pb2.SignatureDefMap(), ignore_unknown_fields=True)
        return dict(sig_map.signature_def)

    def status(self) -> get_model_status_pb2.GetModelStatusResponse:
        """GET /v1/models/NAME: every version's status (also when the server says 503: none AVAILABLE yet)."""
        doc = self.call("GET", self.model_path, ok=(200, 503))
        if "model_version_status" not in doc:
            raise RestError(503, doc.get("error", "no model_version_status in the answer"))
        return json_format.ParseDict(doc, get_model_status_pb2.GetModelStatusResponse(), ignore_unknown_fields=True)


def _json_tensor(a: np.ndarray, binary: bool):
    """numpy -> nested JSON lists; strings as text when UTF-8 (else, or when `binary`, as {"b64": ...})."""
    a = np.asarray(a)
    if a.dtype.kind not in "OSU":
        return a.tolist()
    flat = [_json_string(v, binary) for v in a.reshape(-1).tolist()]
    return _nest(flat, a.shape)


def _nest(flat: list, shape: tuple[int, ...]):
    if len(shape) <= 1:
        return flat if shape else flat[0]
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _json_string(v, binary: bool):
    if not binary:
        if type(v) is str:
            return v
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            pass
    b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
    return {"b64": base64.b64encode(b).decode("ascii")}
