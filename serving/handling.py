"""What the gRPC and the REST front ends share, so both answer a request the same way.

A request names a model (and maybe a version or a version label); `Resolver` turns that into a loaded
Servable and runs a signature of it (`predict`: directly, or through serving.batching when batching is on,
so both front ends batch together). `observed` wraps one request's handling: latency and status counters, a
log line for a refused request, and the error as a gRPC status code (the one vocabulary both front ends speak:
REST maps it to an HTTP status the way TF Serving does). The status and metadata answers are built here as the stock
tensorflow-serving-api protos; gRPC sends them as they are and REST renders the same protos as JSON.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

import numpy as np

from serving.batching import Batcher
from serving.monitoring import Metrics
from serving.registry import AVAILABLE, ModelRegistry
from serving.signatures import RequestError, Servable, invalid

SIGNATURE_DEF = "signature_def"  # the only metadata field TF Serving (and this server) supports


class Resolver:
    """model_spec -> Servable (version, version_label or latest); predict() runs one of its signatures."""

    def __init__(self, registry: ModelRegistry, version_labels: dict[str, int] | None,
                 batcher: Batcher | None = None):
        self.registry = registry
        self.labels = dict(version_labels or {})
        self.batcher = batcher

    def version_of(self, spec: model_pb2.ModelSpec) -> int | None:
        """The version a model_spec asks for (None = latest); NOT_FOUND for a label nobody assigned."""
        version = spec.version.value if spec.HasField("version") else None
        if spec.version_label:
            if version is not None:
                raise invalid("model_spec sets both version and version_label; set one")
            if spec.version_label not in self.labels:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"version_label {spec.version_label!r} is not "
                                                              f"assigned (labels: {sorted(self.labels)})")
            version = self.labels[spec.version_label]
        return version

    def __call__(self, spec: model_pb2.ModelSpec) -> Servable:
        return self.registry.get(spec.name, self.version_of(spec))

    def predict(self, servable: Servable, signature: str, inputs: dict[str, np.ndarray],
                output_filter=()) -> dict[str, np.ndarray]:
        """The signature's (filtered) outputs: merged with concurrent requests when batching is on."""
        if self.batcher is None:
            return servable.runner(signature).run(inputs, output_filter)
        return self.batcher.run(servable, signature, inputs, output_filter)


@dataclass
class Outcome:
    """How a request ended: "OK", or the gRPC status code and the message the client receives. `signature` may be
    set during the request (REST learns it from the body) and labels the metrics and the log line."""

    signature: str = ""
    code: grpc.StatusCode | None = None
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.code is not None


@contextlib.contextmanager
def observed(metrics: Metrics, log: logging.Logger, method: str, model: str,
             signature: str = "") -> Iterator[Outcome]:
    """One request's bookkeeping. RequestError -> its code, any other exception -> INTERNAL (logged with the
    traceback): the exception is swallowed and recorded in the yielded Outcome, so the caller answers with it
    after the `with` block. A bug must never kill a worker thread or escape as UNKNOWN."""
    t0, out = time.perf_counter(), Outcome(signature)
    try:
        yield out
    except RequestError as e:
        out.code, out.message = e.code, e.message
        log.warning("request refused", extra={"fields": {"method": method, "code": e.code.name,
                                                         "signature": out.signature, "error": e.message}})
    except Exception as e:  # noqa: BLE001
        out.code, out.message = grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
        log.exception("request failed", extra={"fields": {"method": method, "signature": out.signature}})
    finally:
        metrics.observe(method, model, out.signature, out.code.name if out.code else "OK", time.perf_counter() - t0)


def model_status(registry: ModelRegistry, resolver: Resolver,
                 spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusResponse for a model_spec: every known version newest first, or the one asked for."""
    resp = get_model_status_pb2.GetModelStatusResponse()
    for st in registry.states(spec.name, resolver.version_of(spec)):
        s = resp.model_version_status.add()
        s.version, s.state = st.version, st.state
        s.status.error_code, s.status.error_message = st.error_code, st.error_message
    return resp


def any_available(resp: get_model_status_pb2.GetModelStatusResponse) -> bool:
    return any(s.state == AVAILABLE for s in resp.model_version_status)


def model_metadata(resolver: Resolver, spec: model_pb2.ModelSpec,
                   fields: list[str]) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadataResponse with the version's SignatureDefs packed as a SignatureDefMap."""
    if not fields:
        raise invalid(f"GetModelMetadataRequest must specify at least one metadata_field "
                      f"(supported: {SIGNATURE_DEF!r})")
    unsupported = [f for f in fields if f != SIGNATURE_DEF]
    if unsupported:
        raise invalid(f"metadata_field {unsupported} not supported (supported: {SIGNATURE_DEF!r})")
    servable = resolver(spec)
    resp = get_model_metadata_pb2.GetModelMetadataResponse()
    resp.model_spec.name = spec.name
    resp.model_spec.version.value = servable.version
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for k, v in servable.signature_defs.items():
        sig_map.signature_def[k].CopyFrom(v)
    resp.metadata[SIGNATURE_DEF].Pack(sig_map)
    return resp


def model_spec(name: str, version: int | None = None, label: str | None = None,
               signature: str = "") -> model_pb2.ModelSpec:
    """A ModelSpec from URL parts (REST) or client arguments."""
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        spec.version.value = version
    if label:
        spec.version_label = label
    return spec
