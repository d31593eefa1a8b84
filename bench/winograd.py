"""Winograd F(2x2, 3x3) against the GEMM convolutions it replaced and PyTorch, per layer.

One 3x3 stride-1 conv of each ResNet-18 CIFAR stage at batch 32, float32: the forward pass
alone, and one ``forward_backward`` (forward, input gradient as the conv of the flipped kernel,
weight gradient, bias gradient) against torch's forward + backward of the same conv. "GEMM" is
the same network compiled with Winograd switched off (``winograd.MIN_CHANNELS`` raised), so the
lowering falls back to the shifted GEMM. Medians of interleaved blocks, one run.

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


def _compiled(layer: nn.Conv2d, shape, use_winograd: bool):
    """Inference and training executables of ``layer``, with or without Winograd."""
    saved = winograd.MIN_CHANNELS
    winograd.MIN_CHANNELS = saved if use_winograd else 1 << 30
    try:
        inference = engine.compile(layer, shape, batch=BATCH)
        training = engine.compile(layer, shape, batch=BATCH, train=True, loss="mse")
    finally:
        winograd.MIN_CHANNELS = saved
    for exe in (inference, training):
        exe.load_state_dict(layer.state_dict())
    return inference, training


def _layer_rows(channels: int, side: int, rng: np.random.Generator) -> list[list[str]]:
    """Forward and forward+backward times of one conv, three ways."""
    layer, shape = nn.Conv2d(channels, channels, 3, padding=1), (channels, side, side)
    x = rng.standard_normal((BATCH, *shape)).astype(np.float32)
    target = rng.standard_normal((BATCH, *shape)).astype(np.float32)
    (wino, wino_train), (gemm, gemm_train) = (
        _compiled(layer, shape, flag) for flag in (True, False)
    )
    twin = torch.nn.Conv2d(channels, channels, 3, padding=1)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    tx, tgy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(target)

    def torch_forward():
        with torch.no_grad():
            twin(tx)

    def torch_step():
        twin.zero_grad()
        twin(tx).backward(tgy)

    forward = interleaved_medians(
        [lambda: wino.run(x), lambda: gemm.run(x), torch_forward], rounds=3, block=5
    )
    step = interleaved_medians(
        [
            lambda: wino_train.forward_backward(x, target),
            lambda: gemm_train.forward_backward(x, target),
            torch_step,
        ],
        rounds=3,
        block=5,
    )
    return [
        [
            f"{channels}->{channels} {side}x{side}",
            label,
            f"{ours * 1e3:.2f}",
            f"{old * 1e3:.2f}",
            f"{ref * 1e3:.2f}",
            f"{old / ours:.2f}x",
            f"{ref / ours:.2f}x",
        ]
        for label, (ours, old, ref) in (("forward", forward), ("fwd+bwd", step))
    ]


def main() -> None:
    rng = np.random.default_rng(0)
    rows = [row for channels, side in STAGES for row in _layer_rows(channels, side, rng)]
    print(environment_line())
    print_table(
        ["conv3x3, batch 32", "pass", "Winograd ms", "GEMM ms", "torch ms", "vs GEMM", "vs torch"],
        rows,
    )


if __name__ == "__main__":
    main()
