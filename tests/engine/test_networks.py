"""Whole small networks against PyTorch with identical weights, and the Executable's contract.

Every network is written once and built twice, with ``graph.nn`` and with ``torch.nn``; the
torch twin loads the ConvForge model's state_dict strictly, so keys, shapes and values agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine
from graph import functional as F
from graph import nn
from tests.helpers import DTYPES, NET_TOLERANCE, rel_error, run_poisoned, torch_run, torch_twin

GRAPH_OPS = {"add": F.add, "cat": F.cat}
TORCH_OPS = {"add": torch.add, "cat": torch.cat}

# **** The networks, each a builder (lib, ops) -> model ****


def conv_bn_net(lib, ops):
    return lib.Sequential(
        lib.Conv2d(3, 8, 3, padding=1),
        lib.BatchNorm2d(8),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        lib.BatchNorm2d(16),
        lib.ReLU(),
        lib.AvgPool2d(2),
        lib.Flatten(),
        lib.Linear(16 * 2 * 2, 10),
    )


def lenet5(lib, ops):
    class LeNet5(lib.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = lib.Sequential(
                lib.Conv2d(1, 6, 5, padding=2),
                lib.Tanh(),
                lib.AvgPool2d(2),
                lib.Conv2d(6, 16, 5),
                lib.Tanh(),
                lib.AvgPool2d(2),
            )
            self.flatten = lib.Flatten()
            self.classifier = lib.Sequential(
                lib.Linear(16 * 5 * 5, 120),
                lib.Tanh(),
                lib.Linear(120, 84),
                lib.Tanh(),
                lib.Linear(84, 10),
            )

        def forward(self, x):
            return self.classifier(self.flatten(self.features(x)))

    return LeNet5()


def _basic_block(lib, ops):
    class BasicBlock(lib.Module):
        """torchvision's BasicBlock; the residual add is ``+`` or the functional ``add``."""

        def __init__(self, c_in: int, c_out: int, stride: int = 1, functional_add=False):
            super().__init__()
            self.conv1 = lib.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = lib.BatchNorm2d(c_out)
            self.relu = lib.ReLU()
            self.conv2 = lib.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = lib.BatchNorm2d(c_out)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = lib.Sequential(
                    lib.Conv2d(c_in, c_out, 1, stride, bias=False), lib.BatchNorm2d(c_out)
                )
            self.functional_add = functional_add

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out = ops["add"](out, identity) if self.functional_add else out + identity
            return self.relu(out)

    return BasicBlock


def tiny_resnet(lib, ops):
    block = _basic_block(lib, ops)
    return lib.Sequential(
        lib.Conv2d(3, 16, 3, padding=1, bias=False),
        lib.BatchNorm2d(16),
        lib.ReLU(),
        lib.Sequential(block(16, 16), block(16, 16, functional_add=True)),
        lib.Sequential(block(16, 32, stride=2, functional_add=True), block(32, 32)),
        lib.AdaptiveAvgPool2d(1),
        lib.Flatten(),
        lib.Linear(32, 10),
    )


def tiny_inception(lib, ops):
    class Inception(lib.Module):
        def __init__(self, c_in: int) -> None:
            super().__init__()
            self.branch1 = lib.Sequential(lib.Conv2d(c_in, 4, 1), lib.ReLU())
            self.branch3 = lib.Sequential(
                lib.Conv2d(c_in, 6, 1),
                lib.ReLU(),
                lib.Conv2d(6, 8, 3, padding=1),
                lib.BatchNorm2d(8),
                lib.ReLU(),
            )
            self.branch5 = lib.Sequential(
                lib.Conv2d(c_in, 2, 1), lib.ReLU(), lib.Conv2d(2, 4, 5, padding=2), lib.ReLU()
            )
            self.branch_pool = lib.Sequential(
                lib.MaxPool2d(3, stride=1, padding=1), lib.Conv2d(c_in, 4, 1), lib.ReLU()
            )

        def forward(self, x):
            branches = [self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)]
            return ops["cat"](branches, dim=1)

    return lib.Sequential(
        lib.Conv2d(3, 8, 3, padding=1),
        lib.ReLU(),
        Inception(8),
        lib.MaxPool2d(2),
        Inception(20),
        lib.AdaptiveAvgPool2d(1),
        lib.Flatten(),
        lib.Linear(20, 5),
    )


