"""What each MPI process of tests/distributed runs (``mpirun -n N python -m
tests.distributed.mpi_worker COMMAND OUT ...``); also imported by the tests for the
one-process reference, so both sides build the same model, data and optimizer.

Commands:
    steps OUT MODEL BATCH STEPS MODE: ``train_step`` STEPS times on seeded random global
        batches of N x BATCH (this rank takes its slice), with BatchNorm MODE "local" or
        "sync" ("local-serial": local, gradients averaged without overlap); rank 0 writes the
        parameters, BatchNorm statistics and losses to OUT (.npz).
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


def train_steps(
    world: World, name: str, batch: int, steps: int, mode: str, fail: str | None = None
):
    """``mode``: "local" or "sync" BatchNorm; "-serial" after it: no overlap."""
    exe = compile_model(name, batch, world.size if mode.startswith("sync") else None)
    parallel = DataParallel(exe, world, overlap=not mode.endswith("-serial"))
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
    command, out = argv[0], argv[1]
    if command == "steps":
        name, batch, steps, mode, fail = argv[2], int(argv[3]), int(argv[4]), argv[5], None
    else:
        name, batch, steps, mode, fail = "lenet5", 8, 10, "local", command
    world = World.from_environment()
    with failing_together(world):
        parallel, losses = train_steps(world, name, batch, steps, mode, fail)
    # eval() gives every rank rank 0's BatchNorm statistics (per-process ones drift apart)
    parallel.eval()
    mine = np.concatenate([np.ravel(v) for _, v in sorted(parallel.state_dict().items())])
    agrees = np.array_equal(world.sum(mine), world.size * mine.astype(np.float64))
    if world.is_root:
        np.savez(out, **snapshot(parallel, losses), eval_state_agrees=agrees)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
