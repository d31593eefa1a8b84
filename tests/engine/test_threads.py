"""Threads: ``run`` is safe from several threads (a lock around each call's use of the shared
buffers), and clones share the weights but not the buffers, so they run in parallel and give
the serial results bit for bit."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import engine
import zoo
from engine.optim import SGD

THREADS, ROUNDS, BATCH = 4, 2, 2
INPUT = (3, 32, 32)  # large enough that the convs take the parallel (OpenMP) kernels


@pytest.fixture(scope="module")
def exe() -> engine.Executable:
    return engine.compile(zoo.get("resnet18_cifar"), INPUT, batch=BATCH)


def _inputs(rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.standard_normal((BATCH, *INPUT)).astype(np.float32) for _ in range(THREADS * ROUNDS)
    ]


def _in_threads(executables: list[engine.Executable], xs: list[np.ndarray]) -> list[bytes]:
    """Thread t runs inputs t, t + THREADS, ... on ``executables[t]``, all starting at once."""
    results: list[bytes | None] = [None] * len(xs)
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(t, len(xs), THREADS):
                results[i] = executables[t](xs[i]).tobytes()
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def test_four_threads_on_clones_match_serial_runs(exe, rng):
    xs = _inputs(rng)
    serial = [exe.run(x).tobytes() for x in xs]
    clones = [exe.clone() for _ in range(THREADS)]
    for clone in clones:
        clone.poison_buffers()
    assert _in_threads(clones, xs) == serial


def test_four_threads_on_one_executable_match_serial_runs(exe, rng):
    xs = _inputs(rng)
    serial = [exe.run(x).tobytes() for x in xs]
    assert _in_threads([exe] * THREADS, xs) == serial


def test_clone_shares_weights_and_owns_its_buffers(exe, rng):
    clone = exe.clone()
    for name, array in exe.params.items():
        assert clone.params[name] is array, name  # the same buffer, not a copy
    assert not np.shares_memory(clone._input, exe._input)
    assert not np.shares_memory(clone._output, exe._output)
    assert not np.shares_memory(clone._inference.arena, exe._inference.arena)
    x = rng.standard_normal((BATCH, *INPUT)).astype(np.float32)
    before = clone.run(x)
    weight = exe.params["fc.weight"]
    saved = weight.copy()
    try:
        weight[...] = rng.standard_normal(weight.shape)  # written through the original
        after = clone.run(x)
        assert not np.array_equal(after, before)
        assert after.tobytes() == exe.run(x).tobytes()
    finally:
        weight[...] = saved


def test_clone_of_a_training_executable_runs_inference_only(rng):
    trainer = engine.compile(
        zoo.get("lenet5"), (1, 28, 28), batch=4, train=True, optimizer=SGD(momentum=0.9)
    )
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    trainer.train_step(x, rng.integers(0, 10, 4))
    clone = trainer.clone()
    assert clone.optimizer is None and clone.training_graph is None
    assert not clone.options.train and clone.options.optimize == trainer.options.optimize
    assert clone(x).tobytes() == trainer.run(x).tobytes()
    with pytest.raises(RuntimeError, match="compiled without train=True"):
        clone.train()
    trainer.train_step(x, rng.integers(0, 10, 4))  # the update is seen by the clone
    assert clone(x).tobytes() == trainer.run(x).tobytes()
