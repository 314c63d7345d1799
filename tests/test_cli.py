"""The `rocketctr` command line: help, the spec command, and honest 'not built yet' subcommands."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import yaml

from feature_specs.loader import shipped_specs
from rocketctr import cli


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "rocketctr.cli", "--help"], capture_output=True, text=True, check=True)
    for name in cli.COMMANDS:
        assert name in out.stdout
    assert "simulate" in out.stdout and "serve" in out.stdout


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_each_subcommand_has_help_or_says_not_built(name, capsys):
    module = cli.COMMANDS[name][1]
    if module is None:
        assert cli.main([name]) == 2
        assert "not built yet" in capsys.readouterr().err
    else:
        mod = importlib.import_module(f"rocketctr.commands.{module}")
        assert callable(mod.add_arguments) and callable(mod.main)
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: p.stem)
def test_spec_command_accepts_every_shipped_spec(path, capsys):
    assert cli.main(["spec", str(path)]) == 0
    out = capsys.readouterr().out
    assert "parse spec" in out and "features:" in out


def test_spec_command_rejects_a_malformed_spec(tmp_path, capsys):
    doc = yaml.safe_load((shipped_specs()[0]).read_text())
    doc["features"][0]["pooling_typo"] = "mean"
    bad = tmp_path / "broken.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert cli.main(["spec", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and doc["features"][0]["name"] in err and "pooling_typo" in err


def test_no_subcommand_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