def depthwise_separable(lib, ops):
    def separable(c_in: int, c_out: int, stride: int):
        return lib.Sequential(
            lib.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
            lib.BatchNorm2d(c_in),
            lib.ReLU(),
            lib.Conv2d(c_in, c_out, 1, bias=False),
            lib.BatchNorm2d(c_out),
            lib.ReLU(),
        )

    return lib.Sequential(
        lib.Conv2d(3, 16, 3, 2, 1, bias=False),
        lib.BatchNorm2d(16),
        lib.ReLU(),
        separable(16, 32, 1),
        separable(32, 32, 2),
        separable(32, 64, 1),
        lib.AdaptiveAvgPool2d(1),
        lib.Flatten(),
        lib.Dropout(0.2),
        lib.Linear(64, 10),
        lib.Softmax(dim=1),
    )


NETWORKS = {
    "conv_bn_net": (conv_bn_net, (4, 3, 16, 16)),
    "lenet5": (lenet5, (3, 1, 28, 28)),
    "tiny_resnet": (tiny_resnet, (2, 3, 16, 16)),
    "tiny_inception": (tiny_inception, (2, 3, 12, 12)),
    "depthwise_separable": (depthwise_separable, (2, 3, 32, 32)),
}


def _randomize_batchnorm(model: nn.Module, rng: np.random.Generator) -> None:
    """Random running statistics and affine parameters (defaults would make BN nearly the
    identity and hide a wrong formula); num_batches_tracked too, which torch must accept."""
    state = model.state_dict()
    norms = [key.removesuffix(".running_mean") for key in state if key.endswith("running_mean")]
    for prefix in norms:
        c = state[f"{prefix}.running_mean"].shape
        state[f"{prefix}.running_mean"] = rng.normal(0.0, 0.5, c).astype(np.float32)
        state[f"{prefix}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        state[f"{prefix}.num_batches_tracked"] = np.array(int(rng.integers(1, 100)))
        if f"{prefix}.weight" in state:
            state[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            state[f"{prefix}.bias"] = rng.normal(0.0, 0.2, c).astype(np.float32)
    model.load_state_dict(state)


def _twins(name: str, rng: np.random.Generator) -> tuple[nn.Module, torch.nn.Module, tuple]:
    builder, shape = NETWORKS[name]
    nn.manual_seed(int(rng.integers(2**31)))
    model = builder(nn, GRAPH_OPS)
    _randomize_batchnorm(model, rng)
    return model, builder(torch.nn, TORCH_OPS), shape


# **** Networks against torch ****


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_network_matches_torch(name, dtype, rng):
    model, torch_model, shape = _twins(name, rng)
    x = rng.standard_normal(shape).astype(dtype)
    expected = torch_run(torch_twin(model, torch_model, dtype), x)
    actual = run_poisoned(model, x, dtype)
    assert actual.dtype == np.dtype(dtype)
    assert rel_error(actual, expected) < NET_TOLERANCE[dtype]


def test_network_output_is_a_probability_distribution(rng):
    """The depthwise net ends in Softmax: rows sum to one (a check independent of torch)."""
    model, _, shape = _twins("depthwise_separable", rng)
    out = run_poisoned(model, rng.standard_normal(shape), "float64")
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)


# **** Weights in and out ****


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_state_dict_from_torch_numpy(dtype, rng):
    model, torch_model, shape = _twins("tiny_resnet", rng)
    torch.manual_seed(int(rng.integers(2**31)))
    torch_model = torch_model.eval()
    with torch.no_grad():
        for module in torch_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.num_batches_tracked.fill_(3)
    exe = engine.compile(model, shape[1:], batch=shape[0], dtype=dtype)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    assert any(k.endswith("num_batches_tracked") for k in state)
    exe.load_state_dict(state)
    x = rng.standard_normal(shape)
    expected = torch_run(torch_model.double(), x)
    assert rel_error(exe.run(x.astype(dtype)), expected) < NET_TOLERANCE[dtype]


def test_executable_state_dict_loads_into_torch_strictly(rng):
    model, torch_model, shape = _twins("conv_bn_net", rng)
    exe = engine.compile(model, shape[1:], batch=shape[0])
    new_state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in exe.params.items()}
    for key in new_state:
        if key.endswith("running_var"):
            new_state[key] = np.abs(new_state[key]) + 0.5
    exe.load_state_dict(new_state)
    state = exe.state_dict()
    assert set(state) == set(torch_model.state_dict())
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x = rng.standard_normal(shape).astype(np.float32)
    expected = torch_run(torch_model.eval(), x)
    assert rel_error(exe.run(x), expected) < NET_TOLERANCE["float32"]
    for key, value in new_state.items():
        np.testing.assert_array_equal(torch_model.state_dict()[key].numpy(), value, err_msg=key)


