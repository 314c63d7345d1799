"""TF Serving's gRPC API (PredictionService + ModelService), its REST API and the gRPC health service, over the
light-net exports.

The servicers are the stock ones generated in tensorflow-serving-api, so any TF Serving client works
unchanged against this server and against the real tensorflow/serving binary. Predict decodes tensors
with serving.tensors (no make_ndarray), calls the version's concrete function directly, and answers with
tensor_content. Every failure is a gRPC status, never a crash: NOT_FOUND for an unknown model/version,
INVALID_ARGUMENT naming the offending input, RESOURCE_EXHAUSTED (from gRPC) above --max-message-mb.
Classify / Regress / MultiInference are left UNIMPLEMENTED (the light net is a Predict model).
The REST API (serving/rest.py) runs in the same process on its own port over the same registry, and
grpc.health.v1.Health (serving/health.py) reports SERVING once a version has loaded and warmed up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from serving.batching import Batcher
from serving.batching_config import BatchingParameters
from serving.handling import Resolver, model_metadata, model_status, observed
from serving.health import NOT_SERVING, SERVING, HealthServicer, add_health_servicer
from serving.monitoring import Metrics, MetricsServer, json_logger
from serving.registry import ModelRegistry
from serving.rest import RestApi, RestServer
from serving.signatures import decode_inputs
from serving.tensors import fill_proto


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, resolve: Resolver, metrics: Metrics, log: logging.Logger):
        self.resolve, self.metrics, self.log = resolve, metrics, log

    def Predict(self, request, context):  # noqa: N802 (gRPC naming)
        sig = request.model_spec.signature_name or "serving_default"
        with observed(self.metrics, self.log, "Predict", request.model_spec.name, sig) as outcome:
            servable = self.resolve(request.model_spec)
            outputs = self.resolve.predict(servable, sig, decode_inputs(request.inputs), request.output_filter)
            resp = predict_pb2.PredictResponse()
            resp.model_spec.name = request.model_spec.name
            resp.model_spec.version.value = servable.version
            resp.model_spec.signature_name = sig
            for k, v in outputs.items():
                fill_proto(resp.outputs[k], v)
            return resp
        context.abort(outcome.code, outcome.message)

    def GetModelMetadata(self, request, context):  # noqa: N802
        with observed(self.metrics, self.log, "GetModelMetadata", request.model_spec.name) as outcome:
            return model_metadata(self.resolve, request.model_spec, list(request.metadata_field))
        context.abort(outcome.code, outcome.message)


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry, resolve: Resolver, metrics: Metrics, log: logging.Logger):
        self.registry, self.resolve, self.metrics, self.log = registry, resolve, metrics, log

    def GetModelStatus(self, request, context):  # noqa: N802
        with observed(self.metrics, self.log, "GetModelStatus", request.model_spec.name) as outcome:
            return model_status(self.registry, self.resolve, request.model_spec)
        context.abort(outcome.code, outcome.message)


@dataclass
class ServerHandle:
    """A running server: its bound ports, registry, metrics and health; stop() shuts everything down."""

    server: grpc.Server
    registry: ModelRegistry
    metrics: Metrics
    host: str
    port: int
    metrics_server: MetricsServer | None = None
    prediction: PredictionServicer | None = field(default=None, repr=False)
    rest_server: RestServer | None = None
    health: HealthServicer | None = field(default=None, repr=False)
    batcher: Batcher | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server else None

    @property
    def rest_port(self) -> int | None:
        return self.rest_server.port if self.rest_server else None

    @property
    def rest_target(self) -> str | None:
        return f"{self.host}:{self.rest_port}" if self.rest_server else None

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        """Health goes NOT_SERVING first (load balancers drain), then REST, gRPC (in-flight requests finish,
        batched ones too), the batch threads, polling and metrics stop."""
        if self.health:
            self.health.shutdown()
        if self.rest_server:
            self.rest_server.stop()
        self.server.stop(grace).wait()
        if self.batcher:
            self.batcher.stop()
        self.registry.stop()
        if self.metrics_server:
            self.metrics_server.stop()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def health_status(registry: ModelRegistry) -> Callable[[str], int | None]:
    """Service name -> SERVING once a version of the model is AVAILABLE (loaded and warmed up), else
    NOT_SERVING; "" is the whole server, which serves exactly one model. Other names are unknown (None)."""
    names = {"", registry.model_name, "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"}

    def status(service: str) -> int | None:
        if service not in names:
            return None
        return SERVING if registry.available_versions else NOT_SERVING
    return status


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
          rest_port: int | None = None, batching: BatchingParameters | None = None,
          log: logging.Logger | None = None) -> ServerHandle:
    """Start serving `model_name` from `model_base` (port 0 = a free port; see handle.port). Non-blocking.
    `rest_port`: also serve TF Serving's REST API on host:rest_port (None = no REST, 0 = a free port).
    `batching`: merge concurrent requests (serving.batching; None = off, as TF Serving's default)."""
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
    batcher = Batcher(batching, log).start() if batching is not None else None
    resolver = Resolver(registry, version_labels, batcher)
    prediction = PredictionServicer(resolver, metrics, log)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(registry, resolver, metrics, log),
                                                              server)
    health = HealthServicer(health_status(registry), max_watchers=max(1, workers // 2))
    add_health_servicer(health, server)
    address = f"{host}:{port}"
    metrics_server = rest_server = None
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
        if rest_port is not None:
            rest_server = RestServer(RestApi(registry, resolver, metrics, log), host, rest_port, workers=workers,
                                     max_body_bytes=max_bytes, tls_cert=tls_cert, tls_key=tls_key)
    except BaseException:
        for started in (rest_server, metrics_server, registry, batcher):
            if started is not None:
                started.stop()
        raise
    server.start()
    handle = ServerHandle(server, registry, metrics, host, bound, metrics_server, prediction, rest_server, health,
                          batcher)
    log.info("serving", extra={"fields": {"model": model_name, "model_base": str(model_base), "target": handle.target,
                                          "rest_port": handle.rest_port, "tls": tls_cert is not None,
                                          "metrics_port": handle.metrics_port,
                                          "versions": registry.available_versions, "workers": workers,
                                          "max_message_mb": max_message_mb,
                                          "batching": batching.describe() if batching else None}})
    if batching is not None and batching.ignored:
        log.warning("batching parameters accepted but not acted on", extra={"fields": {"ignored": batching.ignored}})
    return handle
