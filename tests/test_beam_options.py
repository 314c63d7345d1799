"""pipeline/beam_options.py: the local default runner and how the user's options are merged with it, in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from pipeline import beam_options
from pipeline.beam_options import local_runner_args, pipeline_options, resolve_aliases, with_defaults

REPO = Path(__file__).resolve().parents[1]


def test_local_runner_is_one_process_or_worker_processes():
    assert local_runner_args(1) == ["--runner=FnApiRunner"]
    opts = pipeline_options([], workers=3)
    assert opts.view_as(StandardOptions).runner == "FnApiRunner"
    assert opts.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert opts.view_as(DirectOptions).direct_num_workers == 3
    with pytest.raises(ValueError, match="workers"):
        local_runner_args(0)


def test_user_options_without_a_runner_keep_the_local_default_and_win_over_it():
    opts = pipeline_options(["--", "--direct_num_workers=4", "--temp_location=/tmp/x"])  # `--` left by the CLI
    assert opts.view_as(StandardOptions).runner == "FnApiRunner"
    assert opts.view_as(DirectOptions).direct_num_workers == 4  # the user's value comes last


@pytest.mark.parametrize("args", [["--runner=DataflowRunner", "--project=p"], ["--runner", "DataflowRunner"]])
def test_a_named_runner_gets_exactly_the_users_options(args):
    assert with_defaults(args) == args
    assert "direct_num_workers" not in pipeline_options(args).get_all_options(drop_default=True)


@pytest.mark.parametrize("args", [["--runner=DaskRunner"], ["--runner=daskrunner"], ["--runner", "DaskRunner"],
                                  ["--runner=Dask"]])
def test_dask_runner_name_means_the_projects_dask_runner(args):
    resolved = pipeline_options(args).view_as(StandardOptions).runner
    assert resolved == "pipeline.dask_runner.DaskRunner"
    assert resolve_aliases(["--runner=FnApiRunner"]) == ["--runner=FnApiRunner"]


def test_no_other_module_spells_the_local_runner_defaults():
    """One place for the defaults: no library module, bench or the demo writes direct_num_workers / the FnApiRunner
    as an option (docstrings and help texts may name them)."""
    offenders = []
    for pkg in ("pipeline", "rocketctr", "models", "serving"):
        for path in (REPO / pkg).rglob("*.py"):
            if path == Path(beam_options.__file__):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                        node.value.startswith(("--runner=FnApiRunner", "--direct_num_workers"))
                        or node.value.startswith("--direct_running_mode")):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert offenders == []
