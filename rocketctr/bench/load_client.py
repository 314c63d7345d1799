"""One client process of the serving load bench (rocketctr/bench/serve_load.py): it sends one prebuilt Predict
request over and over and reports its own latencies.

Kept free of TensorFlow on purpose: each client is a separate spawned process (so clients never share the
server's or each other's interpreter lock), and importing TensorFlow in each would cost seconds and hundreds of
MB per client on the machine under test. The request is already serialized, so the call goes through grpc's
generic unary call with no (de)serializers: the same bytes on the wire as the stock stub sends. A response of an
unexpected size (every response to one request has the same size) counts as an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc

PREDICT = "/tensorflow.serving.PredictionService/Predict"


@dataclass
class ClientResult:
    """What one client measured: timed latencies (seconds), and refused calls by status code."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str = ""

    def add_error(self, code: str, detail: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        self.first_error = self.first_error or f"{code}: {detail}"


def call_loop(target: str, request: bytes, response_size: int, warmup: int, n: int,
              warmed=None, go=None, timeout: float = 30.0) -> ClientResult:
    """Send `warmup` untimed calls, wait at the `warmed` and `go` barriers (if given: the parent reads the
    server's memory between them), then `n` timed calls."""
    out = ClientResult()
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        predict = channel.unary_unary(PREDICT)  # bytes in, bytes out

        def once(record: bool) -> None:
            t0 = time.perf_counter()
            try:
                resp = predict(request, timeout=timeout)
            except grpc.RpcError as e:  # counted in warm-up too: no failure goes unreported
                out.add_error(e.code().name, e.details() or "")
                return
            dt = time.perf_counter() - t0
            if len(resp) != response_size:
                out.add_error("BAD_RESPONSE", f"{len(resp)} bytes, expected {response_size}")
            elif record:
                out.latencies.append(dt)

        for _ in range(warmup):
            once(False)
        for barrier in (warmed, go):
            if barrier is not None:
                barrier.wait()
        for _ in range(n):
            once(True)
    return out


def client_process(target: str, request: bytes, response_size: int, warmup: int, n: int, warmed, go,
                   results) -> None:
    """The spawned process' entry point: the result goes back through the `results` queue."""
    try:
        res = call_loop(target, request, response_size, warmup, n, warmed, go)
    except BaseException as e:  # noqa: BLE001 - the parent must hear about it, not wait forever
        res = ClientResult()
        res.add_error("CLIENT_FAILED", f"{type(e).__name__}: {e}")
        for barrier in (warmed, go):
            if barrier is not None:
                barrier.abort()
    results.put(res)
