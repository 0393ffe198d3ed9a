"""Shared test fixtures: where the real data sets are, a quiet TensorFlow and a fast-compiling XLA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Under JAX the tests are compile-bound (every weight shape compiles its own initialiser, every
# model its train step) and run tiny inputs: XLA without its backend optimisations compiles
# 2-4x faster, and the whole JAX subset takes 46 s instead of 117 s. Numbers are unchanged
# within the tests' tolerances; speed is measured in benchmarks/, not here.
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets beside the repository; tests using them skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA
