"""`rocketctr bench serve`: the latency tables (rocketctr/bench/serve_latency.py), then the server under load.

Load: `rocketctr serve` in its own process (serving.server_process) and --load-clients client PROCESSES (spawned,
rocketctr/bench/load_client.py), each sending --load-requests requests of --candidates candidates after
--load-warmup untimed ones, all at once. Per signature in --load-signatures, once with the server's default flags
(batching off) and once with --enable_batching (--load-batching: TF Serving's four parameters): throughput
(timed requests / wall time), p50 / p99 of the client-side latencies, errors by status code, and the server's RSS
(psutil on its pid) after warm-up and at the end. Then the serving_default case: --candidates serialized
tf.Examples per request from one client process, --examples-requests times, against the server with its default
flags. Requests are the version's warmup rows (real eval rows) tiled to N; every client sends the same request
(batching merges on shapes, never on content, so that flatters nothing). Each run prints the 1-minute load
average: on a shared machine the figures are only comparable at similar load.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from common.versions import scan_versions
from rocketctr.bench import serve_latency
from rocketctr.bench.load_client import ClientResult, client_process
from serving.batching import batchable
from serving.server_process import ServerProcess
from serving.signatures import load_servable
from serving.tensors import fill_proto, to_numpy

TARGET_LOAD_P99_MS = 30.0  # 8 clients x 1000 x 300 candidates, batching on
TARGET_EXAMPLES_P99_MS = 7.0  # serving_default, 300 tf.Examples, one client, default server flags
TARGET_RSS_GROWTH = 0.10  # RSS at the end within 10 % of RSS after warm-up
MODEL = "bench"
QUICK = {"load_clients": 2, "load_requests": 5, "load_warmup": 2, "candidates": 5, "examples_requests": 5,
         "examples_warmup": 2}


@dataclass
class LoadRun:
    signature: str
    batching: str  # "off", "on", or "on (unbatched)" for a signature batching never merges
    clients: int
    requests: int  # timed requests per client
    n: int
    throughput: float  # OK timed requests per second of wall time
    p50_ms: float
    p99_ms: float
    errors: dict
    first_error: str
    rss_warm_mb: float
    rss_end_mb: float
    load1: float

    @property
    def rss_growth(self) -> float:
        return self.rss_end_mb / self.rss_warm_mb - 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rocketctr bench serve (load)", add_help=False)
    p.add_argument("--load-clients", type=int, default=8, help="client processes sending at once")
    p.add_argument("--load-requests", type=int, default=1000, help="timed requests per client")
    p.add_argument("--load-warmup", type=int, default=50, help="untimed requests per client first")
    p.add_argument("--candidates", type=int, default=300, help="candidates (rows) per request")
    p.add_argument("--load-signatures", default="score_packed,predict_raw,serving_default",
                   help="signatures put under load (those the version has)")
    p.add_argument("--load-batching", default="max_batch_size=2400,batch_timeout_micros=0,"
                                               "max_enqueued_batches=16,num_batch_threads=2",
                   help="the batching-on server's parameters, NAME=VALUE,... (TF Serving's names)")
    p.add_argument("--load-server-args", default="", help="extra `rocketctr serve` flags for every load server")
    p.add_argument("--examples-requests", type=int, default=1000, help="timed serving_default requests")
    p.add_argument("--examples-warmup", type=int, default=100)
    p.add_argument("--load-only", action="store_true", help="skip the latency tables")
    p.add_argument("--no-load", action="store_true", help="only the latency tables")
    p.add_argument("--quick", action="store_true", help=f"tiny numbers, to check the output: {QUICK}")
    p.add_argument("--load-json", default=None, help="also write the load figures here")
    return p


def batching_flags(text: str) -> list[str]:
    """"max_batch_size=2400,..." -> ["--enable_batching", "--max-batch-size", "2400", ...]."""
    flags = ["--enable_batching"]
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                                   "num_batch_threads") or not value.isdigit():
            raise SystemExit(f"--load-batching: expected NAME=INTEGER with NAME one of max_batch_size, "
                             f"batch_timeout_micros, max_enqueued_batches, num_batch_threads; got {item!r}")
        flags += [f"--{name.replace('_', '-')}", value]
    return flags


def build_requests(version_dir: str, version: int, n: int, sigs: list[str]
                   ) -> tuple[dict[str, predict_pb2.PredictRequest], dict[str, bool]]:
    """Per signature, its largest warmup request tiled to n rows (batch-1 inputs kept as they are), and whether
    batching can merge its requests (serving.batching.batchable)."""
    servable = load_servable(version_dir, version)
    inputs = serve_latency.base_inputs(servable)
    out, merges = {}, {}
    for sig in sigs:
        if sig not in servable.runners or sig not in inputs:
            print(f"  version {version} has no signature {sig!r} (or no warmup request for it); skipped",
                  file=sys.stderr)
            continue
        shapes = {k: s.shape for k, s in servable.runner(sig).inputs.items()}
        req = predict_pb2.PredictRequest()
        req.model_spec.name, req.model_spec.signature_name = MODEL, sig
        for k, v in serve_latency.tile_to(inputs[sig], n, shapes).items():
            fill_proto(req.inputs[k], v)
        out[sig] = req
        merges[sig] = batchable(servable.signature_defs[sig])
    return out, merges


def response_size(target: str, req: predict_pb2.PredictRequest, n: int) -> int:
    """Check the request once through the stock stub (n finite scores) and return the response's wire size."""
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20),
                                                ("grpc.max_receive_message_length", 64 << 20)]) as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=60)
    ctr = to_numpy(resp.outputs["ctr"])
    if ctr.shape != (n,) or not np.isfinite(ctr).all():
        raise SystemExit(f"{req.model_spec.signature_name}: expected {n} finite scores, got shape {ctr.shape}")
    return resp.ByteSize()


