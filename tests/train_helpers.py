"""Shared helpers of the training-job tests: a small fixture dataset and a fast, seeded training config."""

from __future__ import annotations

from pathlib import Path

import feature_specs
from models.config import RunConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic.yaml"


def fixture_data(out_dir: Path, rows: int = 3000, seed: int = 0) -> Path:
    """A preprocessing output folder of the synthetic spec with planted signal (tests/fixtures_data.py)."""
    from tests.fixtures_data import synthetic_frame, write_fixture_dataset

    spec = feature_specs.load_spec("synthetic")
    return write_fixture_dataset(spec, synthetic_frame(spec, rows, seed), out_dir)


def fast_config(mode: str = "rocket", **train) -> RunConfig:
    """Small towers and high learning rates: a few dozen steps learn the fixture's signal."""
    over = {"model": {"light": {"kind": "mlp", "hidden": [16]}, "booster": {"kind": "mlp", "hidden": [32, 16]}},
            "train": {"mode": mode, "batch_size": 64, "epochs": 2, "shuffle_buffer": 512, "seed": 0,
                      "checkpoint_every_steps": 10, "log_every_steps": 5, "validation_fraction": 0.0,
                      "embedding_optimizer": {"name": "adagrad", "learning_rate": 0.2},
                      "light_optimizer": {"name": "adam", "learning_rate": 0.003},
                      "booster_optimizer": {"name": "adam", "learning_rate": 0.003}, **train}}
    return load_config(CONFIG, None, over)
