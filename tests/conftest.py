"""Shared test helpers: relative errors, tolerances, and torch twins of graph.nn models.

Oracles are PyTorch (CPU, float32 and float64). Tolerances follow DESIGN.md:
``||out - ref|| / ||ref||`` below 1e-5 (float32) or 1e-10 (float64) per op, 1e-4 / 1e-10 for
whole networks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine

OP_TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
NET_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
DTYPES = ("float32", "float64")


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``||actual - expected|| / ||expected||``; NaN anywhere in ``actual`` gives inf."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape} != expected {expected.shape}")
    if not np.all(np.isfinite(actual)):
        return float("inf")
    scale = np.linalg.norm(expected)
    return float(np.linalg.norm(actual - expected) / (scale if scale > 0 else 1.0))


def run_poisoned(model, x: np.ndarray, dtype: str) -> np.ndarray:
    """Compile ``model`` for ``x``'s shape, poison every buffer with NaN, run once."""
    exe = engine.compile(model, x.shape[1:], batch=x.shape[0], dtype=dtype)
    exe.poison_buffers()
    return exe.run(x.astype(dtype))


def torch_twin(model, torch_model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """Load ``model``'s weights into ``torch_model`` (strictly: the keys must match)."""
    state = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
    torch_model.load_state_dict(state, strict=True)
    torch_model = torch_model.eval()
    return torch_model.double() if dtype == "float64" else torch_model.float()


def torch_run(torch_model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch_model(torch.from_numpy(x)).numpy()


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random data per test (the seed is printed on failure by pytest's -ra summary)."""
    seed = int(np.random.SeedSequence().entropy % (2**32))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)