def run_clients(server: ServerProcess, req: predict_pb2.PredictRequest, n: int, clients: int, warmup: int,
                requests: int, batching: str) -> LoadRun:
    """`clients` spawned processes against the running server; RSS read between warm-up and the timed calls."""
    size = response_size(server.target, req, n)
    ctx = mp.get_context("spawn")
    warmed, go, results = ctx.Barrier(clients + 1), ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=client_process, daemon=True, args=(server.target, req.SerializeToString(), size,
                                                                   warmup, requests, warmed, go, results))
             for _ in range(clients)]
    for p in procs:
        p.start()
    server_proc = psutil.Process(server.proc.pid)
    limit = 600 + requests * 0.5
    try:
        warmed.wait(timeout=limit)
        rss_warm = server_proc.memory_info().rss
        go.wait(timeout=limit)
    except Exception:  # noqa: BLE001 - a client died: its result says why
        rss_warm = server_proc.memory_info().rss
    t0 = time.perf_counter()
    res: list[ClientResult] = [results.get(timeout=limit) for _ in procs]
    wall = time.perf_counter() - t0
    rss_end = server_proc.memory_info().rss
    for p in procs:
        p.join(timeout=30)
    lat = np.concatenate([np.asarray(r.latencies) for r in res]) * 1e3
    errors: dict[str, int] = {}
    for r in res:
        for code, k in r.errors.items():
            errors[code] = errors.get(code, 0) + k
    p50, p99 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if lat.size else (float("nan"),) * 2
    return LoadRun(req.model_spec.signature_name, batching, clients, requests, n, lat.size / wall, p50, p99, errors,
                   next((r.first_error for r in res if r.first_error), ""), rss_warm / 2**20, rss_end / 2**20,
                   os.getloadavg()[0])


