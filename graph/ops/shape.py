"""Ops that move data without arithmetic: flatten, reshape, concat, channel_shuffle, pad.

- flatten(``start_dim``, ``end_dim``; non-negative) and reshape(``shape``, -1 already resolved)
  keep the element order (row-major), as ``torch.flatten`` and ``Tensor.reshape``.
- concat(``dim``) joins any number of inputs that agree on every other axis (``torch.cat``).
- channel_shuffle(``groups``): view [N, g, C/g, H, W], swap axes 1 and 2 (ShuffleNet).
- transpose(``dim0``, ``dim1``): two axes swapped, as ``torch.transpose(...).contiguous()``.
- pad(``pads=(left, right, top, bottom)``, ``mode`` "constant" or "reflect", ``value``), as
  ``F.pad`` on the last two axes; reflect padding must be smaller than the padded axis.
"""

from __future__ import annotations

import math

from graph.ir import TensorType
from graph.ops import expect_positive, expect_rank, no_macs, register


def _flatten_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x = in_types[0]
    start, end = attrs["start_dim"], attrs["end_dim"]
    if not 0 <= start <= end < len(x.shape):
        raise ValueError(
            f"flatten needs 0 <= start_dim <= end_dim < rank, but got start_dim={start}, "
            f"end_dim={end} for shape {list(x.shape)}"
        )
    merged = math.prod(x.shape[start : end + 1])
    return [TensorType(x.shape[:start] + (merged,) + x.shape[end + 1 :], x.dtype)]


def _reshape_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x, shape = in_types[0], tuple(attrs["shape"])
    if any(s < 1 for s in shape) or math.prod(shape) != x.numel:
        raise ValueError(
            f"reshape cannot view shape {list(x.shape)} ({x.numel} elements) as {list(shape)} "
            f"({math.prod(shape)} elements)"
        )
    return [TensorType(shape, x.dtype)]


def _concat_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if not in_types:
        raise ValueError("concat needs at least one input")
    dim, first = attrs["dim"], in_types[0]
    if not 0 <= dim < len(first.shape):
        raise ValueError(f"concat dim must be in [0, {len(first.shape)}), but got dim={dim}")
    for t in in_types[1:]:
        if len(t.shape) != len(first.shape) or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, first.shape, strict=False)) if i != dim
        ):
            raise ValueError(
                f"concat inputs must match on every axis but dim={dim}, but got "
                f"{[list(u.shape) for u in in_types]}"
            )
    total = sum(t.shape[dim] for t in in_types)
    return [TensorType(first.shape[:dim] + (total,) + first.shape[dim + 1 :], first.dtype)]


def _channel_shuffle_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x, groups = in_types[0], attrs["groups"]
    expect_rank("channel_shuffle", x, 4)
    expect_positive("channel_shuffle", groups=groups)
    if x.shape[1] % groups:
        raise ValueError(
            f"channel_shuffle channels must be divisible by groups, but got channels="
            f"{x.shape[1]}, groups={groups}"
        )
    return [x]


def _pad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x = in_types[0]
    expect_rank("pad", x, 4)
    left, right, top, bottom = attrs["pads"]
    if attrs["mode"] not in ("constant", "reflect"):
        raise ValueError(f"pad mode must be 'constant' or 'reflect', but got {attrs['mode']!r}")
    if min(attrs["pads"]) < 0:
        raise ValueError(f"pad sizes must be non-negative, but got {attrs['pads']}")
    n, c, h, w = x.shape
    if attrs["mode"] == "reflect" and (max(top, bottom) >= h or max(left, right) >= w):
        raise ValueError(
            f"reflect padding must be smaller than the padded axis, but got pads "
            f"(left, right, top, bottom)={attrs['pads']} for input {h}x{w}"
        )
    return [TensorType((n, c, h + top + bottom, w + left + right), x.dtype)]


def _reshape_vjp(node, grads, wants, emit):
    return [emit("reshape", [grads[0]], shape=node.inputs[0].shape)[0]]


