"""Shared test helpers: relative errors, tolerances, poisoned runs and small wrapper modules.

Oracles are PyTorch (CPU, float32 and float64). Tolerances follow DESIGN.md:
``||out - ref|| / ||ref||`` below 1e-5 (float32) or 1e-10 (float64) per op, 1e-4 / 1e-10 for
whole networks.
"""

from __future__ import annotations

import numpy as np
import torch

import engine
import graph.functional as F
from backends.cpu import winograd
from graph import nn

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


class Lambda(nn.Module):
    """A parameter-free layer that applies ``fn`` (graph.functional calls) to its input."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Net(nn.Module):
    """``layer`` after an optional Flatten, so its parameters are named ``layer.*``."""

    def __init__(self, layer: nn.Module, flatten: bool = False) -> None:
        super().__init__()
        self.flatten = nn.Flatten() if flatten else nn.Identity()
        self.layer = layer

    def forward(self, x):
        return self.layer(self.flatten(x))


def check(
    model: nn.Module, oracle, shape, dtype: str, rng: np.random.Generator, exact: bool = False
) -> None:
    """Run ``model`` on a fresh random batch and compare with ``oracle`` (a torch function);
    ``exact`` also demands bit equality (for ops that only move data)."""
    x = rng.standard_normal(shape).astype(dtype)
    out = run_poisoned(model, x, dtype)
    with torch.no_grad():
        ref = oracle(torch.from_numpy(x)).numpy()
    err = rel_error(out, ref)
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"
    if exact:
        np.testing.assert_array_equal(out, ref)


def run_with_random_params(
    model: nn.Module, x: np.ndarray, dtype: str, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Compile for ``x``, write fresh random parameters in ``dtype`` (BatchNorm variances in
    [0.1, 4]), poison, run once. Returns the output and the parameters as torch tensors."""
    exe = engine.compile(model, x.shape[1:], batch=x.shape[0], dtype=dtype)
    params = {}
    for name, array in exe.params.items():
        if name.endswith("running_var"):
            array[...] = rng.uniform(0.1, 4.0, array.shape)
        else:
            array[...] = 2.0 * rng.standard_normal(array.shape)
        params[name] = torch.from_numpy(array.copy())
    exe.poison_buffers()
    return exe.run(x), params


class ConvBlock(nn.Module):
    """conv (``kernel`` x ``kernel``, same padding) -> eval BatchNorm -> (+ x) -> activation:
    one conv2d_fused node, for the fused-epilogue tests of the conv kernels."""

    def __init__(self, channels: int, kernel: int, residual: bool, activation: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=True)
        self.bn = nn.BatchNorm2d(channels)
        self.act = activation
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(F.add(y, x) if self.residual else y)


class TorchConvBlock(torch.nn.Module):
    """``ConvBlock``'s torch twin."""

    def __init__(self, channels: int, kernel: int, residual: bool, activation) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=True)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.act = activation
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(y + x if self.residual else y)


# Epilogue activations: (ours, torch's, whether the register tiles apply it in registers).
TILE_ACTIVATIONS = {
    "relu": (nn.ReLU, torch.nn.ReLU, True),
    "relu6": (nn.ReLU6, torch.nn.ReLU6, True),
    "none": (nn.Identity, torch.nn.Identity, True),
    "leaky_relu": (lambda: nn.LeakyReLU(0.1), lambda: torch.nn.LeakyReLU(0.1), False),
}


def random_eval_state(exe, rng, dtype: str) -> dict[str, np.ndarray]:
    """Fresh random values for every entry of ``exe``'s state, variances in [0.3, 3]."""
    state = {}
    for key, value in exe.state_dict().items():
        shape = np.shape(value)
        low_high = key.endswith("running_var")
        random = rng.uniform(0.3, 3.0, shape) if low_high else rng.standard_normal(shape)
        state[key] = random.astype(dtype)
    return state


def assert_training_matches(model, x, target, forced, kernel, switch_off) -> None:
    """One float64 MSE training step of ``model`` (from its own weights) with ``kernel`` in
    its forward (``forced``: a ``record_steps`` list), then again after ``switch_off()``
    (which takes the kernel away): the same loss within 1e-12 and the same gradients within
    float64 rounding."""

    def step():
        exe = engine.compile(
            model, x.shape[1:], batch=x.shape[0], dtype="float64", train=True, loss="mse"
        )
        exe.load_state_dict({k: np.asarray(v, np.float64) for k, v in model.state_dict().items()})
        loss = exe.forward_backward(x, target)
        return loss, {k: np.array(v) for k, v in exe.grads.items()}

    kernel_loss, kernel_grads = step()
    assert kernel in [name for name, _ in forced]
    switch_off()
    loss, grads = step()
    assert abs(kernel_loss - loss) <= 1e-12 * abs(loss)
    for key, grad in grads.items():
        assert rel_error(kernel_grads[key], grad) < OP_TOLERANCE["float64"]


def record_steps(monkeypatch, kernels) -> list[tuple[str, str]]:
    """Spy on ``Kernel.step`` of ``kernels``: the returned list collects (kernel name, node
    name) of every step they make, so a test can assert which algorithm a lowering chose."""
    used: list[tuple[str, str]] = []
    for kernel in kernels:

        def spy(node_name, *args, _step=kernel.step, _name=kernel.name, **kwargs):
            used.append((_name, node_name))
            return _step(node_name, *args, **kwargs)

        monkeypatch.setattr(kernel, "step", spy)
    return used


# (images, tile rows, private) per Winograd chunk (``winograd._schedule``); None: the real
# schedule with CHUNK_BYTES unbounded (a shared chunk holds the whole batch); rows None: all
# of an image's tile rows.
WINOGRAD_CHUNKS = [None, (2, None, 0), (1, 1, 0), (1, 2, 0), (1, 2, 1), (2, None, 1)]


def force_winograd_chunks(monkeypatch, chunks: tuple[int, int | None, int] | None) -> None:
    """Make the Winograd lowerings cut the batch into ``chunks`` (see WINOGRAD_CHUNKS), so
    the tests cover several chunks of whole images and of tile rows, with a partial last one,
    on both schedules (the weight gradient always takes the shared one)."""
    if chunks is None:
        monkeypatch.setattr(winograd, "CHUNK_BYTES", 1 << 40)
        return
    images, rows, private = chunks

    def schedule(node, allow_private, tile):
        all_rows = winograd._tiles(node, tile)[0]
        return images, rows or all_rows, private if allow_private else 0

    monkeypatch.setattr(winograd, "_schedule", schedule)
