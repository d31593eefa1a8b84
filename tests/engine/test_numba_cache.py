"""Cached kernels load in a fresh process (DESIGN.md, known traps).

A cached cfunc whose callee is a parallel ``@njit`` kernel aborts the next process at load
(``LLVM ERROR: Symbol not found: allocate_sched``) unless Numba's thread pool is launched first.
The abort kills the interpreter, so only a fresh process shows it: this test compiles and runs a
conv net large enough to take the parallel kernels in two new interpreters, one after the other
(the first may populate the cache, the second must load it), and checks both against torch.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import torch

from backends.cpu.lowering import PARALLEL_MIN_WORK
from graph import nn
from tests.helpers import NET_TOLERANCE, rel_error, torch_run, torch_twin

BATCH, CHANNELS, SIZE, SEED = 2, 16, 32, 7
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# Shared by this process (the torch oracle) and the fresh ones (ConvForge), so both see one model.
MODEL_SOURCE = textwrap.dedent(
    f"""
    import numpy as np

    def build(lib):
        return lib.Sequential(
            lib.Conv2d({CHANNELS}, {CHANNELS}, 3), lib.BatchNorm2d({CHANNELS}), lib.ReLU(),
            lib.MaxPool2d(2), lib.Conv2d({CHANNELS}, {CHANNELS}, 3, padding=1), lib.ReLU(),
            lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Linear({CHANNELS}, 10),
        )

    def make_input(dtype):
        rng = np.random.default_rng({SEED})
        return rng.standard_normal(({BATCH}, {CHANNELS}, {SIZE}, {SIZE})).astype(dtype)
    """
)

CHILD = MODEL_SOURCE + textwrap.dedent(
    f"""
    import json
    import engine
    from graph import nn

    nn.manual_seed({SEED})
    model = build(nn)
    for dtype in ("float32", "float64"):
        exe = engine.compile(model, ({CHANNELS}, {SIZE}, {SIZE}), batch={BATCH}, dtype=dtype)
        exe.poison_buffers()
        out = exe.run(make_input(dtype))
        print(json.dumps({{"dtype": dtype, "out": out.astype(float).tolist()}}))
    """
)


def _run_fresh_process() -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT
    )
    assert "LLVM ERROR" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stderr[-2000:]}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_first_conv_takes_the_parallel_kernel():
    """The premise: the 16->16 3x3 conv at 32x32 is above the serial/parallel threshold."""
    out_numel = BATCH * CHANNELS * (SIZE - 2) * (SIZE - 2)
    assert out_numel * CHANNELS * 3 * 3 >= PARALLEL_MIN_WORK


def test_cached_parallel_kernels_load_in_fresh_processes():
    first, second = _run_fresh_process(), _run_fresh_process()
    assert [r["dtype"] for r in first] == ["float32", "float64"]
    assert first == second  # the same bits, compiled or loaded from the cache

    namespace: dict = {}
    exec(MODEL_SOURCE, namespace)
    nn.manual_seed(SEED)
    model = namespace["build"](nn)
    for record in first:
        dtype = record["dtype"]
        twin = torch_twin(model, namespace["build"](torch.nn), dtype)
        expected = torch_run(twin, namespace["make_input"](dtype))
        assert rel_error(np.array(record["out"]), expected) < NET_TOLERANCE[dtype]
