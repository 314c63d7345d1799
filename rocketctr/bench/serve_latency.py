"""`rocketctr bench serve`: latency of the light export (and, for comparison, a booster export) per signature.

For N candidates in --sizes, per signature, it measures p50/p99 over --requests calls after --warmup calls:
  in-process: the version's SignatureRunner (validation + concrete function), what a co-located ranker pays;
  gRPC: a prebuilt PredictRequest through the stock stub to `rocketctr serve` in a separate process on
        loopback (so client and server do not share one interpreter lock), what a remote caller pays.
Request rows are the real eval rows in each version's warmup file, tiled to N. Prints markdown tables, with the
machine's 1-minute load per cell (the figures are only comparable at similar load; ratios within one run).
score_packed (the lean path) scores the same one-user-N-candidates requests as score_candidates, packed one tensor
per side and dtype (feature_specs.packed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from common.versions import scan_versions
from serving.server import configure_tf_threads
from serving.signatures import Servable, decode_inputs, load_servable
from serving.server_process import ServerProcess
from serving.tensors import fill_proto
from serving.warmup import read_warmup

SIGNATURES = ("serving_default", "predict_raw", "score_candidates", "score_packed")  # score_packed: the lean path


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rocketctr bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--model-base", required=True, help="model base of the light export")
    p.add_argument("--booster-base", default=None, help="model base of a booster export of the same run")
    p.add_argument("--sizes", default="1,100,300,1000", help="candidates per request")
    p.add_argument("--signatures", default=",".join(SIGNATURES))
    p.add_argument("--requests", type=int, default=1000, help="timed calls per cell")
    p.add_argument("--warmup", type=int, default=100, help="untimed calls per cell first")
    p.add_argument("--no-grpc", action="store_true", help="in-process figures only")
    p.add_argument("--workers", type=int, default=4, help="server gRPC thread pool")
    p.add_argument("--intra-op-threads", type=int, default=None)
    p.add_argument("--inter-op-threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the figures here")
    return p.parse_args(argv)


def base_inputs(servable: Servable) -> dict[str, dict[str, np.ndarray]]:
    """Per signature, the largest warmup request's inputs (real eval rows)."""
    reqs, _ = read_warmup(servable.path)
    out: dict[str, dict[str, np.ndarray]] = {}
    for r in reqs:
        sig = r.model_spec.signature_name or "serving_default"
        x = decode_inputs(r.inputs)
        if sig not in out or _rows(x) > _rows(out[sig]):
            out[sig] = x
    if not out:
        raise SystemExit(f"{servable.path}: no warmup requests to build benchmark rows from (export with "
                         f"`rocketctr export` writes them)")
    return out


def _rows(x: dict[str, np.ndarray]) -> int:
    return max(v.shape[0] for v in x.values())


def tile_to(x: dict[str, np.ndarray], n: int, spec_shapes: dict) -> dict[str, np.ndarray]:
    """Repeat the rows to n; inputs fixed at batch 1 (score_candidates' user side) stay as they are."""
    out = {}
    for k, v in x.items():
        if spec_shapes[k] and spec_shapes[k][0] == 1:
            out[k] = v
        else:
            out[k] = np.resize(v, (n, *v.shape[1:])) if v.ndim > 1 else np.resize(v, n)
    return out


def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def time_calls(fn, warmup: int, n: int) -> tuple[float, float]:
    return time_calls_cpu(fn, warmup, n)[:2]


def time_calls_cpu(fn, warmup: int, n: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, mean CPU ms of this process per call). The CPU figure is what a serving fleet pays
    per request and, unlike wall time, barely moves when other jobs share the machine."""
    for _ in range(warmup):
        fn()
    ts = []
    c0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    cpu = (time.process_time() - c0) / n * 1e3
    return (*percentiles(ts), cpu)


def start_server(base: str, name: str, args: argparse.Namespace) -> ServerProcess:
    """`rocketctr serve` in a child process (serving.server_process) with the bench's server flags; REST off."""
    extra = ["--workers", str(args.workers), "--max-message-mb", "64"]
    for flag, v in (("--intra-op-threads", args.intra_op_threads), ("--inter-op-threads", args.inter_op_threads)):
        if v:
            extra += [flag, str(v)]
    return ServerProcess(base, name, args=extra, rest=False).start()


