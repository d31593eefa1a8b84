"""Per-step overhead: a 20-layer net of 3x3 conv (8 channels, 8x8 input) + ReLU at batch 1.

Prints, against PyTorch eager in the same run:
- whole-net time per step (40 steps: 20 convs + 20 ReLUs) for ``exe.run`` and for the executor
  loop alone (no input/output copies);
- the executor's pure dispatch cost per step, from a plan of 10,000 no-op cfunc steps.

Run: ``python bench/dispatch.py`` (and with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from numba import cfunc

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from backends.cpu._runtime import Runner  # noqa: E402
from common import environment_line, median_time, print_table  # noqa: E402

import engine  # noqa: E402
import graph.nn as nn  # noqa: E402
from backends.cpu.kernels import STEP_SIGNATURE  # noqa: E402

LAYERS, CHANNELS, SIZE = 20, 8, 8


def _nets() -> tuple[nn.Module, torch.nn.Module]:
    ours = nn.Sequential(
        *[
            m
            for _ in range(LAYERS)
            for m in (nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU())
        ]
    )
    theirs = torch.nn.Sequential(
        *[
            m
            for _ in range(LAYERS)
            for m in (torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), torch.nn.ReLU())
        ]
    )
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs.eval()


@cfunc(STEP_SIGNATURE)
def _noop(ptrs, ints):
    return 0


def _dispatch_seconds_per_step(count: int = 10_000) -> float:
    runner = Runner(
        np.full(count, _noop.address, np.uintp),
        np.zeros(1, np.uintp),
        np.zeros(1, np.int64),
        np.zeros(count, np.int64),
        np.zeros(count, np.int64),
    )
    return median_time(lambda: runner.run(), 25) / count


def main() -> None:
    torch.set_grad_enabled(False)
    ours, theirs = _nets()
    exe = engine.compile(ours, (CHANNELS, SIZE, SIZE), batch=1)
    print(environment_line())
    x = np.random.default_rng(0).standard_normal((1, CHANNELS, SIZE, SIZE)).astype(np.float32)
    tx = torch.from_numpy(x)
    error = np.linalg.norm(exe.run(x) - theirs(tx).numpy()) / np.linalg.norm(theirs(tx).numpy())
    steps = 2 * LAYERS
    run_s = median_time(lambda: exe.run(x), 25, min_seconds=0.02)
    loop_s = median_time(lambda: exe._execute(), 25, min_seconds=0.02)
    torch_s = median_time(lambda: theirs(tx), 25, min_seconds=0.02)
    dispatch = _dispatch_seconds_per_step()
    us = lambda s: f"{s * 1e6:.3f}"  # noqa: E731
    print_table(
        ["", "total us", "us per step", "vs torch"],
        [
            ["convforge run()", us(run_s), us(run_s / steps), f"{torch_s / run_s:.1f}x"],
            ["convforge executor loop", us(loop_s), us(loop_s / steps), f"{torch_s / loop_s:.1f}x"],
            ["pytorch eager", us(torch_s), us(torch_s / steps), "1.0x"],
            ["dispatch only (no-op steps)", "-", us(dispatch), "-"],
        ],
    )
    print(f"relative difference to PyTorch: {error:.1e}")


if __name__ == "__main__":
    main()
