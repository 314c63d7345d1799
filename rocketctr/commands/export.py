"""`rocketctr export --run RUN_DIR --model-base DIR`: publish the light net as a TF Serving model version."""

from __future__ import annotations

import argparse
import sys

from common import fs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a finished training run directory (RUN_DIR)")
    p.add_argument("--model-base", required=True, help="TF Serving model base; the version goes to DIR/<version>/")
    p.add_argument("--version", type=int, default=None, help="version number (default: max existing + 1)")
    p.add_argument("--tower", choices=("light", "booster"), default="light",
                   help="light (the served model). booster: for latency benchmarks only, never serve it")
    p.add_argument("--warmup-rows", type=int, default=8, help="eval rows in the warmup requests and parity gate")


def main(args: argparse.Namespace) -> int:
    from serving.export import BOOSTER_WARNING, ExportError, export_run

    if args.tower == "booster":
        print(f"WARNING: {BOOSTER_WARNING}", file=sys.stderr)
    try:
        path = export_run(args.run, args.model_base, version=args.version, tower=args.tower,
                          warmup_rows=args.warmup_rows)
    except (ExportError, ValueError, FileNotFoundError) as e:
        print(f"export failed, nothing published: {e}", file=sys.stderr)
        return 1
    meta = fs.read_json(fs.join(path, "assets.extra", "rocketctr.json"))
    print(f"exported {args.tower} net -> {path} (version {meta['version']}, spec {meta['spec']['name']} "
          f"{meta['spec']['hash']}, {meta['variables']} variables, parity max |dlogit| "
          f"{meta['parity_max_abs_logit_diff']:.1e})")
    return 0