def model_size(path: Path) -> dict:
    """Bytes on disk and the model's parameters; the export's pre-split first-layer kernel rows (models.saved:
    copies of the first layer's kernel, kept for score_candidates / score_packed) are counted apart."""
    files = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "assets.extra" not in p.parts)
    shapes = tf.train.list_variables(str(path / "variables" / "variables"))
    copies = sum(int(np.prod(shape)) for key, shape in shapes if key.startswith("split_kernels/"))
    return {"bytes": files, "params": sum(int(np.prod(shape)) for _, shape in shapes) - copies,
            "presplit_copies": copies}


def bench_model(label: str, base: str, args: argparse.Namespace, sizes: list[int], sigs: list[str]) -> list[dict]:
    versions = scan_versions(base)
    if not versions:
        raise SystemExit(f"{base}: no version folders")
    version = max(versions)
    servable = load_servable(versions[version], version)
    inputs = base_inputs(servable)
    server = None if args.no_grpc else start_server(base, label, args)
    channel = None if server is None else grpc.insecure_channel(server.target, options=[
        ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
    stub = None if channel is None else prediction_service_pb2_grpc.PredictionServiceStub(channel)
    rows = []
    try:
        for sig in sigs:
            if sig not in servable.runners:  # e.g. score_packed on a version exported before it existed
                print(f"  {label}: version {version} has no signature {sig!r}; skipped", file=sys.stderr)
                continue
            runner = servable.runner(sig)
            shapes = {k: s.shape for k, s in runner.inputs.items()}
            for n in sizes:
                x = tile_to(inputs[sig], n, shapes)
                p50, p99, cpu = time_calls_cpu(lambda: runner.run(x), args.warmup, args.requests)
                row = {"model": label, "version": version, "signature": sig, "n": n,
                       "inproc_p50_ms": p50, "inproc_p99_ms": p99, "inproc_cpu_ms": cpu}
                if server is not None:
                    req = predict_pb2.PredictRequest()
                    req.model_spec.name, req.model_spec.signature_name = label, sig
                    for k, v in x.items():
                        fill_proto(req.inputs[k], v)
                    row["grpc_p50_ms"], row["grpc_p99_ms"] = time_calls(
                        lambda: stub.Predict(req, timeout=30), args.warmup, args.requests)
                row["load1"] = os.getloadavg()[0]  # other jobs on the machine while this cell ran
                rows.append(row)
                print(f"  {label} {sig} N={n}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items()
                                                            if k.endswith("_ms")), file=sys.stderr)
    finally:
        if server is not None:
            channel.close()
            server.stop()
    return rows


def markdown(rows: list[dict], sizes: dict[str, dict]) -> str:
    has_grpc = any("grpc_p50_ms" in r for r in rows)
    head = "| model | signature | N | in-process p50 ms | in-process p99 ms | in-process CPU ms |" + (
        " gRPC p50 ms | gRPC p99 ms |" if has_grpc else "") + " load (1 min) |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["model"], r["signature"], str(r["n"]), f"{r['inproc_p50_ms']:.3f}", f"{r['inproc_p99_ms']:.3f}",
                 f"{r['inproc_cpu_ms']:.3f}"]
        if has_grpc:
            cells += [f"{r['grpc_p50_ms']:.3f}", f"{r['grpc_p99_ms']:.3f}"]
        cells.append(f"{r['load1']:.2f}" if "load1" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    light = {(r["signature"], r["n"]): r for r in rows if r["model"] == "light"}
    boost = [r for r in rows if r["model"] == "booster" and (r["signature"], r["n"]) in light]
    if boost:
        key = "grpc_p50_ms" if has_grpc else "inproc_p50_ms"
        lines += ["", f"| signature | N | booster/light p50 ({key.split('_')[0]}) | booster/light p99 | "
                      f"booster/light in-process p50 | booster/light CPU per request |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for b in boost:
            li = light[(b["signature"], b["n"])]
            k99 = key.replace("p50", "p99")
            lines.append(f"| {b['signature']} | {b['n']} | {b[key] / li[key]:.2f}x | {b[k99] / li[k99]:.2f}x | "
                         f"{b['inproc_p50_ms'] / li['inproc_p50_ms']:.2f}x | "
                         f"{b['inproc_cpu_ms'] / li['inproc_cpu_ms']:.2f}x |")
    lines += ["", "| model | SavedModel bytes (without assets.extra) | parameters | pre-split kernel copies |",
              "| --- | --- | --- | --- |"]
    for label, s in sizes.items():
        lines.append(f"| {label} | {s['bytes']:,} | {s['params']:,} | {s.get('presplit_copies', 0):,} |")
    return "\n".join(lines)


# issue 13's lean-path targets (300 candidates for one user through score_packed, 2 cores, quiet machine)
LEAN_SIGNATURE, LEAN_N = "score_packed", 300
LEAN_TARGETS = (("in process: p99 <= 1.0 ms", "light", "inproc_p99_ms", 1.0),
                ("gRPC: p99 <= 3 ms", "light", "grpc_p99_ms", 3.0))
RATIO_TARGET = 4.0  # booster / light CPU per request


def target_lines(rows: list[dict]) -> list[str]:
    """One line per lean-path target the run measured: the figure, met or NOT MET, and the load it ran under."""
    cell = {(r["model"], r["signature"], r["n"]): r for r in rows}
    light, boost = cell.get(("light", LEAN_SIGNATURE, LEAN_N)), cell.get(("booster", LEAN_SIGNATURE, LEAN_N))
    out = []
    for label, model, key, limit in LEAN_TARGETS:
        r = cell.get((model, LEAN_SIGNATURE, LEAN_N))
        if r is not None and key in r:
            out.append(f"target lean path, {LEAN_SIGNATURE} N={LEAN_N}, {label}: {r[key]:.2f} ms, "
                       f"{'met' if r[key] <= limit else 'NOT MET'} (load {r.get('load1', float('nan')):.2f})")
    if light is not None and boost is not None:
        ratio = boost["inproc_cpu_ms"] / light["inproc_cpu_ms"]
        out.append(f"target booster/light CPU per request, {LEAN_SIGNATURE} N={LEAN_N}: >= {RATIO_TARGET:g}x: "
                   f"{ratio:.2f}x, {'met' if ratio >= RATIO_TARGET else 'NOT MET'}")
    return out


def main(argv: list[str]) -> int:
    args = _args(argv)
    # the in-process cells run under the same TF thread settings as the server (before TF's runtime starts):
    # with the defaults, idle pool threads spinning between ops count as CPU per request
    configure_tf_threads(args.intra_op_threads, args.inter_op_threads, logging.getLogger("rocketctr.bench.serve"))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    sigs = [s for s in args.signatures.split(",") if s]
    bases = {"light": args.model_base, **({"booster": args.booster_base} if args.booster_base else {})}
    rows, model_sizes = [], {}
    for label, base in bases.items():
        rows += bench_model(label, base, args, sizes, sigs)
        model_sizes[label] = model_size(Path(scan_versions(base)[max(scan_versions(base))]))
    print(f"\nrocketctr bench serve: {args.requests} timed requests per cell after {args.warmup} warm-up; "
          f"{os.cpu_count()} CPUs visible; figures are noisy when other jobs share the CPU.\n")
    print(markdown(rows, model_sizes))
    lines = target_lines(rows)
    if lines:
        print("\n" + "\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "sizes": model_sizes, "argv": argv}, indent=1))
    return 0
