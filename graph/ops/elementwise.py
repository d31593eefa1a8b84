"""Elementwise ops: add, sub, mul (same-shape binary), neg, scale (times a constant
``factor``), channel_scale (x times a per-channel [C] scale) and the activations.

relu, leaky_relu (``negative_slope``), sigmoid, tanh, gelu (``approximate`` = "none" for the
exact erf form or "tanh"), hardtanh (``min_val``, ``max_val``; ReLU6 is hardtanh(0, 6)), and
dropout (``p``; the identity at inference, as ``F.dropout`` with ``training=False``;
``per_sample`` drops whole samples: stochastic depth / drop path, as torchvision's
``StochasticDepth(p, "row")``). MACs
count one per multiply of two tensors (mul, channel_scale) and none otherwise.
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


def _add_vjp(node, grads, wants, emit):
    return [grads[0], grads[0]]


def _sub_vjp(node, grads, wants, emit):
    return [grads[0], emit("neg", [grads[0]])[0] if wants[1] else None]


def _neg_vjp(node, grads, wants, emit):
    return [emit("neg", [grads[0]])[0]]


def _scale_vjp(node, grads, wants, emit):
    return [emit("scale", [grads[0]], factor=node.attrs["factor"])[0]]


def _hardtanh_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if not attrs["min_val"] < attrs["max_val"]:
        raise ValueError(f"hardtanh needs min_val < max_val, but got {attrs}")
    return same_shape(in_types, attrs)


def _channel_scale_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """x [N, C, ...] times a per-channel scale of C values, shaped [C] or [C, 1, 1]
    (ConvNeXt's layer scale)."""
    x, scale = in_types
    if len(x.shape) < 2 or scale.shape[:1] != (x.shape[1],) or scale.numel != x.shape[1]:
        raise ValueError(
            f"channel_scale needs a scale of {x.shape[1]} values ([C] or [C, 1, 1]) for input "
            f"{x}, but got {scale}"
        )
    return [x]


def _channel_scale_vjp(node, grads, wants, emit):
    """grad_x = gy * scale per channel; grad_scale = the channel sum of gy * x."""
    (gy,), (x, scale) = grads, node.inputs
    grad_x = emit("channel_scale", [gy, scale])[0] if wants[0] else None
    grad_scale = None
    if wants[1]:
        grad_scale = emit("channel_sum", [emit("mul", [gy, x])[0]])[0]
        if scale.shape != grad_scale.shape:
            grad_scale = emit("reshape", [grad_scale], shape=scale.shape)[0]
    return [grad_x, grad_scale]


def _mul_vjp(node, grads, wants, emit):
    (gy,), (a, b) = grads, node.inputs
    return [
        emit("mul", [gy, b])[0] if wants[0] else None,
        emit("mul", [gy, a])[0] if wants[1] else None,
    ]


# Which value each activation's derivative is computed from: the output where it suffices
# (relu, sigmoid, tanh), else the input.
_SAVED_OUTPUT = frozenset({"relu", "sigmoid", "tanh"})


def _activation_vjp(node, grads, wants, emit):
    saved = node.outputs[0] if node.op in _SAVED_OUTPUT else node.inputs[0]
    keys = ("negative_slope", "approximate", "min_val", "max_val")
    attrs = {k: v for k, v in node.attrs.items() if k in keys}
    return [emit("activation_grad", [grads[0], saved], kind=node.op, **attrs)[0]]


def _identity_vjp(node, grads, wants, emit):
    return [grads[0]]


def _activation_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if attrs["kind"] not in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "hardtanh"):
        raise ValueError(f"activation_grad kind must be an activation, got {attrs['kind']!r}")
    return _binary_shape(in_types, attrs)


def _dropout_train_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """Inputs x and the executable's [seed, step] counter (advanced once per training forward,
    so masks are reproducible and differ from step to step); outputs y and the mask (0 or
    1/(1-p) per element), which the backward pass reads."""
    if in_types[1].shape != (2,):
        raise ValueError(f"dropout_train rng must be the [seed, step] vector, got {in_types[1]}")
    return _dropout_shape(in_types[:1], attrs) * 2


def _dropout_train_vjp(node, grads, wants, emit):
    return [emit("mul", [grads[0], node.outputs[1]])[0], None]


register("add", _binary_shape, no_macs, arity=2, vjp=_add_vjp, inplace=(0, 1))
register("mul", _binary_shape, _mul_macs, arity=2, vjp=_mul_vjp, inplace=(0, 1))
register("sub", _binary_shape, no_macs, arity=2, vjp=_sub_vjp, inplace=(0, 1))
register("neg", same_shape, no_macs, vjp=_neg_vjp, inplace=(0,))
register("scale", same_shape, no_macs, vjp=_scale_vjp, factor=1.0, inplace=(0,))
register(
    "hardtanh",
    _hardtanh_shape,
    no_macs,
    vjp=_activation_vjp,
    min_val=-1.0,
    max_val=1.0,
    inplace=(0,),
)
register(
    "channel_scale", _channel_scale_shape, _mul_macs, arity=2, vjp=_channel_scale_vjp, inplace=(0,)
)
register("relu", same_shape, no_macs, vjp=_activation_vjp, inplace=(0,))
register(
    "leaky_relu", _leaky_relu_shape, no_macs, vjp=_activation_vjp, negative_slope=0.01, inplace=(0,)
)
register("sigmoid", same_shape, no_macs, vjp=_activation_vjp, inplace=(0,))
register("tanh", same_shape, no_macs, vjp=_activation_vjp, inplace=(0,))
register("gelu", _gelu_shape, no_macs, vjp=_activation_vjp, approximate="none", inplace=(0,))
register("dropout", _dropout_shape, no_macs, vjp=_identity_vjp, per_sample=False, inplace=(0,))
register(
    "dropout_train", _dropout_train_shape, no_macs, arity=2, vjp=_dropout_train_vjp, inplace=(0,)
)
register(
    "activation_grad",
    _activation_grad_shape,
    no_macs,
    arity=2,
    inplace=(0,),
    negative_slope=0.01,
    approximate="none",
)
