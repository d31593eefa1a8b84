"""Normalisation: batch_norm (inference form), layer_norm2d (over channels) and softmax.

batch_norm inputs follow ``F.batch_norm``: x [N, C, ...], running_mean [C], running_var [C],
then optional weight [C] and bias [C]; ``y = (x - mean) / sqrt(var + eps) * weight + bias``.
layer_norm2d (ConvNeXt's channel LayerNorm) normalises each pixel over C with the biased
variance: inputs x [N, C, H, W] and optional weight [C], bias [C]. softmax normalises along
``dim`` (a non-negative axis) with the max subtracted first, as PyTorch does.
local_response_norm (AlexNet's LRN, Krizhevsky et al. 2012, section 3.3) divides each value by
``(k + alpha / size * sum of x^2 over a window of channels) ** beta``, on x [N, C, ...]; the
window of channel c spans channels ``c - before`` to ``c - before + size - 1`` (clipped to the
tensor, zero outside it). ``before`` is ``size // 2`` in PyTorch and ``(size - 1) // 2`` in
ONNX's LRN: the same window for odd sizes, one channel apart for even ones.
Normalisation counts no MACs, as torchvision's published figures count only weight layers
(an inference-mode BatchNorm folds into the preceding conv).
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import expect_rank, no_macs, register


def _expect_channel_vectors(op: str, x: TensorType, vectors: list[TensorType], names) -> None:
    for name, t in zip(names, vectors, strict=False):
        if t.shape != (x.shape[1],):
            raise ValueError(
                f"{op} {name} must have shape [{x.shape[1]}] (the input's channels), but got "
                f"{list(t.shape)} for input shape {list(x.shape)}"
            )


def _check_eps(op: str, attrs: dict) -> None:
    if not attrs["eps"] > 0:
        raise ValueError(f"{op} eps must be positive, but got eps={attrs['eps']}")


def _batch_norm_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if len(in_types) not in (3, 5):
        raise ValueError(
            "batch_norm takes x, running_mean, running_var and optionally weight and bias, "
            f"but got {len(in_types)} inputs"
        )
    x = in_types[0]
    if len(x.shape) not in (2, 4):
        raise ValueError(f"batch_norm expects a rank-2 or rank-4 input, but got {list(x.shape)}")
    names = ("running_mean", "running_var", "weight", "bias")
    _expect_channel_vectors("batch_norm", x, in_types[1:], names)
    _check_eps("batch_norm", attrs)
    return [x]


def _layer_norm2d_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if len(in_types) not in (1, 3):
        raise ValueError(f"layer_norm2d takes x and optionally weight and bias, not {in_types}")
    x = in_types[0]
    expect_rank("layer_norm2d", x, 4)
    _expect_channel_vectors("layer_norm2d", x, in_types[1:], ("weight", "bias"))
    _check_eps("layer_norm2d", attrs)
    return [x]


def _softmax_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x = in_types[0]
    if not 0 <= attrs["dim"] < len(x.shape):
        raise ValueError(
            f"softmax dim must index the input's {len(x.shape)} axes, but got dim={attrs['dim']} "
            f"for shape {list(x.shape)}"
        )
    return [x]


def _batch_norm_train_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """Outputs y and the batch mean and inverse std (saved for the backward pass)."""
    (x,) = _batch_norm_shape(in_types, attrs)
    if not 0.0 <= attrs["momentum"] <= 1.0:
        raise ValueError(f"batch_norm momentum must be in [0, 1], got {attrs['momentum']}")
    per_channel = x.numel // x.shape[1]
    if per_channel < 2:
        raise ValueError(
            f"batch_norm in training mode needs more than 1 value per channel, but got input "
            f"shape {list(x.shape)} ({per_channel} per channel)"
        )
    channel = TensorType((x.shape[1],), x.dtype)
    return [x, channel, channel]


def _batch_norm_recompute_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """batch_norm_train's y again, from the same inputs, without touching the running
    statistics: the backward pass's recompute of a dropped activation."""
    return _batch_norm_train_shape(in_types, attrs)[:1]


def _batch_norm_train_vjp(node, grads, wants, emit):
    """PyTorch's batch-norm backward with batch statistics: with xhat = (x - mean) * invstd,
    grad_x = invstd * w * (gy - mean(gy) - xhat * mean(gy * xhat)) per channel."""
    x, mean, invstd = node.inputs[0], node.outputs[1], node.outputs[2]
    affine = node.inputs[3:4]
    grad_x, grad_w, grad_b = emit(
        "batch_norm_grad", [grads[0], x, mean, invstd, *affine], eps=node.attrs["eps"]
    )
    return [grad_x, None, None] + ([grad_w, grad_b] if affine else [])


