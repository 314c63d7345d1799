"""TF Serving's REST API beside the gRPC one, in the same process, over the same loaded versions.

Endpoints (tensorflow_serving/g3doc/api_rest.md):
  POST /v1/models/NAME[/versions/N|/labels/L]:predict    row ("instances") or columnar ("inputs") format
  GET  /v1/models/NAME[/versions/N|/labels/L]            status, GetModelStatusResponse as JSON
  GET  /v1/models/NAME[/versions/N|/labels/L]/metadata   GetModelMetadataResponse (signature_def) as JSON
Errors are {"error": "..."} with TF Serving's HTTP status for the gRPC code (400 INVALID_ARGUMENT, 404
NOT_FOUND, 503 UNAVAILABLE, ...). A request resolves its version and runs its signature through
serving.handling (Resolver.predict: SignatureRunner.run, or the batcher), the gRPC path, so both protocols
refuse the same requests with the same messages and return the same scores (and batch together).

One deliberate difference from TF Serving, for readiness probes: the status of a whole model
(GET /v1/models/NAME) is 503 while none of its versions is AVAILABLE (TF Serving answers 200 with LOADING or
END there); the body is still the status object, plus TF Serving's "error" key. A specific version's status
(/versions/N) is answered as TF Serving does.

stdlib http.server (no new dependency): a thread per connection, HTTP/1.1 keep-alive, at most `workers`
requests inside TensorFlow at once (the rest wait), bodies above `max_body_bytes` refused unread (413).
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import grpc

from serving import rest_json
from serving.handling import (SIGNATURE_DEF, Outcome, Resolver, any_available, model_metadata, model_spec,
                              model_status, observed)
from serving.monitoring import Metrics
from serving.registry import ModelRegistry
from serving.signatures import RequestError

_PREDICT = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(predict|classify|regress)",
                      re.IGNORECASE)
_GET = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)

# TF Serving's http_server.cc mapping from a status code to an HTTP status
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class RestApi:
    """The request handling, independent of the HTTP plumbing: (method, path, body) -> (HTTP status, JSON)."""

    def __init__(self, registry: ModelRegistry, resolver: Resolver, metrics: Metrics, log: logging.Logger):
        self.registry, self.resolver, self.metrics, self.log = registry, resolver, metrics, log

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        path = path.split("?", 1)[0]
        if method == "POST" and (m := _PREDICT.fullmatch(path)):
            return self._predict(*m.groups(), body)
        if method == "GET" and (m := _GET.fullmatch(path)):
            return self._get(*m.groups())
        allowed = "POST" if _PREDICT.fullmatch(path) else "GET" if _GET.fullmatch(path) else None
        if allowed:
            return 405, rest_json.error_body(f"{method} is not supported on {path}; use {allowed}")
        return 404, rest_json.error_body(f"Malformed request: {method} {path} (expected /v1/models/NAME"
                                         f"[/versions/N|/labels/L][/metadata] or ...:predict)")

    def _spec(self, name: str, version: str | None, label: str | None, signature: str = ""):
        return model_spec(unquote(name), int(version) if version else None, unquote(label) if label else None,
                          signature)

    def _predict(self, name, version, label, verb, body: bytes) -> tuple[int, bytes]:
        out = b""
        with observed(self.metrics, self.log, "REST.Predict", unquote(name)) as outcome:
            if verb.lower() != "predict":
                raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"{verb} is not implemented: the light net is "
                                                                  f"a Predict model (use :predict)")
            doc = rest_json.loads(body)
            outcome.signature = sig = rest_json.signature_name(doc)
            servable = self.resolver(self._spec(name, version, label, sig))
            inputs, row = rest_json.predict_inputs(doc, servable.runner(sig))
            out = rest_json.predict_body(self.resolver.predict(servable, sig, inputs), row)
        return self._answer(outcome, out)

    def _get(self, name, version, label, metadata) -> tuple[int, bytes]:
        spec = self._spec(name, version, label)
        method = "REST.GetModelMetadata" if metadata else "REST.GetModelStatus"
        code, out = 200, b""
        with observed(self.metrics, self.log, method, spec.name) as outcome:
            if metadata:
                out = rest_json.metadata_body(model_metadata(self.resolver, spec, [SIGNATURE_DEF]))
            else:
                resp = model_status(self.registry, self.resolver, spec)
                if version is None and label is None and not any_available(resp):  # not ready: see the docstring
                    code = 503
                    out = rest_json.status_body(resp, f"model {spec.name!r} has no AVAILABLE version yet")
                else:
                    out = rest_json.status_body(resp)
        return self._answer(outcome, out, code)

    @staticmethod
    def _answer(outcome: Outcome, out: bytes, code: int = 200) -> tuple[int, bytes]:
        if outcome.failed:
            return HTTP_STATUS.get(outcome.code, 500), rest_json.error_body(outcome.message)
        return code, out


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that goes away or fails the TLS handshake is not a server error worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):  # ssl.SSLError, ConnectionError, TimeoutError are OSErrors
            super().handle_error(request, client_address)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class RestServer:
    """The HTTP server in daemon threads on host:port (port 0 = a free one; see .port). TLS when given a
    certificate and key (the same ones as gRPC: REST beside a TLS gRPC port must not be plaintext)."""

    def __init__(self, api: RestApi, host: str, port: int, *, workers: int = 4, max_body_bytes: int = 16 << 20,
                 tls_cert: str | None = None, tls_key: str | None = None, idle_timeout: float = 60.0):
        slots = threading.BoundedSemaphore(max(1, workers))

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: no TCP handshake per request
            disable_nagle_algorithm = True  # headers and body are two writes: never wait for a delayed ACK
            timeout = idle_timeout  # an idle keep-alive connection frees its thread after this
            server_version = "rocketctr-rest"

            def do_POST(self):  # noqa: N802 (http.server naming)
                self._serve("POST")

            def do_GET(self):  # noqa: N802
                self._serve("GET")

            def do_PUT(self):  # noqa: N802 - other methods: RestApi.handle answers 405 / 404 as JSON
                self._serve(self.command)

            do_DELETE = do_PATCH = do_PUT  # noqa: N815

            def _serve(self, method: str) -> None:
                length = self.headers.get("Content-Length")
                if method == "POST" and (length is None or not length.isdigit()):
                    self.close_connection = True
                    return self._reply(411, rest_json.error_body("a POST needs a Content-Length header "
                                                                 "(chunked bodies are not supported)"))
                n = int(length or 0) if (length or "0").isdigit() else 0
                if n > max_body_bytes:
                    self._discard(n)
                    return self._reply(413, rest_json.error_body(
                        f"request body of {n} bytes exceeds the limit of {max_body_bytes} (--max-message-mb)"))
                body = self.rfile.read(n) if n else b""
                with slots:
                    status, out = api.handle(method, self.path, body)
                self._reply(status, out)

            def _discard(self, n: int) -> None:
                """Read an oversized body away (up to 4x the limit) so the client gets the 413 rather than a
                connection reset; a larger one closes the connection unread."""
                if n > 4 * max_body_bytes:
                    self.close_connection = True
                    return
                while n > 0:
                    chunk = self.rfile.read(min(n, 1 << 16))
                    if not chunk:
                        self.close_connection = True
                        return
                    n -= len(chunk)

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # refused requests are logged by serving.handling.observed
                pass

        server_class = _HTTPServer6 if ":" in host else _HTTPServer  # gRPC's "[::]" works here too
        self._httpd = server_class((host.strip("[]"), port), Handler)
        if tls_cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls_cert), str(tls_key))
            # the handshake runs in the connection's thread on first read, not in the accept loop
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

