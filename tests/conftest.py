"""Fixtures shared by every test. Helpers that tests import live in ``tests/helpers.py``."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random data per test (the seed is printed on failure by pytest's -ra summary)."""
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)
