"""`rocketctr bench NAME [...]`: benchmarks that print figures (speed/memory targets are checked here,
never in timed unit tests). Each benchmark is a library function `main(argv) -> int` in its own package."""

from __future__ import annotations

import argparse
import importlib

# benchmark name -> module with `main(argv: list[str]) -> int`
BENCHMARKS: dict[str, str] = {
    "preprocess": "rocketctr.bench.preprocess_speed",
    "train": "rocketctr.bench.train_speed",
    "serve": "rocketctr.bench.serve_load",  # the latency tables (serve_latency), then the server under load
    "quality": "rocketctr.bench.quality.quality_bench",
    "peer": "rocketctr.bench.quality.peer_bench",  # DeepCTR reference in the separate .venv-peer
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark to run")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of that benchmark (see its --help)")


def main(args: argparse.Namespace) -> int:
    module = BENCHMARKS[args.benchmark]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            print(f"rocketctr bench {args.benchmark}: not built yet ({module} is missing)")
            return 2
        raise
    return int(mod.main(list(args.bench_args)) or 0)
