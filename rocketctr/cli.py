"""The `rocketctr` console command: a thin dispatcher over library functions.

Each subcommand lives in `rocketctr/commands/<name>.py` with `add_arguments(parser)` and
`main(args) -> int`; the work itself is done by library functions in pipeline/, models/ and serving/,
which the tests call directly. Command modules are imported lazily so `rocketctr --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import feature_specs
from common.progress import INTERVAL_ENV
from feature_specs import runtime

GLOBAL_VALUE_FLAGS = ("--progress-seconds",)  # global flags that take a value (skipped to find the command)

# name -> (one-line help, module under rocketctr.commands or None when not built yet)
COMMANDS: dict[str, tuple[str, str | None]] = {
    "simulate": ("write synthetic click logs with known ground truth", "simulate"),
    "spec": ("validate a feature spec and print its features and derived parse spec", "spec"),
    "preprocess": ("Beam job: raw logs -> validated, analyzed, sharded TFRecords", "preprocess"),
    "train": ("train light / booster / rocket / kd from preprocessed TFRecords", "train"),
    "export": ("export the light net as a TF Serving SavedModel version", "export"),
    "serve": ("serve exported models over the TF Serving gRPC API", "serve"),
    "score": ("score raw feature rows through a PredictionService (ours or TF Serving)", "score"),
    "eval": ("Beam job: offline GAUC / AUC / logloss / calibration of a model", "eval"),
    "compare": ("compare eval results of several runs (mean +- std over seeds, paired t)", "compare"),
    "tune": ("seeded, resumable hyper-parameter search scored on the validation slice", "tune"),
    "demo": ("run the whole pipeline end to end on the built-in simulator", "demo"),
    "bench": ("benchmarks: preprocess, train, serve, quality", "bench"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rocketctr", description=__doc__.splitlines()[0] + " Rocket Launching "
                                     "CTR pipeline: Beam preprocessing, co-trained light/booster towers, "
                                     "light-net serving over gRPC.")
    parser.add_argument("--version", action="version", version=f"rocketctr {feature_specs.runtime.code_version()}")
    _add_global_flags(parser)
    after = argparse.ArgumentParser(add_help=False)  # the same flags after the command: `rocketctr train ... --verbose`
    _add_global_flags(after, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, module) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text if module else f"{help_text} (not built yet)",
                           description=help_text, parents=[after])
        if module is not None and _wants_module(name):
            importlib.import_module(f"rocketctr.commands.{module}").add_arguments(p)
    return parser


def _add_global_flags(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """--verbose and --progress-seconds; after the command they default to SUPPRESS so they never overwrite
    the value given before it."""
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS if suppress else False,
                   help="show TensorFlow's C++ start-up lines and Beam's optional-client notices (hidden by default)")
    p.add_argument("--progress-seconds", type=_positive_seconds, metavar="S",
                   default=argparse.SUPPRESS if suppress else None,
                   help="seconds between progress lines of long jobs (default 10; also $ROCKETCTR_PROGRESS_SECONDS)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _command_in(argv: list[str]) -> str | None:
    """The subcommand: the first word that is neither a flag nor a global flag's value."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in GLOBAL_VALUE_FLAGS:
            skip = True
        elif not token.startswith("-"):
            return token
    return None


def _wants_module(name: str) -> bool:
    """Only the chosen subcommand's module is imported (keeps --help off the TensorFlow import)."""
    return _command_in(sys.argv[1:]) == name


def _early_verbose(argv: list[str]) -> bool:
    """--verbose must act before the command's module is imported (which may load TensorFlow)."""
    own = argv[:argv.index("--")] if "--" in argv else argv
    return "--verbose" in own


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    if _early_verbose(sys.argv[1:]):
        runtime.set_verbose(True)
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:])
    if args.verbose:
        runtime.set_verbose(True)
    if args.progress_seconds is not None:  # through the environment: Beam worker processes read it too
        os.environ[INTERVAL_ENV] = repr(args.progress_seconds)
    if args.command is None:
        parser.print_help()
        return 2
    module = COMMANDS[args.command][1]
    if module is None:
        print(f"rocketctr {args.command}: not built yet (see the open issues); nothing was done.", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"rocketctr.commands.{module}").main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