def test_load_state_dict_errors_name_the_key(rng):
    model, _, shape = _twins("conv_bn_net", rng)
    exe = engine.compile(model, shape[1:], batch=shape[0])
    good = exe.state_dict()
    before = exe.state_dict()

    missing = dict(good)
    del missing["5.running_var"]
    with pytest.raises(KeyError, match=r"missing.*5\.running_var"):
        exe.load_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected.*head\.weight"):
        exe.load_state_dict({**good, "head.weight": np.zeros((2, 2), np.float32)})
    wrong = {k: v + 1.0 for k, v in good.items()}
    wrong["9.weight"] = np.zeros((10, 63), np.float32)
    with pytest.raises(ValueError, match=r"9\.weight.*\[10, 64\].*\[10, 63\]"):
        exe.load_state_dict(wrong)
    # a refused load changes nothing
    for key, value in exe.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


# **** run() ****


def test_run_rejects_wrong_shape_and_dtype(rng):
    model, _, shape = _twins("conv_bn_net", rng)
    exe = engine.compile(model, shape[1:], batch=shape[0])
    with pytest.raises(ValueError, match=r"\[4, 3, 16, 16\]"):
        exe.run(rng.standard_normal((3, 3, 16, 16)).astype(np.float32))
    with pytest.raises(ValueError, match=r"\[4, 3, 16, 16\]"):
        exe.run(rng.standard_normal((4, 3, 16)).astype(np.float32))
    with pytest.raises(TypeError, match="float32.*float64"):
        exe.run(rng.standard_normal(shape))


def test_run_is_repeatable_and_outputs_do_not_alias(rng):
    model, torch_model, shape = _twins("tiny_resnet", rng)
    exe = engine.compile(model, shape[1:], batch=shape[0])
    x, other = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    x_copy = x.copy()
    first = exe.run(x)
    second = exe.run(x)
    np.testing.assert_array_equal(first, second)
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(x, x_copy)  # run does not write its input

    expected = first.copy()
    first[...] = 1e6
    second += 1.0
    exe.run(other)
    np.testing.assert_array_equal(exe.run(x), expected)

    x[...] = 0.0  # the caller's array is copied in, not referenced
    exe.run(x_copy)
    np.testing.assert_array_equal(exe.run(x_copy), expected)

    exe.state_dict()["0.weight"][...] = 0.0  # state_dict() returns copies
    np.testing.assert_array_equal(exe.run(x_copy), expected)
    reference = torch_run(torch_twin(model, torch_model, "float32"), x_copy)
    assert rel_error(expected, reference) < NET_TOLERANCE["float32"]
