"""The standard gRPC health service, grpc.health.v1.Health (Check and Watch), with no extra dependency.

grpcio-health-checking would provide it, but its releases pin protobuf in lockstep with grpcio (1.82 and later
need protobuf 7, which conflicts with the protobuf 6 that tensorflow-serving-api needs), so every grpcio bump
could break the environment for a 60-line proto that has not changed since 2016. The messages are built here
from a FileDescriptorProto in a private descriptor pool (wire-identical to grpc/health/v1/health.proto, and no
clash if the official package is ever imported in the same process); the method handlers are registered with
grpc's generic handler API.

Semantics (what load balancers and Kubernetes' gRPC probe expect): SERVING only once a version of the model
has loaded and warmed up, NOT_SERVING before that and from the moment the server starts shutting down. The
service names answered: "" (the whole server), the model name, and the two TF Serving gRPC services.
Check on any other name is NOT_FOUND; Watch on it streams SERVICE_UNKNOWN, as the standard asks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "grpc.health.v1.Health"
UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {UNKNOWN: "UNKNOWN", SERVING: "SERVING", NOT_SERVING: "NOT_SERVING",
                SERVICE_UNKNOWN: "SERVICE_UNKNOWN"}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """grpc/health/v1/health.proto as a descriptor (field numbers and names are the wire contract)."""
    f = descriptor_pb2.FileDescriptorProto(name="grpc/health/v1/health.proto", package="grpc.health.v1",
                                           syntax="proto3")
    req = f.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                  type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    resp = f.message_type.add(name="HealthCheckResponse")
    enum = resp.enum_type.add(name="ServingStatus")
    for name, number in (("UNKNOWN", UNKNOWN), ("SERVING", SERVING), ("NOT_SERVING", NOT_SERVING),
                         ("SERVICE_UNKNOWN", SERVICE_UNKNOWN)):
        enum.value.add(name=name, number=number)
    resp.field.add(name="status", number=1, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                   type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
                   type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    svc = f.service.add(name="Health")
    svc.method.add(name="Check", input_type=".grpc.health.v1.HealthCheckRequest",
                   output_type=".grpc.health.v1.HealthCheckResponse")
    svc.method.add(name="Watch", input_type=".grpc.health.v1.HealthCheckRequest",
                   output_type=".grpc.health.v1.HealthCheckResponse", server_streaming=True)
    return f


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
HealthCheckRequest = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest"))
HealthCheckResponse = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse"))


class HealthServicer:
    """Check / Watch over a status function: service name -> SERVING / NOT_SERVING, or None if unknown.

    Watch streams hold a server thread each (grpcio's synchronous server), so at most `max_watchers` run at
    once and further ones get RESOURCE_EXHAUSTED: a few watching clients must never starve Predict. A watcher
    re-reads the status every `poll_seconds` and sends only changes; shutdown() ends every stream at once.
    """

    def __init__(self, status_of: Callable[[str], int | None], max_watchers: int = 2, poll_seconds: float = 0.25):
        self._status_of = status_of
        self._poll_seconds = poll_seconds
        self._stopping = threading.Event()
        self._watchers = threading.BoundedSemaphore(max(1, max_watchers))

    def status(self, service: str) -> int | None:
        if self._stopping.is_set():
            return NOT_SERVING if self._status_of(service) is not None else None
        return self._status_of(service)

    def shutdown(self) -> None:
        """Report NOT_SERVING everywhere (a load balancer drains the server) and end every Watch stream."""
        self._stopping.set()

    def Check(self, request, context):  # noqa: N802 (gRPC naming)
        st = self.status(request.service)
        if st is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return HealthCheckResponse(status=st)

    def Watch(self, request, context) -> Iterator:  # noqa: N802
        if not self._watchers.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many concurrent Watch streams on this server")
        try:
            last = None
            while context.is_active():
                st = self.status(request.service)
                st = SERVICE_UNKNOWN if st is None else st
                if st != last:
                    last = st
                    yield HealthCheckResponse(status=st)
                if self._stopping.is_set():
                    return
                self._stopping.wait(self._poll_seconds)
        finally:
            self._watchers.release()


def add_health_servicer(servicer: HealthServicer, server: grpc.Server) -> None:
    ser, de = HealthCheckResponse.SerializeToString, HealthCheckRequest.FromString
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Check": grpc.unary_unary_rpc_method_handler(servicer.Check, request_deserializer=de,
                                                     response_serializer=ser),
        "Watch": grpc.unary_stream_rpc_method_handler(servicer.Watch, request_deserializer=de,
                                                      response_serializer=ser),
    }),))


def check(channel: grpc.Channel, service: str = "", timeout: float = 2.0) -> str:
    """Health/Check over a channel: "SERVING", "NOT_SERVING", ... (NOT_FOUND raises grpc.RpcError)."""
    call = channel.unary_unary(f"/{SERVICE}/Check", request_serializer=HealthCheckRequest.SerializeToString,
                               response_deserializer=HealthCheckResponse.FromString)
    return STATUS_NAMES.get(call(HealthCheckRequest(service=service), timeout=timeout).status, "UNKNOWN")


def watch(channel: grpc.Channel, service: str = "", timeout: float | None = None):
    """Health/Watch over a channel: the call, an iterator of HealthCheckResponse (`.cancel()` stops it)."""
    call = channel.unary_stream(f"/{SERVICE}/Watch", request_serializer=HealthCheckRequest.SerializeToString,
                                response_deserializer=HealthCheckResponse.FromString)
    return call(HealthCheckRequest(service=service), timeout=timeout)