def markdown(runs: list[LoadRun]) -> str:
    head = ("| signature | batching | clients x requests | N | throughput req/s | p50 ms | p99 ms | errors | "
            "server RSS after warm-up MB | at end MB | growth | load (1 min) |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in runs:
        err = sum(r.errors.values())
        lines.append(f"| {r.signature} | {r.batching} | {r.clients} x {r.requests} | {r.n} | {r.throughput:.0f} | "
                     f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {err}{' ' + json.dumps(r.errors) if err else ''} | "
                     f"{r.rss_warm_mb:.0f} | {r.rss_end_mb:.0f} | {100 * r.rss_growth:+.1f} % | {r.load1:.2f} |")
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def targets(runs: list[LoadRun], examples: LoadRun | None) -> list[str]:
    """The issue's load targets, one line each: target, measured, met / NOT MET."""
    lines = []
    for r in runs:
        if r.batching != "off":
            lines.append(f"target under load, {r.signature}, batching on ({r.clients} clients x {r.requests} x "
                         f"{r.n}): p99 <= {TARGET_LOAD_P99_MS:.0f} ms: {r.p99_ms:.2f} ms, "
                         f"{_met(r.p99_ms <= TARGET_LOAD_P99_MS)}")
    errors = sum(sum(r.errors.values()) for r in runs + ([examples] if examples else []))
    lines.append(f"target under load: 0 errors: {errors}, {_met(errors == 0)}")
    if examples is not None:
        lines.append(f"target serving_default, {examples.n} tf.Examples from a separate client, default server "
                     f"flags: p99 <= {TARGET_EXAMPLES_P99_MS:.0f} ms: {examples.p99_ms:.2f} ms, "
                     f"{_met(examples.p99_ms <= TARGET_EXAMPLES_P99_MS)}")
    if runs:
        worst = max(runs, key=lambda r: abs(r.rss_growth))
        lines.append(f"target server RSS flat over each load run (end within {100 * TARGET_RSS_GROWTH:.0f} % of "
                     f"after warm-up): worst {100 * worst.rss_growth:+.1f} % ({worst.signature}, batching "
                     f"{'on' if worst.batching != 'off' else 'off'}), "
                     f"{_met(all(abs(r.rss_growth) <= TARGET_RSS_GROWTH for r in runs))}")
    return lines


def bench_load(base: str, a: argparse.Namespace) -> tuple[list[LoadRun], LoadRun | None]:
    versions = scan_versions(base)
    if not versions:
        raise SystemExit(f"{base}: no version folders")
    version = max(versions)
    sigs = [s for s in a.load_signatures.split(",") if s]
    reqs, merges = build_requests(versions[version], version, a.candidates, sigs + ["serving_default"])
    extra = shlex.split(a.load_server_args)
    runs, examples = [], None
    for mode in ("off", "on"):
        args = extra + (batching_flags(a.load_batching) if mode == "on" else [])
        with ServerProcess(base, MODEL, args=args, rest=False) as server:
            if mode == "off" and "serving_default" in reqs:
                examples = run_clients(server, reqs["serving_default"], a.candidates, 1, a.examples_warmup,
                                       a.examples_requests, "off")
                print(f"  serving_default, 1 client: p50 {examples.p50_ms:.2f} ms, p99 {examples.p99_ms:.2f} ms",
                      file=sys.stderr)
            for sig in sigs:
                if sig not in reqs:
                    continue
                label = "off" if mode == "off" else "on" if merges[sig] else "on (unbatched)"
                r = run_clients(server, reqs[sig], a.candidates, a.load_clients, a.load_warmup, a.load_requests,
                                label)
                runs.append(r)
                print(f"  {sig}, batching {mode}: {r.throughput:.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                      f"p99 {r.p99_ms:.2f} ms, errors {r.errors or 0}", file=sys.stderr)
    return runs, examples


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        _parser().print_help()
        print()
        return serve_latency.main(argv)
    a, rest = _parser().parse_known_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument("--model-base", required=True)
    base_dir = base.parse_known_args(argv)[0].model_base
    rc = 0 if a.load_only else serve_latency.main(rest)
    if a.no_load:
        return rc
    runs, examples = bench_load(base_dir, a)
    print(f"\nrocketctr bench serve, under load: {a.load_clients} client processes x {a.load_requests} requests "
          f"of {a.candidates} candidates after {a.load_warmup} warm-up each; {os.cpu_count()} CPUs visible; "
          f"load average now {os.getloadavg()[0]:.2f}. Batching on: {a.load_batching.replace(',', ', ')}; "
          f"\"unbatched\": a signature whose requests batching never merges (one user per call).\n")
    print(markdown(runs + ([examples] if examples else [])))
    print()
    for line in targets(runs, examples):
        print(line)
    if a.load_json:
        Path(a.load_json).write_text(json.dumps({"runs": [asdict(r) for r in runs],
                                                 "examples": asdict(examples) if examples else None,
                                                 "argv": argv}, indent=1))
    return rc
