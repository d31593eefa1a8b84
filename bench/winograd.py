"""Winograd against the GEMM convolutions it replaced and PyTorch, per layer.

One 3x3 stride-1 conv of each ResNet-18 CIFAR stage at batch 32, float32: the forward pass
alone, and one ``forward_backward`` (forward, input gradient as the conv of the flipped kernel,
weight gradient, bias gradient) against torch's forward + backward of the same conv.
"Winograd" is the lowering's choice of tiles (``winograd.tile_size``: F(4x4, 3x3) on the
32x32 and 16x16 maps); "F(2x2)" the same with F(2x2, 3x3) tiles only
(``winograd.LARGE_TILE_MIN_PIXELS`` raised); "GEMM" with Winograd switched off
(``winograd.MIN_CHANNELS`` raised), so the lowering falls back to the shifted GEMM. Medians of
interleaved blocks, one run.

Run: ``python bench/winograd.py`` (and with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import environment_line, interleaved_medians, print_table  # noqa: E402

import engine  # noqa: E402
import graph.nn as nn  # noqa: E402
from backends.cpu import winograd  # noqa: E402

BATCH = 32
STAGES = [(64, 32), (128, 16), (256, 8), (512, 4)]  # (channels, map side) of ResNet-18 CIFAR


# The three ways: settings of ``winograd`` while compiling.
WAYS = {
    "Winograd": {},
    "F(2x2)": {"LARGE_TILE_MIN_PIXELS": 1 << 62},
    "GEMM": {"MIN_CHANNELS": 1 << 30},
}


def _compiled(layer: nn.Conv2d, shape, settings: dict[str, int]):
    """Inference and training executables of ``layer``, compiled under ``settings``."""
    saved = {name: getattr(winograd, name) for name in settings}
    try:
        for name, value in settings.items():
            setattr(winograd, name, value)
        inference = engine.compile(layer, shape, batch=BATCH)
        training = engine.compile(layer, shape, batch=BATCH, train=True, loss="mse")
    finally:
        for name, value in saved.items():
            setattr(winograd, name, value)
    for exe in (inference, training):
        exe.load_state_dict(layer.state_dict())
    return inference, training


def _layer_rows(channels: int, side: int, rng: np.random.Generator) -> list[list[str]]:
    """Forward and forward+backward times of one conv, each way and in torch."""
    layer, shape = nn.Conv2d(channels, channels, 3, padding=1), (channels, side, side)
    x = rng.standard_normal((BATCH, *shape)).astype(np.float32)
    target = rng.standard_normal((BATCH, *shape)).astype(np.float32)
    inference, training = zip(*(_compiled(layer, shape, way) for way in WAYS.values()), strict=True)
    twin = torch.nn.Conv2d(channels, channels, 3, padding=1)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    tx, tgy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(target)

    def torch_forward():
        with torch.no_grad():
            twin(tx)

    def torch_step():
        twin.zero_grad()
        twin(tx).backward(tgy)

    runs = [lambda exe=exe: exe.run(x) for exe in inference]
    steps = [lambda exe=exe: exe.forward_backward(x, target) for exe in training]
    forward = interleaved_medians([*runs, torch_forward], rounds=3, block=5)
    step = interleaved_medians([*steps, torch_step], rounds=3, block=5)
    return [
        [
            f"{channels}->{channels} {side}x{side}",
            label,
            *(f"{seconds * 1e3:.2f}" for seconds in times),
            f"{times[1] / times[0]:.2f}x",
            f"{times[2] / times[0]:.2f}x",
            f"{times[3] / times[0]:.2f}x",
        ]
        for label, times in (("forward", forward), ("fwd+bwd", step))
    ]


def main() -> None:
    rng = np.random.default_rng(0)
    rows = [row for channels, side in STAGES for row in _layer_rows(channels, side, rng)]
    print(environment_line())
    print_table(
        [
            "conv3x3, batch 32",
            "pass",
            *(f"{way} ms" for way in WAYS),
            "torch ms",
            "vs F(2x2)",
            "vs GEMM",
            "vs torch",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