def _batch_norm_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    gy, x = in_types[:2]
    if gy != x:
        raise ValueError(f"batch_norm_grad: gradient {gy} does not match input {x}")
    channel = TensorType((x.shape[1],), x.dtype)
    _expect_channel_vectors("batch_norm_grad", x, in_types[2:], ("mean", "invstd", "weight"))
    return [x, channel, channel]


def _layer_norm2d_vjp(node, grads, wants, emit):
    affine = node.inputs[1:2]
    grad_x, grad_w, grad_b = emit(
        "layer_norm2d_grad", [grads[0], node.inputs[0], *affine], eps=node.attrs["eps"]
    )
    return [grad_x] + ([grad_w, grad_b] if affine else [])


def _layer_norm2d_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    gy, x = in_types[:2]
    if gy != x:
        raise ValueError(f"layer_norm2d_grad: gradient {gy} does not match input {x}")
    _expect_channel_vectors("layer_norm2d_grad", x, in_types[2:], ("weight",))
    channel = TensorType((x.shape[1],), x.dtype)
    return [x, channel, channel]


def _softmax_vjp(node, grads, wants, emit):
    """grad_x = y * (gy - sum(gy * y)) along dim."""
    return [emit("softmax_grad", [grads[0], node.outputs[0]], dim=node.attrs["dim"])[0]]


def _softmax_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    gy, y = in_types
    if gy != y:
        raise ValueError(f"softmax_grad: gradient {gy} does not match output {y}")
    return _softmax_shape([y], attrs)


def _local_response_norm_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x = in_types[0]
    if len(x.shape) < 3:
        raise ValueError(
            f"local_response_norm expects an input of rank 3 or more ([N, C, ...]), but got "
            f"shape {list(x.shape)}"
        )
    size, before = attrs["size"], attrs["before"]
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"local_response_norm size must be a positive integer, but got {size}")
    if before not in (size // 2, (size - 1) // 2):
        raise ValueError(
            f"local_response_norm before must be size // 2 (PyTorch) or (size - 1) // 2 (ONNX), "
            f"but got before={before} for size={size}"
        )
    if not attrs["k"] > 0:
        raise ValueError(f"local_response_norm k must be positive, but got k={attrs['k']}")
    return [x]


def _local_response_norm_vjp(node, grads, wants, emit):
    """With s_c = k + alpha / size * sum over the window of x^2 and y_c = x_c * s_c^-beta:
    grad_x_j = g_j * s_j^-beta - 2 * alpha * beta / size * x_j * sum over the channels c
    whose window holds j of g_c * x_c * s_c^(-beta - 1)."""
    attrs = {k: node.attrs[k] for k in ("size", "alpha", "beta", "k", "before")}
    return [emit("local_response_norm_grad", [grads[0], node.inputs[0]], **attrs)[0]]


def _local_response_norm_grad_shape(in_types: list[TensorType], attrs: dict) -> list:
    gy, x = in_types
    if gy != x:
        raise ValueError(f"local_response_norm_grad: gradient {gy} does not match input {x}")
    return _local_response_norm_shape([x], attrs)


register("batch_norm", _batch_norm_shape, no_macs, arity=None, inplace=(0,), eps=1e-5, momentum=0.1)
register(
    "batch_norm_train",
    _batch_norm_train_shape,
    no_macs,
    arity=None,
    vjp=_batch_norm_train_vjp,
    mutates=(1, 2),
    eps=1e-5,
    momentum=0.1,
)
register(
    "batch_norm_recompute",
    _batch_norm_recompute_shape,
    no_macs,
    arity=None,
    eps=1e-5,
    momentum=0.1,
)
register("batch_norm_grad", _batch_norm_grad_shape, no_macs, arity=None, inplace=(0,), eps=1e-5)
register("layer_norm2d", _layer_norm2d_shape, no_macs, arity=None, vjp=_layer_norm2d_vjp)
register("layer_norm2d_grad", _layer_norm2d_grad_shape, no_macs, arity=None)
register("softmax", _softmax_shape, no_macs, vjp=_softmax_vjp)
register("softmax_grad", _softmax_grad_shape, no_macs, arity=2)
_LRN_DEFAULTS = dict(size=5, alpha=1e-4, beta=0.75, k=1.0, before=2)
register(
    "local_response_norm",
    _local_response_norm_shape,
    no_macs,
    vjp=_local_response_norm_vjp,
    **_LRN_DEFAULTS,
)
register(
    "local_response_norm_grad", _local_response_norm_grad_shape, no_macs, arity=2, **_LRN_DEFAULTS
)
