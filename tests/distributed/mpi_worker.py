"""What each MPI process of tests/distributed runs (``mpirun -n N python -m
tests.distributed.mpi_worker MODE OUT ...``); also imported by the tests for the one-process
reference, so both sides build the same model, data and optimizer.

Modes:
    steps OUT MODEL BATCH STEPS SYNC: ``train_step`` STEPS times on seeded random global batches
        of N x BATCH (this rank takes its slice); rank 0 writes the parameters, BatchNorm
        statistics and losses to OUT (.npz).
    kill OUT / hang OUT: as steps with lenet5, but rank 1 dies (SIGKILL) or hangs at step 3.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

import engine
import zoo
from engine.distributed import DataParallel, World, failing_together
from engine.optim import SGD
from graph import nn

CLASSES = 10


def bn_net() -> nn.Module:
    """Two conv + BatchNorm + ReLU blocks (one without affine), pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8, affine=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )


MODELS = {"lenet5": (lambda: zoo.get("lenet5"), (1, 28, 28)), "bn_net": (bn_net, (1, 12, 12))}


def compile_model(name: str, batch: int, sync: int | None = None):
    """The model, seeded the same in every process, compiled in float64 with momentum SGD."""
    build, shape = MODELS[name]
    nn.manual_seed(3)
    return engine.compile(
        build(),
        shape,
        batch=batch,
        dtype="float64",
        train=True,
        optimizer=SGD(lr=0.05, momentum=0.9, weight_decay=1e-4),
        sync_batch_norm=sync,
    )


def global_batch(name: str, size: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Step ``step``'s global batch of ``size`` images (the same in every process)."""
    rng = np.random.default_rng(1000 + step)
    shape = MODELS[name][1]
    x = rng.standard_normal((size, *shape))
    return x, rng.integers(0, CLASSES, size)


def snapshot(exe, losses: list[float]) -> dict[str, np.ndarray]:
    return {**{k: np.array(v) for k, v in exe.state_dict().items()}, "losses": np.array(losses)}


def train_steps(world: World, name: str, batch: int, steps: int, sync: bool, fail: str | None):
    exe = compile_model(name, batch, world.size if sync else None)
    parallel = DataParallel(exe, world)
    losses = []
    for step in range(steps):
        if fail is not None and step == 3 and world.rank == 1:
            if fail == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        x, y = global_batch(name, batch * world.size, step)
        losses.append(parallel.train_step(world.local(x), world.local(y)))
    return parallel, losses


def main(argv: list[str]) -> int:
    mode, out = argv[0], argv[1]
    if mode == "steps":
        name, batch, steps, sync = argv[2], int(argv[3]), int(argv[4]), argv[5] == "sync"
        fail = None
    else:
        name, batch, steps, sync, fail = "lenet5", 8, 10, False, mode
    world = World.from_environment()
    with failing_together(world):
        parallel, losses = train_steps(world, name, batch, steps, sync, fail)
    if world.is_root:
        np.savez(out, **snapshot(parallel, losses))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
