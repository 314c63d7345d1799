"""Beam runner defaults, in one place: which runner a job uses when the user names none, and how the user's
options are merged with that default. Every Beam job, bench and the demo take their options from here.

Locally the default is Beam's FnApiRunner (the portable runner in-process; it runs fully offline, unlike the plain
DirectRunner, which may switch to Prism and download it). With more than one worker it runs its SDK workers as
processes (`multi_processing`); `multi_threading` was seen to corrupt data on this project's machine, so it is never
a default. A user who names a runner (`--runner=DataflowRunner`, `--runner=DaskRunner`, ...) gets exactly the
options they gave: the local defaults are only added when no runner is named. See docs/RUNNERS.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

LOCAL_RUNNER = "FnApiRunner"
DEFAULT_WORKERS = 2  # SDK worker processes of the local runner for the preprocessing job
# Runner names Beam does not register but this project supports: Beam 2.77 knows its DaskRunner only by its full
# class path, and the project's subclass (pipeline/dask_runner.py) is the one that runs our jobs correctly.
RUNNER_ALIASES = {"daskrunner": "pipeline.dask_runner.DaskRunner", "dask": "pipeline.dask_runner.DaskRunner"}


def local_runner_args(workers: int = DEFAULT_WORKERS) -> list[str]:
    """The local FnApiRunner: in one process for workers <= 1 (fastest for small jobs and tests), otherwise
    `workers` SDK worker processes."""
    if workers < 1:
        raise ValueError(f"workers: expected >= 1 local Beam worker processes, got {workers}")
    if workers == 1:
        return [f"--runner={LOCAL_RUNNER}"]
    return [f"--runner={LOCAL_RUNNER}", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def names_runner(user_args: Sequence[str]) -> bool:
    """Whether the options choose a runner (any spelling Beam accepts: `--runner=X` or `--runner X`)."""
    return PipelineOptions(list(user_args)).view_as(StandardOptions).runner is not None


def resolve_aliases(args: Sequence[str]) -> list[str]:
    """`--runner=DaskRunner` (or `--runner DaskRunner`, any case) -> the runner class it stands for."""
    out = list(args)
    for i, a in enumerate(out):
        if a.startswith("--runner="):
            name = a.split("=", 1)[1]
            out[i] = f"--runner={RUNNER_ALIASES.get(name.lower(), name)}"
        elif a == "--runner" and i + 1 < len(out):
            out[i + 1] = RUNNER_ALIASES.get(out[i + 1].lower(), out[i + 1])
    return out


def with_defaults(user_args: Sequence[str] = (), workers: int = DEFAULT_WORKERS) -> list[str]:
    """The user's Beam options (runner aliases resolved), preceded by the local runner's when they name no
    runner. A lone `--` separator (left by the CLI's REMAINDER arguments) is dropped."""
    args = resolve_aliases([a for a in user_args if a != "--"])
    return args if names_runner(args) else [*local_runner_args(workers), *args]


def pipeline_options(user_args: Sequence[str] = (), workers: int = DEFAULT_WORKERS) -> PipelineOptions:
    """PipelineOptions of `with_defaults(user_args, workers)`."""
    return PipelineOptions(with_defaults(user_args, workers))


def runner_name(options: PipelineOptions) -> str:
    """The runner the options choose, as the user spelt it (recorded in manifests and eval settings)."""
    return str(options.view_as(StandardOptions).runner)
