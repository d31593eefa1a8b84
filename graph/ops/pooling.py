"""Pooling over NCHW: max_pool2d, avg_pool2d, global_avg_pool2d and adaptive max/avg pooling.

Sliding-window attributes are tuples: ``kernel=(KH, KW)``, ``stride``, ``padding=(PH, PW)``
(symmetric, at most half the kernel, as PyTorch requires: dilation does not raise the limit),
``dilation`` (max only), ``ceil_mode``, and ``count_include_pad`` (avg only). Output size
follows PyTorch's ``pooling_output_shape``:
``floor((H + 2P - D*(K-1) - 1 + (S-1 if ceil_mode)) / S) + 1``, minus one when ceil_mode would
start the last window inside the bottom padding.

Adaptive pooling (``output_size=(OH, OW)``; the SPP-net bins) uses PyTorch's windows:
``start = floor(i*H/OH)``, ``end = ceil((i+1)*H/OH)``, so sizes that do not divide work too.
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import expect_positive, expect_rank, no_macs, register
from graph.ops.conv import pooled_extent


def pool_extent(
    op: str, axis: str, size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool
) -> int:
    """PyTorch's pooling output size along one axis, with the arithmetic in any error."""
    if pad > kernel // 2:
        raise ValueError(
            f"{op} padding must be at most half of the kernel along {axis}, but got "
            f"padding={pad}, kernel={kernel} (limit {kernel // 2})"
        )
    if not ceil:
        return pooled_extent(op, axis, size, kernel, stride, pad, pad, dilation)
    out = pooled_extent(op, axis, size, kernel, stride, pad, pad + stride - 1, dilation)
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _window_shape(op: str, in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x = in_types[0]
    expect_rank(op, x, 4)
    expect_positive(op, kernel_size=attrs["kernel"], stride=attrs["stride"])
    dilation = attrs.get("dilation", (1, 1))
    expect_positive(op, dilation=dilation)
    if min(attrs["padding"]) < 0:
        raise ValueError(f"{op} padding must be non-negative, but got {attrs['padding']}")
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    ceil = attrs["ceil_mode"]
    oh = pool_extent(op, "height", h, kh, sh, ph, dilation[0], ceil)
    ow = pool_extent(op, "width", w, kw, sw, pw, dilation[1], ceil)
    return [TensorType((n, c, oh, ow), x.dtype)]


def _max_pool2d_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    return _window_shape("max_pool2d", in_types, attrs)


def _avg_pool2d_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    return _window_shape("avg_pool2d", in_types, attrs)


def _global_avg_pool2d_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x = in_types[0]
    expect_rank("global_avg_pool2d", x, 4)
    return [TensorType((x.shape[0], x.shape[1], 1, 1), x.dtype)]


def _adaptive_shape(op: str, in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x = in_types[0]
    expect_rank(op, x, 4)
    expect_positive(op, output_size=attrs["output_size"])
    return [TensorType(x.shape[:2] + tuple(attrs["output_size"]), x.dtype)]


def _adaptive_max_pool2d_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    return _adaptive_shape("adaptive_max_pool2d", in_types, attrs)


def _adaptive_avg_pool2d_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    return _adaptive_shape("adaptive_avg_pool2d", in_types, attrs)


def _max_pool2d_vjp(node, grads, wants, emit):
    """Each output's gradient goes to the first maximum of its window (as PyTorch), found again
    from the saved input rather than stored as indices."""
    return [emit("max_pool2d_grad", [grads[0], node.inputs[0]], **node.attrs)[0]]


def _avg_pool2d_vjp(node, grads, wants, emit):
    size = node.inputs[0].shape[2:]
    return [emit("avg_pool2d_grad", [grads[0]], input_size=size, **node.attrs)[0]]


def _global_avg_pool2d_vjp(node, grads, wants, emit):
    return [emit("global_avg_pool2d_grad", [grads[0]], input_size=node.inputs[0].shape[2:])[0]]


def _adaptive_vjp(node, grads, wants, emit):
    is_max = node.op == "adaptive_max_pool2d"
    return [
        emit("adaptive_pool2d_grad", [grads[0], node.inputs[0]], is_max=is_max, **node.attrs)[0]
    ]


def _max_pool2d_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    gy, x = in_types
    if _max_pool2d_shape([x], attrs)[0] != gy:
        raise ValueError(f"max_pool2d_grad: output gradient {gy} does not match input {x}")
    return [x]


def _input_like(op: str, gy: TensorType, attrs: dict) -> TensorType:
    h, w = attrs["input_size"]
    expect_positive(op, input_size=(h, w))
    return TensorType(gy.shape[:2] + (h, w), gy.dtype)


def _avg_pool2d_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x = _input_like("avg_pool2d_grad", in_types[0], attrs)
    if _avg_pool2d_shape([x], attrs)[0] != in_types[0]:
        raise ValueError(f"avg_pool2d_grad: output gradient {in_types[0]} does not match {x}")
    return [x]


def _global_avg_pool2d_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    return [_input_like("global_avg_pool2d_grad", in_types[0], attrs)]


def _adaptive_pool2d_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    gy, x = in_types
    if _adaptive_shape("adaptive_pool2d_grad", [x], attrs)[0] != gy:
        raise ValueError(f"adaptive_pool2d_grad: output gradient {gy} does not match input {x}")
    return [x]


_WINDOW_DEFAULTS = dict(padding=(0, 0), ceil_mode=False)
register(
    "max_pool2d",
    _max_pool2d_shape,
    no_macs,
    vjp=_max_pool2d_vjp,
    dilation=(1, 1),
    **_WINDOW_DEFAULTS,
)
register(
    "avg_pool2d",
    _avg_pool2d_shape,
    no_macs,
    vjp=_avg_pool2d_vjp,
    count_include_pad=True,
    **_WINDOW_DEFAULTS,
)
register("global_avg_pool2d", _global_avg_pool2d_shape, no_macs, vjp=_global_avg_pool2d_vjp)
register("adaptive_max_pool2d", _adaptive_max_pool2d_shape, no_macs, vjp=_adaptive_vjp)
register("adaptive_avg_pool2d", _adaptive_avg_pool2d_shape, no_macs, vjp=_adaptive_vjp)
register(
    "max_pool2d_grad", _max_pool2d_grad_shape, no_macs, arity=2, dilation=(1, 1), **_WINDOW_DEFAULTS
)
register(
    "avg_pool2d_grad", _avg_pool2d_grad_shape, no_macs, count_include_pad=True, **_WINDOW_DEFAULTS
)
register("global_avg_pool2d_grad", _global_avg_pool2d_grad_shape, no_macs)
register("adaptive_pool2d_grad", _adaptive_pool2d_grad_shape, no_macs, arity=2)
