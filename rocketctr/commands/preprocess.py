"""`rocketctr preprocess --spec S --input PATTERN --output DIR [...] [-- BEAM OPTIONS]`: the Beam job.

Beam pipeline options (--runner=DataflowRunner --project=... etc.) go after a `--` separator, because the
top-level parser rejects flags it does not know; `python -m pipeline.preprocess.preprocess_job` also takes them inline.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.preprocess.preprocess_job import add_job_arguments

    add_job_arguments(p)
    p.add_argument("beam_args", nargs=argparse.REMAINDER,
                   help="after `--`: Beam pipeline options (default: --runner=FnApiRunner with 2 processes)")


def main(args: argparse.Namespace) -> int:
    from pipeline.preprocess.preprocess_job import run_from_args

    beam_args = list(args.beam_args)
    if beam_args[:1] == ["--"]:
        beam_args = beam_args[1:]
    return run_from_args(args, beam_args)
