"""Training configs and the `rocketctr train` command line: experiments, overrides, clear errors."""

from __future__ import annotations

import argparse

import pytest
import yaml

from models.config import ConfigError, load_config
from rocketctr.commands import train as train_cmd
from tests.train_helpers import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_experiment_of_every_shipped_config_loads(path):
    doc = yaml.safe_load(path.read_text())
    assert {"rocket", "light_only", "booster_only", "kd", "no_gradient_block", "hint_into_shared", "paper",
            "no_shared_embeddings", "hint_kd"} <= set(doc["experiments"])
    for name in doc["experiments"]:
        over = {"train": {"teacher_run": "/some/run"}} if name == "kd" else None
        cfg = load_config(path, name, over)
        assert cfg.name == name


def test_mode_teacher_and_set_overrides_apply(tmp_path):
    cfg = train_cmd.resolve_config(_args(
        "--data", "d", "--out", str(tmp_path), "--config", str(REPO / "configs/synthetic.yaml"),
        "--experiment", "no_gradient_block", "--mode", "kd", "--teacher", str(tmp_path / "t"),
        "--set", "model.loss.hint_weight=0.3", "--set", "train.batch_size=64",
        "--set", "model.booster.hidden=[8, 4]"))
    assert cfg.train.mode == "kd" and cfg.train.teacher_run == str(tmp_path / "t")
    assert cfg.model.loss.hint_weight == 0.3 and cfg.train.batch_size == 64 and cfg.model.booster.hidden == (8, 4)
    assert cfg.model.loss.gradient_block is False  # from the experiment


@pytest.mark.parametrize("override,message", [
    ("train.batch_size=abc", "train.batch_size: expected int"),
    ("model.loss.gradient_blok=false", "unknown key 'gradient_blok'"),
    ("model.loss.gradient_block=maybe", "expected true/false"),
    ("train.mode=wide", "train.mode: 'wide' is not one of"),
    ("train.validation_fraction=1.5", "validation_fraction must be in"),
    ("model.embedding_dim=0", "model.embedding_dim must be in 1..1024"),
    ("no_equals_sign", "expected key.path=value"),
])
def test_bad_overrides_are_clear_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train_cmd.resolve_config(_args("--data", "d", "--out", str(tmp_path), "--config",
                                       str(REPO / "configs/synthetic.yaml"), "--set", override))


def test_kd_without_teacher_and_unknown_experiment_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="teacher_run"):
        train_cmd.resolve_config(_args("--data", "d", "--out", str(tmp_path), "--config",
                                       str(REPO / "configs/synthetic.yaml"), "--mode", "kd"))
    with pytest.raises(ConfigError, match="no experiment 'nope'"):
        train_cmd.resolve_config(_args("--data", "d", "--out", str(tmp_path), "--config",
                                       str(REPO / "configs/synthetic.yaml"), "--experiment", "nope"))


def test_cli_reports_errors_with_exit_code_1(tmp_path, capsys):
    from rocketctr import cli

    code = cli.main(["train", "--data", str(tmp_path / "missing"), "--config", str(REPO / "configs/synthetic.yaml"),
                     "--out", str(tmp_path / "run"), "--set", "train.max_steps=1"])
    assert code == 1
    assert "rocketctr train:" in capsys.readouterr().err


def test_config_is_required_unless_resuming(tmp_path):
    with pytest.raises(ConfigError, match="--config is required"):
        train_cmd.resolve_config(_args("--data", "d", "--out", str(tmp_path)))


def test_resume_with_a_different_config_lists_the_changes(tmp_path):
    import dataclasses

    import feature_specs
    from models.run import check_resume_config, write_run_config

    cfg = load_config(REPO / "configs/synthetic.yaml")
    write_run_config(tmp_path, cfg, tmp_path, feature_specs.load_spec("synthetic"))
    check_resume_config(tmp_path, cfg)  # same config: fine
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=7))
    with pytest.raises(ConfigError, match=r"train.batch_size: 1024 -> 7"):
        check_resume_config(tmp_path, other)
