"""`rocketctr serve --model-base DIR --model-name NAME`: the TF Serving gRPC API over exported versions."""

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
    p.add_argument("--tls-cert", default=None, help="PEM certificate chain; with --tls-key enables TLS")
    p.add_argument("--tls-key", default=None, help="PEM private key")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions")
    p.add_argument("--num-versions", type=int, default=1, help="serve the newest N versions (TF Serving latest{N})")
    p.add_argument("--version-label", type=_label, action="append", default=[], metavar="LABEL=VERSION",
                   help="assign a model_spec.version_label (repeatable)")
    p.add_argument("--max-message-mb", type=float, default=16.0, help="largest request/response accepted")
    p.add_argument("--workers", type=int, default=4, help="gRPC thread pool size")
    p.add_argument("--intra-op-threads", type=int, default=None, help="TF intra-op threads (default: TF's)")
    p.add_argument("--inter-op-threads", type=int, default=None, help="TF inter-op threads (default: TF's)")


def main(args: argparse.Namespace) -> int:
    from serving.server import serve

    try:
        handle = serve(args.model_base, args.model_name, args.host, args.port, poll_seconds=args.poll_seconds,
                       num_versions=args.num_versions, max_message_mb=args.max_message_mb, workers=args.workers,
                       tls_cert=args.tls_cert, tls_key=args.tls_key, metrics_port=args.metrics_port,
                       version_labels=dict(args.version_label), intra_op_threads=args.intra_op_threads,
                       inter_op_threads=args.inter_op_threads)
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
