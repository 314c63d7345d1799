"""`rocketctr demo`: the whole pipeline end to end on the built-in simulator (see rocketctr/demo.py)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="out/demo", help="output folder for every artifact (default: out/demo)")
    p.add_argument("--rows", type=int, default=1_000_000, help="simulated impressions (default: 1,000,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="Beam worker processes")
    p.add_argument("--candidates", type=int, default=300, help="candidates scored per user over gRPC")
    p.add_argument("--keep", action="store_true", help="keep an existing --out folder instead of replacing it")


def main(args: argparse.Namespace) -> int:
    from rocketctr.demo import run_demo

    if args.rows < 1000:
        print("rocketctr demo: --rows must be >= 1000 (the eval split needs users with clicks)", file=sys.stderr)
        return 2
    try:
        run_demo(args.out, rows=args.rows, seed=args.seed, workers=args.workers, candidates=args.candidates,
                 overwrite=not args.keep)
    except KeyboardInterrupt:
        print("rocketctr demo: interrupted; the server (if started) was stopped", file=sys.stderr)
        return 130
    return 0
