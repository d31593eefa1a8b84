"""Ops that move data without arithmetic: flatten, reshape, concat, channel_shuffle, pad.

- flatten(``start_dim``, ``end_dim``; non-negative) and reshape(``shape``, -1 already resolved)
  keep the element order (row-major), as ``torch.flatten`` and ``Tensor.reshape``.
- concat(``dim``) joins any number of inputs that agree on every other axis (``torch.cat``).
- channel_shuffle(``groups``): view [N, g, C/g, H, W], swap axes 1 and 2 (ShuffleNet).
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


register("flatten", _flatten_shape, no_macs)
register("reshape", _reshape_shape, no_macs)
register("concat", _concat_shape, no_macs, arity=None)
register("channel_shuffle", _channel_shuffle_shape, no_macs)
register("pad", _pad_shape, no_macs, mode="constant", value=0.0)
