"""The GPU backend without a GPU: compile-time messages when CuPy or a device is missing, and
the device-neutral Executable API (params, grads, state_dict, load_state_dict, checkpoints)
on the emulated device, whose ``to_host`` returns copies as a real device does."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import engine
import graph.nn as nn


def _compile_message(monkeypatch, cupy_module) -> str:
    monkeypatch.setitem(sys.modules, "cupy", cupy_module)
    with pytest.raises(RuntimeError) as info:
        engine.compile(nn.ReLU(), (1, 4, 4), batch=2, backend="gpu")
    return str(info.value)


def test_without_cupy_compile_says_so_in_one_line(monkeypatch):
    message = _compile_message(monkeypatch, None)  # None in sys.modules: ImportError
    assert "\n" not in message and "needs CuPy" in message and '.[gpu]"' in message


def test_with_cupy_but_no_device_compile_says_so_in_one_line(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.is_available = lambda: False
    message = _compile_message(monkeypatch, fake)
    assert "\n" not in message and "usable NVIDIA GPU" in message


def test_unsupported_op_fails_at_compile_naming_the_layer(monkeypatch):
    from backends.gpu import lowering

    monkeypatch.delitem(lowering.LOWERINGS, "relu")
    model = nn.Sequential(nn.ReLU())
    with pytest.raises(NotImplementedError, match=r"'gpu-emulated' has no kernel for \['relu'\]"):
        engine.compile(model, (1, 4, 4), batch=2, backend="gpu-emulated")


def test_params_are_copies_and_load_state_dict_writes_through():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU())
    exe = engine.compile(model, (2, 4, 4), batch=2, backend="gpu-emulated")
    before = exe.params["0.weight"]
    before[...] = 0  # a copy: the device keeps its weights
    assert np.any(exe.params["0.weight"] != 0)
    state = exe.state_dict()
    state["0.weight"] = np.full_like(state["0.weight"], 0.5)
    exe.load_state_dict(state)
    np.testing.assert_array_equal(exe.params["0.weight"], state["0.weight"])
    assert exe.memory_report()["param_bytes"] == 4 * (3 * 2 * 9 + 3)


def test_poisoned_output_is_overwritten_by_a_run(rng):
    model = nn.Sequential(nn.ReLU())
    exe = engine.compile(model, (1, 3, 3), batch=2, backend="gpu-emulated")
    exe.poison_buffers()
    x = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(exe.run(x), np.maximum(x, 0))
