"""TF Serving's gRPC API (PredictionService + ModelService) over the light-net exports.

The servicers are the stock ones generated in tensorflow-serving-api, so any TF Serving client works
unchanged against this server and against the real tensorflow/serving binary. Predict decodes tensors
with serving.tensors (no make_ndarray), calls the version's concrete function directly, and answers with
tensor_content. Every failure is a gRPC status, never a crash: NOT_FOUND for an unknown model/version,
INVALID_ARGUMENT naming the offending input, RESOURCE_EXHAUSTED (from gRPC) above --max-message-mb.
Classify / Regress / MultiInference are left UNIMPLEMENTED (the light net is a Predict model).
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from serving.monitoring import Metrics, MetricsServer, json_logger
from serving.registry import ModelRegistry
from serving.signatures import RequestError, Servable, decode_inputs, invalid
from serving.tensors import fill_proto


class _Resolver:
    """model_spec -> Servable (version, version_label or latest)."""

    def __init__(self, registry: ModelRegistry, version_labels: dict[str, int] | None):
        self.registry = registry
        self.labels = dict(version_labels or {})

    def __call__(self, spec) -> Servable:
        version = spec.version.value if spec.HasField("version") else None
        if spec.version_label:
            if version is not None:
                raise invalid("model_spec sets both version and version_label; set one")
            if spec.version_label not in self.labels:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"version_label {spec.version_label!r} is not "
                                                              f"assigned (labels: {sorted(self.labels)})")
            version = self.labels[spec.version_label]
        return self.registry.get(spec.name, version)


@contextlib.contextmanager
def observed(metrics: Metrics, log: logging.Logger, context, method: str, model: str, signature: str = ""):
    """One request's bookkeeping for every RPC: latency and status counters, RequestError -> its gRPC code,
    any other exception -> INTERNAL (logged): a bug must never kill a worker thread or escape as UNKNOWN."""
    t0, code = time.perf_counter(), "OK"
    try:
        yield
    except RequestError as e:
        code = e.code.name
        log.warning("request refused", extra={"fields": {"method": method, "code": code, "signature": signature,
                                                         "error": e.message}})
        context.abort(e.code, e.message)
    except Exception as e:  # noqa: BLE001
        code = "INTERNAL"
        log.exception("request failed", extra={"fields": {"method": method, "signature": signature}})
        context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
    finally:
        metrics.observe(method, model, signature, code, time.perf_counter() - t0)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, resolve: _Resolver, metrics: Metrics, log: logging.Logger):
        self.resolve, self.metrics, self.log = resolve, metrics, log

    def Predict(self, request, context):  # noqa: N802 (gRPC naming)
        sig = request.model_spec.signature_name or "serving_default"
        with observed(self.metrics, self.log, context, "Predict", request.model_spec.name, sig):
            servable = self.resolve(request.model_spec)
            outputs = servable.runner(sig).run(decode_inputs(request.inputs), request.output_filter)
            resp = predict_pb2.PredictResponse()
            resp.model_spec.name = request.model_spec.name
            resp.model_spec.version.value = servable.version
            resp.model_spec.signature_name = sig
            for k, v in outputs.items():
                fill_proto(resp.outputs[k], v)
            return resp

    def GetModelMetadata(self, request, context):  # noqa: N802
        with observed(self.metrics, self.log, context, "GetModelMetadata", request.model_spec.name):
            fields = list(request.metadata_field)
            if not fields:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field "
                              "(supported: 'signature_def')")
            unsupported = [f for f in fields if f != "signature_def"]
            if unsupported:
                raise invalid(f"metadata_field {unsupported} not supported (supported: 'signature_def')")
            servable = self.resolve(request.model_spec)
            resp = get_model_metadata_pb2.GetModelMetadataResponse()
            resp.model_spec.name = request.model_spec.name
            resp.model_spec.version.value = servable.version
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for k, v in servable.signature_defs.items():
                sig_map.signature_def[k].CopyFrom(v)
            resp.metadata["signature_def"].Pack(sig_map)
            return resp


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry, metrics: Metrics, log: logging.Logger):
        self.registry, self.metrics, self.log = registry, metrics, log

    def GetModelStatus(self, request, context):  # noqa: N802
        with observed(self.metrics, self.log, context, "GetModelStatus", request.model_spec.name):
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            resp = get_model_status_pb2.GetModelStatusResponse()
            for st in self.registry.states(spec.name, version):
                s = resp.model_version_status.add()
                s.version, s.state = st.version, st.state
                s.status.error_code, s.status.error_message = st.error_code, st.error_message
            return resp


@dataclass
class ServerHandle:
    """A running server: its bound ports, registry and metrics; stop() shuts everything down."""

    server: grpc.Server
    registry: ModelRegistry
    metrics: Metrics
    host: str
    port: int
    metrics_server: MetricsServer | None = None
    prediction: PredictionServicer | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server else None

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        self.server.stop(grace).wait()
        self.registry.stop()
        if self.metrics_server:
            self.metrics_server.stop()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def configure_tf_threads(intra_op: int | None, inter_op: int | None, log: logging.Logger) -> None:
    """TF's thread pools; only settable before the TF runtime starts (else a logged no-op)."""
    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as e:
        log.warning("TF thread pools already initialised; thread settings ignored", extra={"fields": {"error": str(e)}})


def serve(model_base: str | Path, model_name: str, host: str = "127.0.0.1", port: int = 8500, *,
          poll_seconds: float = 1.0, num_versions: int = 1, max_message_mb: float = 16.0, workers: int = 4,
          tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
          metrics_port: int | None = None, version_labels: dict[str, int] | None = None,
          intra_op_threads: int | None = None, inter_op_threads: int | None = None,
          log: logging.Logger | None = None) -> ServerHandle:
    """Start serving `model_name` from `model_base` (port 0 = a free port; see handle.port). Non-blocking."""
    log = log or json_logger()
    configure_tf_threads(intra_op_threads, inter_op_threads, log)
    metrics = Metrics()
    registry = ModelRegistry(model_base, model_name, poll_seconds=poll_seconds, num_versions=num_versions,
                             metrics=metrics, log=log)
    registry.start()
    max_bytes = int(max_message_mb * 1024 * 1024)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                         options=[("grpc.max_receive_message_length", max_bytes),
                                  ("grpc.max_send_message_length", max_bytes),
                                  ("grpc.so_reuseport", 0)])
    prediction = PredictionServicer(_Resolver(registry, version_labels), metrics, log)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(registry, metrics, log), server)
    address = f"{host}:{port}"
    try:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if tls_cert is not None:
            creds = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
            bound = server.add_secure_port(address, creds)
        else:
            bound = server.add_insecure_port(address)
        if not bound:
            raise OSError(f"could not bind gRPC server to {address}")
        metrics_server = MetricsServer(metrics, host, metrics_port) if metrics_port is not None else None
    except BaseException:
        registry.stop()
        raise
    server.start()
    handle = ServerHandle(server, registry, metrics, host, bound, metrics_server, prediction)
    log.info("serving", extra={"fields": {"model": model_name, "model_base": str(model_base), "target": handle.target,
                                          "tls": tls_cert is not None, "metrics_port": handle.metrics_port,
                                          "versions": registry.available_versions, "workers": workers,
                                          "max_message_mb": max_message_mb}})
    return handle
