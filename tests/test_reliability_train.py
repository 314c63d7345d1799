"""Reliability of `rocketctr train` on damaged input: a truncated TFRecord shard is an exit code and a message
naming the file (the library-level behaviour, and skip_corrupt_shards, are in tests/test_train_data.py)."""

from __future__ import annotations

import shutil

import pytest

from rocketctr import cli
from tests.train_helpers import CONFIG, fixture_data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return fixture_data(tmp_path_factory.mktemp("rel_train") / "data", rows=300)


def _train(data, out) -> int:
    return cli.main(["train", "--data", str(data), "--config", str(CONFIG), "--out", str(out), "--quiet",
                     "--set", "train.max_steps=3", "--set", "train.batch_size=32",
                     "--set", "model.light.hidden=[8]", "--set", "model.booster.hidden=[8]"])


@pytest.mark.parametrize("split", ["train", "eval"])
def test_truncated_shard_fails_the_cli_naming_the_file(split, data_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    bad = sorted(data.glob(f"{split}-*"))[0]
    blob = bad.read_bytes()
    bad.write_bytes(blob[: len(blob) * 2 // 3])
    code = _train(data, tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert f"rocketctr train: " in err and bad.name in err, err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_an_empty_shard_file_is_named_too(data_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    bad = sorted(data.glob("train-*"))[-1]
    bad.write_bytes(b"")
    code = _train(data, tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 1 and bad.name in err, err[-2000:]
