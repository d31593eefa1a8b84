"""``Executable.run(x, capture=...)`` and ``forward_backward(x, y, capture=...)``: intermediate
values and their gradients against PyTorch (the same weights, intermediates computed by hand in
the twin), including values the inference passes fuse away; ordinary runs unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as T

import engine
import graph.functional as F
from engine.capture import capturable
from graph import nn
from tests.helpers import rel_error

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
NAMES = ["conv1", "bn1", "relu", "conv2", "add", "relu_1", "drop"]


class _Net(nn.Module):
    """conv-BN-ReLU, then a conv whose residual add and ReLU the inference passes fuse."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        z = self.relu(F.add(self.conv2(y), y))
        return self.fc(self.drop(F.flatten(self.pool(z), 1)))


class _Twin(T.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = T.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = T.BatchNorm2d(4)
        self.conv2 = T.Conv2d(4, 4, 3, padding=1)
        self.fc = T.Linear(4, 5)

    def values(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate by our value name (dropout is the identity in eval mode)."""
        v = {"conv1": self.conv1(x)}
        v["bn1"] = self.bn1(v["conv1"])
        v["relu"] = torch.relu(v["bn1"])
        v["conv2"] = self.conv2(v["relu"])
        v["add"] = v["conv2"] + v["relu"]
        v["relu_1"] = torch.relu(v["add"])
        v["drop"] = v["relu_1"].mean(dim=(2, 3))
        v["fc"] = self.fc(v["drop"])
        return v


def _compiled(dtype: str, train: bool = False):
    """The net compiled with random weights and BatchNorm statistics, and its torch twin."""
    rng = np.random.default_rng(0)
    nn.manual_seed(0)
    exe = engine.compile(_Net(), (3, 6, 6), batch=2, dtype=dtype, train=train)
    for name, array in exe.params.items():
        low = 0.5 if name.endswith("running_var") else -1.0
        array[...] = rng.uniform(low, 1.0, array.shape)
    twin = _Twin().double() if dtype == "float64" else _Twin()
    state = {k: torch.from_numpy(v.copy()) for k, v in exe.params.items()}
    twin.load_state_dict(state, strict=False)
    return exe, twin


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_captured_values_match_torch_even_where_the_passes_fuse_them(dtype):
    exe, twin = _compiled(dtype)
    assert "conv2d_fused" in {node.op for node in exe.graph.nodes}  # conv1..relu_1 fused away
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(dtype)
    exe.poison_buffers()
    out, values = exe.run(x, capture=NAMES)
    with torch.no_grad():
        expected = twin.eval().values(torch.from_numpy(x))
    assert set(values) == set(NAMES)
    for name in NAMES:
        assert values[name].dtype == dtype
        assert rel_error(values[name], expected[name].numpy()) < TOLERANCE[dtype], name
    assert rel_error(out, expected["fc"].numpy()) < TOLERANCE[dtype]


def test_ordinary_runs_keep_their_fused_plan_and_give_the_same_output():
    exe, _ = _compiled("float64")
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6))
    before, arena, steps = exe.run(x), exe.memory_report()["arena_bytes"], repr(exe)
    out, values = exe.run(x, capture=["bn1"])
    np.testing.assert_array_equal(out, before)
    after = exe.run(x)
    assert isinstance(after, np.ndarray)
    np.testing.assert_array_equal(after, before)
    assert exe.memory_report()["arena_bytes"] == arena and repr(exe) == steps
    # values kept for a capture live outside the capture plan's arena, not in it
    plan = exe._capture_plans[(("bn1",), False, False)].plan
    assert "bn1" in plan.storage and "bn1" not in plan.memory.offsets
    # the cached plan sees weights loaded after it was built (conv1 is linear, no bias)
    exe.params["conv1.weight"][...] *= 2.0
    doubled = exe.run(x, capture=["conv1", "bn1"])[1]["conv1"]
    exe.params["conv1.weight"][...] /= 2.0
    single = exe.run(x, capture=["conv1", "bn1"])[1]["conv1"]
    np.testing.assert_allclose(doubled, 2.0 * single, rtol=1e-12)


def test_unknown_name_lists_the_capturable_values():
    exe, _ = _compiled("float32")
    x = np.zeros((2, 3, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"\['layer1'\] not computed.*conv1, bn1, relu, conv2"):
        exe.run(x, capture=["layer1"])
    assert capturable(exe) == [*NAMES[:6], "pool", "flatten", "drop", "fc"]


def test_gradients_of_captured_values_match_torch_autograd():
    exe, twin = _compiled("float64", train=True)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((2, 3, 6, 6)), np.array([1, 4])
    exe.forward_backward(x, y)
    grads_before = {k: v.copy() for k, v in exe.grads.items()}
    names = ["bn1", "relu", "conv2", "flatten", "drop"]
    loss, values, grads = exe.forward_backward(x, y, capture=names)
    twin.train()  # batch statistics, as the training plan
    values_t = twin.values(torch.from_numpy(x))
    for tensor in values_t.values():
        tensor.retain_grad()
    # the dropout mask this forward drew: its output over its input (a ReLU's mean: no zeros)
    mask = torch.from_numpy(values["drop"] / values["flatten"])
    logits = twin.fc(values_t["drop"] * mask)
    loss_t = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss_t.backward()
    assert abs(loss - loss_t.item()) < 1e-10 * abs(loss_t.item())
    for name in ("bn1", "relu", "conv2"):
        assert rel_error(values[name], values_t[name].detach().numpy()) < 1e-10, name
        assert rel_error(grads[name], values_t[name].grad.numpy()) < 1e-10, name
    for name, grad in exe.grads.items():  # the ordinary gradients were left alone
        np.testing.assert_array_equal(grad, grads_before[name])


def test_gradient_capture_needs_a_training_executable():
    exe, _ = _compiled("float32")
    x = np.zeros((2, 3, 6, 6), np.float32)
    with pytest.raises(RuntimeError, match="compiled without train=True"):
        exe.forward_backward(x, np.array([0, 1]), capture=["relu"])


def test_training_mode_capture_uses_batch_statistics():
    exe, twin = _compiled("float64", train=True)
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6))
    exe.train()
    _, values = exe.run(x, capture=["bn1", "relu"])
    with torch.no_grad():
        expected = twin.train().values(torch.from_numpy(x))
    for name in ("bn1", "relu"):
        assert rel_error(values[name], expected[name].numpy()) < 1e-10, name
    exe.eval()  # then the running statistics, updated by that forward as torch's were
    _, values = exe.run(x, capture=["bn1"])
    with torch.no_grad():
        expected = twin.eval().values(torch.from_numpy(x))
    assert rel_error(values["bn1"], expected["bn1"].numpy()) < 1e-10
