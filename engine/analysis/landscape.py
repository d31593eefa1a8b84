"""Loss landscapes (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").

The loss is evaluated at ``theta + alpha * d1 (+ beta * d2)`` over a grid, where ``theta`` are
the trained weights and ``d1``, ``d2`` random Gaussian directions, *filter-normalised*: each
filter of a direction (a slice along the first axis of a conv or linear weight: one output
channel) is rescaled to the norm of the matching trained filter, so the picture does not depend
on the scale invariance of ReLU nets with BatchNorm. Biases and BatchNorm parameters (the 1-D
tensors) get a zero direction, as in the paper; BatchNorm's running statistics stay as trained.

Each grid point loads the perturbed weights into the compiled executable (in place, no
recompile) and evaluates loss and top-1 accuracy over a fixed data subset; the trained weights
are restored afterwards. ``interpolate`` does the same along the straight line between two
checkpoints' weights (Goodfellow et al. 2015), running statistics included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.checkpoint import write_atomically
from engine.data import Dataset
from engine.executable import Executable
from engine.train import evaluate


@dataclass(frozen=True)
class Landscape:
    """Loss and accuracy over a grid: [len(alphas)] for 1-D (``betas`` None), else
    [len(alphas), len(betas)]. For an interpolation, ``alphas`` are the weights t of the line
    (1 - t) * start + t * end."""

    alphas: np.ndarray
    betas: np.ndarray | None
    loss: np.ndarray
    accuracy: np.ndarray
    kind: str  # "direction" or "interpolation"


def trainable(exe: Executable) -> list[str]:
    """The parameters a direction moves: trainable ones (BatchNorm statistics excluded)."""
    return [v.name for v in exe.traced_graph.params if v.role == "param"]


def filter_normalized_direction(
    weights: Mapping[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A Gaussian direction with each filter rescaled to its trained filter's norm; zero for
    1-D tensors (biases, BatchNorm weight and bias)."""
    direction = {}
    for name, weight in weights.items():
        if weight.ndim <= 1:
            direction[name] = np.zeros_like(weight)
            continue
        d = rng.standard_normal(weight.shape)
        axes = tuple(range(1, weight.ndim))
        d_norm = np.sqrt((d**2).sum(axis=axes, keepdims=True))
        w_norm = np.sqrt((weight.astype(np.float64) ** 2).sum(axis=axes, keepdims=True))
        direction[name] = (d * w_norm / np.maximum(d_norm, 1e-30)).astype(weight.dtype)
    return direction


def landscape(
    exe: Executable,
    data: Dataset,
    preprocess: Callable | None,
    grid: int,
    span: float,
    dims: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> Landscape:
    """Loss and accuracy on ``grid`` points per axis in [-span, span] along ``dims`` (1 or 2)
    filter-normalised random directions drawn from ``seed``."""
    if dims not in (1, 2):
        raise ValueError(f"a landscape has 1 or 2 dimensions, but got dims={dims}")
    names = trainable(exe)
    center = {name: exe.params[name].copy() for name in names}
    rng = np.random.default_rng(seed)
    directions = [filter_normalized_direction(center, rng) for _ in range(dims)]
    alphas = np.linspace(-span, span, grid)
    betas = alphas.copy() if dims == 2 else None
    points = [(a, b) for a in alphas for b in (betas if betas is not None else [0.0])]

    def weights_at(point: tuple[float, float]) -> dict[str, np.ndarray]:
        coefficients = point[:dims]
        return {
            name: center[name]
            + sum(c * d[name] for c, d in zip(coefficients, directions, strict=True))
            for name in names
        }

    loss, accuracy = _sweep(exe, data, preprocess, points, weights_at, center, progress)
    shape = (grid, grid) if dims == 2 else (grid,)
    return Landscape(alphas, betas, loss.reshape(shape), accuracy.reshape(shape), "direction")


def interpolate(
    exe: Executable,
    data: Dataset,
    preprocess: Callable | None,
    start: Mapping[str, np.ndarray],
    end: Mapping[str, np.ndarray],
    steps: int,
    low: float = -0.5,
    high: float = 1.5,
    progress: bool = True,
) -> Landscape:
    """Loss and accuracy at ``steps`` points t in [low, high] of (1 - t) * start + t * end,
    over every parameter and state tensor of ``start`` (weights by ``state_dict`` key)."""
    names = list(exe.params)
    missing = [name for name in names if name not in start or name not in end]
    if missing:
        raise ValueError(f"interpolate: no tensor for {missing[:5]} in both checkpoints")
    center = {name: exe.params[name].copy() for name in names}
    ts = np.linspace(low, high, steps)

    def weights_at(point: tuple[float, float]) -> dict[str, np.ndarray]:
        t = point[0]
        return {
            name: ((1 - t) * start[name] + t * end[name]).astype(center[name].dtype)
            for name in names
        }

    points = [(t, 0.0) for t in ts]
    loss, accuracy = _sweep(exe, data, preprocess, points, weights_at, center, progress)
    return Landscape(ts, None, loss, accuracy, "interpolation")


def _sweep(exe, data, preprocess, points, weights_at, center, progress):
    """Evaluate every point (a progress bar over them); restore ``center`` afterwards, also
    when interrupted."""
    loss, accuracy = np.empty(len(points)), np.empty(len(points))
    iterator = points
    if progress:
        from tqdm import tqdm

        iterator = tqdm(points, desc="landscape", unit="point", leave=False)
    try:
        for i, point in enumerate(iterator):
            exe.set_tensors(weights_at(point))
            scores = evaluate(exe, data, preprocess)
            loss[i], accuracy[i] = scores["loss"], scores["top1"]
    finally:
        exe.set_tensors(center)
    return loss, accuracy


def landscape_csv(result: Landscape) -> str:
    """One row per grid point: ``alpha,beta,loss,accuracy`` (``t,loss,accuracy`` for an
    interpolation; ``alpha,loss,accuracy`` in 1-D)."""
    if result.betas is None:
        header = "t,loss,accuracy" if result.kind == "interpolation" else "alpha,loss,accuracy"
        rows = zip(result.alphas, result.loss, result.accuracy, strict=True)
    else:
        header = "alpha,beta,loss,accuracy"
        rows = (
            (a, b, result.loss[i, j], result.accuracy[i, j])
            for i, a in enumerate(result.alphas)
            for j, b in enumerate(result.betas)
        )
    lines = [header] + [",".join(f"{float(v):.9g}" for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def write_landscape_csv(result: Landscape, path: str | Path) -> None:
    write_atomically(Path(path), landscape_csv(result).encode())