def _concat_vjp(node, grads, wants, emit):
    dim, start, out = node.attrs["dim"], 0, []
    for value, want in zip(node.inputs, wants, strict=True):
        length = value.shape[dim]
        out.append(
            emit("slice", [grads[0]], dim=dim, start=start, length=length)[0] if want else None
        )
        start += length
    return out


def _channel_shuffle_vjp(node, grads, wants, emit):
    """The inverse permutation is a shuffle with C/g groups."""
    groups = node.inputs[0].shape[1] // node.attrs["groups"]
    return [emit("channel_shuffle", [grads[0]], groups=groups)[0]]


def _pad_vjp(node, grads, wants, emit):
    """Crop the padding away; reflect padding also folds the mirrored gradients back in."""
    size = node.inputs[0].shape[2:]
    return [
        emit(
            "pad_grad",
            [grads[0]],
            input_size=size,
            pads=node.attrs["pads"],
            mode=node.attrs["mode"],
        )[0]
    ]


def _slice_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """A contiguous range [start, start + length) along ``dim`` (``split``/``chunk``, and
    concat's gradient)."""
    x, dim, start, length = in_types[0], attrs["dim"], attrs["start"], attrs["length"]
    if not (
        0 <= dim < len(x.shape) and 0 <= start and length >= 1 and start + length <= x.shape[dim]
    ):
        raise ValueError(f"slice [{start}, {start + length}) along dim {dim} exceeds {x}")
    return [TensorType(x.shape[:dim] + (length,) + x.shape[dim + 1 :], x.dtype)]


def _slice_vjp(node, grads, wants, emit):
    attrs = {k: node.attrs[k] for k in ("dim", "start")}
    size = node.inputs[0].shape[node.attrs["dim"]]
    return [emit("slice_grad", [grads[0]], size=size, **attrs)[0]]


def _slice_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """The gradient of a slice: zeros of the sliced input's shape with gy at [start, ...)."""
    gy, dim = in_types[0], attrs["dim"]
    if not 0 <= attrs["start"] <= attrs["size"] - gy.shape[dim]:
        raise ValueError(f"slice_grad: {gy} does not fit at {attrs}")
    return [TensorType(gy.shape[:dim] + (attrs["size"],) + gy.shape[dim + 1 :], gy.dtype)]


def _transpose_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """Swap axes ``dim0`` < ``dim1`` (``torch.transpose``), copying into the new layout."""
    x, a, b = in_types[0], attrs["dim0"], attrs["dim1"]
    if not 0 <= a < b < len(x.shape):
        raise ValueError(f"transpose needs 0 <= dim0 < dim1 < {len(x.shape)}, got {a}, {b}")
    shape = list(x.shape)
    shape[a], shape[b] = shape[b], shape[a]
    return [TensorType(tuple(shape), x.dtype)]


def _transpose_vjp(node, grads, wants, emit):
    return [emit("transpose", [grads[0]], **node.attrs)[0]]


def _pad_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    gy = in_types[0]
    x = TensorType(gy.shape[:2] + tuple(attrs["input_size"]), gy.dtype)
    if _pad_shape([x], {"value": 0.0, **attrs})[0] != gy:
        raise ValueError(f"pad_grad: gradient {gy} does not match input {x} with {attrs}")
    return [x]


register("flatten", _flatten_shape, no_macs, vjp=_reshape_vjp, inplace=(0,))
register("reshape", _reshape_shape, no_macs, vjp=_reshape_vjp, inplace=(0,))
register("concat", _concat_shape, no_macs, arity=None, vjp=_concat_vjp)
register("channel_shuffle", _channel_shuffle_shape, no_macs, vjp=_channel_shuffle_vjp)
register("pad", _pad_shape, no_macs, vjp=_pad_vjp, mode="constant", value=0.0)
register("slice", _slice_shape, no_macs, vjp=_slice_vjp)
register("slice_grad", _slice_grad_shape, no_macs)
register("transpose", _transpose_shape, no_macs, vjp=_transpose_vjp)
register("pad_grad", _pad_grad_shape, no_macs, mode="constant")
