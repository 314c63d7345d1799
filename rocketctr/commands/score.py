"""`rocketctr score --target HOST:PORT --model-name NAME --input FILE`: score raw feature rows over gRPC or REST.

Works against `rocketctr serve` and the official TF Serving alike (only the stock APIs are used)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="HOST:PORT of the server (its gRPC or its REST port)")
    p.add_argument("--protocol", choices=("grpc", "rest"), default="grpc",
                   help="gRPC PredictionService (e.g. port 8500) or TF Serving's REST API (e.g. port 8501)")
    p.add_argument("--model-name", required=True)
    p.add_argument("--input", required=True, help="CSV (with a header) or JSONL of raw feature rows")
    p.add_argument("--spec", default=None, help="feature spec (name or path); default: the server's signatures")
    p.add_argument("--signature", choices=("predict_raw", "score_candidates"), default="predict_raw",
                   help="score_candidates: the first row's user/context features against every row's item features")
    p.add_argument("--output", default=None, help="write rows + ctr as CSV here (default: print)")
    p.add_argument("--version", type=int, default=None, help="a specific model version (default: latest)")
    p.add_argument("--tls", default=None, metavar="CA_PEM", help="use TLS, trusting this CA certificate")
    p.add_argument("--timeout", type=float, default=10.0)


def main(args: argparse.Namespace) -> int:
    import grpc

    from serving.rest_client import RestError
    from serving.score_file import ScoreError, read_rows, score_rows

    try:
        rows = read_rows(args.input)
        spec = None
        if args.spec:
            from feature_specs import load_spec
            spec = load_spec(args.spec)
        scores, ignored = score_rows(rows, args.target, args.model_name, spec=spec, signature=args.signature,
                                     version=args.version, tls=args.tls or False, timeout=args.timeout,
                                     protocol=args.protocol)
    except ScoreError as e:
        print(f"score: {e}", file=sys.stderr)
        return 1
    except (grpc.RpcError, RestError) as e:
        print(f"score: server answered {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    if ignored:
        print(f"score: columns not used by the model: {', '.join(ignored)}", file=sys.stderr)
    out = rows.assign(ctr=scores)
    if args.output:
        out.to_csv(args.output, index=False)
        print(f"wrote {len(out)} scores to {args.output}")
    else:
        print(out.to_csv(index=False), end="")
    return 0
