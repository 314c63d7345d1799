"""`rocketctr serve --model-base DIR --model-name NAME`: TF Serving's gRPC (8500) and REST (8501) APIs and the gRPC
health service over exported versions."""

from __future__ import annotations

import argparse
import signal
import sys


def _label(text: str) -> tuple[str, int]:
    name, sep, version = text.partition("=")
    if not sep or not version.isdigit():
        raise argparse.ArgumentTypeError(f"expected LABEL=VERSION, got {text!r}")
    return name, int(version)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-base", required=True, help="folder of integer version subfolders")
    p.add_argument("--model-name", required=True, help="the name clients put in model_spec.name")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0 = pick a free one)")
    p.add_argument("--rest-port", type=int, default=8501,
                   help="TF Serving's REST API on this port, same host as gRPC (0 = no REST, as TF Serving)")
    p.add_argument("--tls-cert", default=None, help="PEM certificate chain; with --tls-key enables TLS")
    p.add_argument("--tls-key", default=None, help="PEM private key")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions")
    p.add_argument("--num-versions", type=int, default=1, help="serve the newest N versions (TF Serving latest{N})")
    p.add_argument("--version-label", type=_label, action="append", default=[], metavar="LABEL=VERSION",
                   help="assign a model_spec.version_label (repeatable)")
    p.add_argument("--max-message-mb", type=float, default=16.0, help="largest request/response accepted")
    p.add_argument("--workers", type=int, default=4, help="gRPC thread pool size")
    # 1 / 1 measured fastest for the light net on 2 cores, alone and under load (docs/SERVING.md, Batching):
    # its graph is many small ops, so parallelism comes from concurrent requests, not from splitting one
    p.add_argument("--intra-op-threads", type=int, default=1, help="TF intra-op threads (default 1; 0 = TF's: one "
                                                                   "per core)")
    p.add_argument("--inter-op-threads", type=int, default=1, help="TF inter-op threads (default 1; 0 = TF's)")
    b = p.add_argument_group("batching (TF Serving's flags; docs/SERVING.md)")
    b.add_argument("--enable_batching", "--enable-batching", dest="enable_batching", action="store_true",
                   help="merge concurrent requests of a row-wise signature (serving_default, predict_raw)")
    b.add_argument("--batching_parameters_file", "--batching-parameters-file", dest="batching_parameters_file",
                   default=None, help="TF Serving's text-format BatchingParameters (max_batch_size { value: N } ...)")
    for flag, what in (("max_batch_size", "rows per merged call (TF default 1000)"),
                       ("batch_timeout_micros", "how long a batch waits for more requests (default 0)"),
                       ("max_enqueued_batches", "waiting batches per queue before UNAVAILABLE (default 10)"),
                       ("num_batch_threads", "threads running batches (default: one per core)")):
        b.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int, default=None,
                       help=f"{what}; overrides the file")


_BATCH_FLAGS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")


def batching_of(args: argparse.Namespace):
    """BatchingParameters when --enable_batching is given, else None; a batching flag without it is an error
    (it would silently do nothing)."""
    from serving.batching_config import load_batching_parameters

    given = {k: getattr(args, k, None) for k in _BATCH_FLAGS}
    if not getattr(args, "enable_batching", False):
        stray = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if getattr(args, "batching_parameters_file", None):
            stray.insert(0, "--batching_parameters_file")
        if stray:
            raise ValueError(f"{', '.join(stray)} given without --enable_batching (batching is off by default)")
        return None
    return load_batching_parameters(args.batching_parameters_file, **given)


def main(args: argparse.Namespace) -> int:
    from serving.server import serve

    try:
        batching = batching_of(args)
        handle = serve(args.model_base, args.model_name, args.host, args.port, poll_seconds=args.poll_seconds,
                       num_versions=args.num_versions, max_message_mb=args.max_message_mb, workers=args.workers,
                       tls_cert=args.tls_cert, tls_key=args.tls_key, metrics_port=args.metrics_port,
                       version_labels=dict(args.version_label), intra_op_threads=args.intra_op_threads,
                       inter_op_threads=args.inter_op_threads, rest_port=args.rest_port or None,
                       batching=batching)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"serve: {e}", file=sys.stderr)
        return 1
    if not handle.registry.available_versions:
        print(f"serve: no loadable version under {args.model_base} yet; waiting for one", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: handle.stop(grace=5.0))
    try:
        handle.wait()
    except KeyboardInterrupt:
        handle.stop(grace=2.0)
    return 0
