"""Elementwise ops: add, mul (same-shape binary) and the activations.

relu, leaky_relu (``negative_slope``), sigmoid, tanh, gelu (``approximate`` = "none" for the
exact erf form or "tanh"), and dropout (``p``; the identity at inference, as ``F.dropout`` with
``training=False``). MACs count one per multiply of two tensors (mul) and none otherwise.
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import no_macs, register, same_shape


def _binary_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    a, b = in_types
    if a.shape != b.shape:
        raise ValueError(
            f"elementwise inputs must have the same shape, but got {list(a.shape)} and "
            f"{list(b.shape)}"
        )
    return [a]


def _mul_macs(in_types: list[TensorType], out_types: list[TensorType], attrs: dict) -> int:
    return out_types[0].numel


def _leaky_relu_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if not isinstance(attrs["negative_slope"], float):
        raise TypeError(f"leaky_relu negative_slope must be a float, but got {attrs}")
    return same_shape(in_types, attrs)


def _gelu_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if attrs["approximate"] not in ("none", "tanh"):
        raise ValueError(
            f"gelu approximate must be 'none' or 'tanh', but got {attrs['approximate']!r}"
        )
    return same_shape(in_types, attrs)


def _dropout_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if not 0.0 <= attrs["p"] <= 1.0:
        raise ValueError(f"dropout probability must be between 0 and 1, but got p={attrs['p']}")
    return same_shape(in_types, attrs)


register("add", _binary_shape, no_macs, arity=2)
register("mul", _binary_shape, _mul_macs, arity=2)
register("relu", same_shape, no_macs)
register("leaky_relu", _leaky_relu_shape, no_macs, negative_slope=0.01)
register("sigmoid", same_shape, no_macs)
register("tanh", same_shape, no_macs)
register("gelu", _gelu_shape, no_macs, approximate="none")
register("dropout", _dropout_shape, no_macs)
