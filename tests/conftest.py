"""Shared fixtures. Importing feature_specs first fixes the Keras flavour before TensorFlow loads."""

from __future__ import annotations

import os
from pathlib import Path

import feature_specs
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ROCKETCTR_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(sub: str) -> Path:
    """Path of a real data set under ../shared/data; skip the test with a reason when it is absent."""
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"real data {p} is absent (set ROCKETCTR_SHARED_DATA to the shared/data folder)")
    return p


@pytest.fixture
def synthetic_spec():
    return feature_specs.load_spec("synthetic")


@pytest.fixture(scope="session")
def spec():
    """The shipped synthetic spec (frozen dataclasses, so one instance serves every test); a test module that needs
    another spec defines its own `spec` fixture, which takes precedence."""
    return feature_specs.load_spec("synthetic")
