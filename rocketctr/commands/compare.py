"""`rocketctr compare RUN_OR_EVAL ... [--baseline GROUP] [--out FILE.md]`: mean +- std over seeds per setup and
paired differences (with t) to the light-alone baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="RUN_OR_EVAL",
                   help="eval dirs (metrics.json), metrics.json files, or run dirs with eval/metrics.json")
    p.add_argument("--baseline", help="group to pair against, e.g. light/light (default: the one light-alone setup)")
    p.add_argument("--out", help="also write the table to this markdown file")


def main(args: argparse.Namespace) -> int:
    from pipeline.evaluate.compare_runs import CompareError, compare

    try:
        table = compare(args.paths, baseline=args.baseline).markdown()
    except CompareError as e:
        print(f"rocketctr compare: {e}", file=sys.stderr)
        return 2
    print(table, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
        print(f"wrote {args.out}")
    return 0
