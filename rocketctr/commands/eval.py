"""`rocketctr eval --model MODEL --data DIR --out EVAL_DIR [...] [-- BEAM_OPTIONS]`: the offline eval Beam job
(GAUC, AUC, logloss, calibration) and, with --baseline/--min-gauc-lift, the push gate (exit 1 when refused)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.evaluate.eval_job import add_arguments as add_eval_arguments

    add_eval_arguments(p)
    p.add_argument("beam_args", nargs=argparse.REMAINDER,
                   help="Beam pipeline options after `--` (e.g. -- --direct_num_workers=2 or Dataflow options)")


def main(args: argparse.Namespace) -> int:
    from pipeline.evaluate.eval_job import run_from_args

    return run_from_args(args, list(args.beam_args))
