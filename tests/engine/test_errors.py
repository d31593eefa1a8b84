"""Every invalid model fails at compile (trace) time, naming the layer path and the numbers.

Messages follow STYLE.md: layer path, op, rule, "but got" and the values, plus the arithmetic
when a size is computed. Only the parts a user acts on are pinned: the path, the numbers, and
for sizes the output-size formula ``floor((W + 2P - D*(K-1) - 1) / S) + 1``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import engine
from graph import functional as F
from graph import nn


class Net(nn.Module):
    """features -> flatten -> classifier, so errors carry paths like "features.3"."""

    def __init__(self, features: list[nn.Module], classifier: list[nn.Module]) -> None:
        super().__init__()
        self.features = nn.Sequential(*features)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(*classifier)

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def _compile_error(model, input_shape, error=ValueError, **kwargs) -> str:
    with pytest.raises(error) as info:
        engine.compile(model, input_shape, **kwargs)
    return str(info.value)


# **** Sizes ****


def test_kernel_larger_than_padded_input_names_layer_and_arithmetic():
    model = Net(
        [nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 5, padding=0)],
        [nn.Linear(8, 2)],
    )
    # 8x8 -> conv3 -> 6x6 -> pool2 -> 3x3; a 5x5 kernel on 3x3 gives floor((3-4-1)/1)+1 = 0
    message = _compile_error(model, (3, 8, 8), batch=2)
    assert message.startswith("features.3: conv2d")
    assert "floor(" in message
    arithmetic = message[message.index("floor(") :]
    for number in ("3", "5"):
        assert re.search(rf"\b{number}\b", arithmetic), message
    assert "= 0" in arithmetic


def test_dilated_and_padded_kernel_arithmetic():
    model = Net([nn.Conv2d(3, 4, 3, padding=1, dilation=4)], [nn.Linear(4, 2)])
    # padded input 5 + 2 = 7, dilated kernel 4*(3-1)+1 = 9
    message = _compile_error(model, (3, 5, 9))
    assert message.startswith("features.0: conv2d")
    assert "floor(" in message and "7" in message and "9" in message


def test_pooling_window_larger_than_input():
    model = Net([nn.Conv2d(3, 4, 3), nn.MaxPool2d(4)], [nn.Linear(4, 2)])
    message = _compile_error(model, (3, 5, 5))
    assert message.startswith("features.1: max_pool2d")
    assert "floor(" in message and re.search(r"\b3\b", message) and re.search(r"\b4\b", message)


def test_linear_in_features_mismatch_names_the_needed_number():
    model = Net([nn.Conv2d(3, 4, 3), nn.ReLU()], [nn.Linear(100, 32), nn.ReLU(), nn.Linear(32, 2)])
    message = _compile_error(model, (3, 8, 8))
    assert message.startswith("classifier.0: linear")
    assert f"in_features={4 * 6 * 6}" in message  # what the flattened 4x6x6 map needs
    assert "in_features=100" in message


def test_linear_without_flatten_names_the_rank():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(36, 2))
    message = _compile_error(model, (3, 5, 5))
    assert message.startswith("1: linear")
    assert "[1, 4, 3, 3]" in message


# **** Channels and groups ****


def test_conv2d_constructor_checks_groups():
    with pytest.raises(ValueError, match=r"in_channels=6, groups=4"):
        nn.Conv2d(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match=r"out_channels=6, groups=4"):
        nn.Conv2d(8, 6, 3, groups=4)


class FunctionalConv(nn.Module):
    """A layer that calls the functional conv directly with its own weight and groups."""

    def __init__(self, weight_shape: tuple[int, ...], groups: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(np.ones(weight_shape, np.float32))
        self.groups = groups

    def forward(self, x):
        return F.conv2d(x, self.weight, groups=self.groups)


def test_functional_conv_with_bad_groups_fails_at_trace():
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Sequential(FunctionalConv((8, 2, 3, 3), 4)))
    message = _compile_error(model, (3, 8, 8))
    assert message.startswith("1.0: conv2d")
    assert "in_channels=6" in message and "groups=4" in message


def test_conv_weight_and_input_channel_mismatch():
    model = Net([nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(4, 8, 3)], [nn.Linear(8, 2)])
    message = _compile_error(model, (3, 10, 10))
    assert message.startswith("features.2: conv2d")
    assert "[1, 8, 8, 8]" in message  # the input it got
    assert "[8, 4, 3, 3]" in message  # the weight that wanted 4 channels

    message = _compile_error(nn.Conv2d(3, 8, 3), (1, 10, 10))
    assert "in_channels" in message and "[1, 1, 10, 10]" in message


def test_residual_add_shape_mismatch_names_the_add():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.conv(x) + x

    message = _compile_error(nn.Sequential(Block()), (4, 6, 6))
    assert message.startswith("0.add: ")
    assert "[1, 4, 4, 4]" in message and "[1, 4, 6, 6]" in message


# **** Zero, negative and mistyped sizes ****


@pytest.mark.parametrize(
    "make, names",
    [
        (lambda: nn.Conv2d(0, 4, 3), ["in_channels=0"]),
        (lambda: nn.Conv2d(3, -4, 3), ["out_channels=-4"]),
        (lambda: nn.Conv2d(3, 4, 0), ["kernel_size=(0, 0)"]),
        (lambda: nn.Conv2d(3, 4, 3, stride=(1, 0)), ["stride=(1, 0)"]),
        (lambda: nn.Conv2d(3, 4, 3, groups=0), ["groups=0"]),
        (lambda: nn.Linear(0, 3), ["in_features=0"]),
        (lambda: nn.BatchNorm2d(0), ["num_features=0"]),
        (lambda: nn.BatchNorm2d(3, eps=0.0), ["eps=0.0"]),
        (lambda: nn.Dropout(1.5), ["p=1.5"]),
        (lambda: nn.Conv2d(3, 4, 3, padding="full"), ["padding='full'"]),
    ],
)
def test_constructors_reject_bad_sizes(make, names):
    with pytest.raises(ValueError) as info:
        make()
    for name in names:
        assert name in str(info.value)


def test_mistyped_kernel_size_is_a_type_error():
    with pytest.raises(TypeError, match="2.5"):
        nn.Conv2d(3, 4, 2.5)


@pytest.mark.parametrize("pool", [nn.MaxPool2d, nn.AvgPool2d])
def test_pool_stride_zero_fails_at_trace(pool):
    model = Net([nn.Conv2d(3, 4, 3), pool(2, stride=0)], [nn.Linear(4, 2)])
    message = _compile_error(model, (3, 8, 8))
    assert message.startswith("features.1: ")
    assert "stride=(0, 0)" in message


def test_negative_padding_fails_at_trace():
    message = _compile_error(Net([nn.Conv2d(3, 4, 3, padding=-1)], [nn.Linear(4, 2)]), (3, 8, 8))
    assert message.startswith("features.0: conv2d padding")
    assert "-1" in message


def test_pool_padding_over_half_the_kernel_fails_at_trace():
    model = Net([nn.MaxPool2d(3, stride=1, padding=2, dilation=2)], [nn.Linear(3, 2)])
    message = _compile_error(model, (3, 8, 8))
    assert message.startswith("features.0: max_pool2d padding")
    assert "padding=2" in message and "kernel=3" in message


@pytest.mark.parametrize(
    "input_shape", [(3, 0, 8), (0, 8, 8), (3, 8, -1), (8, 8), (1, 3, 8, 8), (3,)]
)
def test_input_shape_must_be_three_positive_sizes(input_shape):
    message = _compile_error(nn.Conv2d(3, 4, 3), input_shape)
    assert "input_shape" in message and str(list(input_shape)) in message


@pytest.mark.parametrize("batch", [0, -2])
def test_batch_must_be_positive(batch):
    assert f"batch={batch}" in _compile_error(nn.Conv2d(3, 4, 3), (3, 8, 8), batch=batch)


# **** Backend and dtype ****


@pytest.mark.parametrize("backend", ["tpu", "CPU"])
def test_unknown_backend_is_one_line(backend):
    message = _compile_error(nn.Conv2d(3, 4, 3), (3, 8, 8), backend=backend)
    assert "\n" not in message
    assert repr(backend) in message and "cpu" in message


@pytest.mark.parametrize("dtype", ["float16", "int32", "bfloat16"])
def test_unsupported_dtype(dtype):
    message = _compile_error(nn.Conv2d(3, 4, 3), (3, 8, 8), dtype=dtype)
    assert repr(dtype) in message and "float32" in message


def test_model_must_return_one_tensor():
    class TwoOutputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y, y

    message = _compile_error(TwoOutputs(), (3, 8, 8), error=TypeError)
    assert "one traced tensor" in message
