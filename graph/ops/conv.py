"""conv2d: 2-D cross-correlation over NCHW input, as ``torch.nn.functional.conv2d``.

Inputs: x [N, C, H, W], weight [OC, C/groups, KH, KW], optional bias [OC].
Attributes (always tuples, normalised by ``graph.nn``/``graph.functional``):
``stride=(SH, SW)``, ``padding=(top, bottom, left, right)`` (asymmetric for ``"same"`` with an
even kernel, as PyTorch pads the extra row at the bottom), ``dilation=(DH, DW)``, ``groups``.
Output size per axis: ``floor((H + P_lo + P_hi - D*(K-1) - 1) / S) + 1``.
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import expect_positive, expect_rank, no_macs, register


def pooled_extent(
    op: str, axis: str, size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int, dilation: int
) -> int:
    """Output size of a sliding window; raises with the arithmetic when it would be empty."""
    span = size + pad_lo + pad_hi - dilation * (kernel - 1) - 1
    out = span // stride + 1 if span >= 0 else 0
    if out < 1:
        raise ValueError(
            f"{op} kernel is larger than the padded input along {axis}: output {axis} = "
            f"floor(({size} + {pad_lo} + {pad_hi} - {dilation}*({kernel}-1) - 1) / {stride}) + 1"
            f" = {out}, but it must be at least 1 (padded input {size + pad_lo + pad_hi}, "
            f"dilated kernel {dilation * (kernel - 1) + 1})"
        )
    return out


def _conv2d_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if len(in_types) not in (2, 3):
        raise ValueError(f"conv2d takes x, weight and an optional bias, but got {len(in_types)}")
    x, w = in_types[0], in_types[1]
    expect_rank("conv2d", x, 4)
    expect_rank("conv2d", w, 4, "weight")
    (sh, sw), (pt, pb, pl, pr) = attrs["stride"], attrs["padding"]
    (dh, dw), groups = attrs["dilation"], attrs["groups"]
    expect_positive("conv2d", stride=attrs["stride"], dilation=attrs["dilation"], groups=groups)
    if min(pt, pb, pl, pr) < 0:
        raise ValueError(f"conv2d padding must be non-negative, but got {attrs['padding']}")
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    if c % groups:
        raise ValueError(
            f"conv2d in_channels must be divisible by groups, but got in_channels={c}, "
            f"groups={groups}"
        )
    if oc % groups:
        raise ValueError(
            f"conv2d out_channels must be divisible by groups, but got out_channels={oc}, "
            f"groups={groups}"
        )
    if cg * groups != c:
        raise ValueError(
            f"conv2d input must have in_channels = weight.shape[1]*groups = {cg}*{groups} = "
            f"{cg * groups} channels, but got input shape {list(x.shape)} for weight shape "
            f"{list(w.shape)}"
        )
    if len(in_types) == 3 and in_types[2].shape != (oc,):
        raise ValueError(f"conv2d bias must have shape [{oc}], but got {list(in_types[2].shape)}")
    oh = pooled_extent("conv2d", "height", h, kh, sh, pt, pb, dh)
    ow = pooled_extent("conv2d", "width", wd, kw, sw, pl, pr, dw)
    return [TensorType((n, oc, oh, ow), x.dtype)]


def _conv2d_macs(in_types: list[TensorType], out_types: list[TensorType], attrs: dict) -> int:
    _, cg, kh, kw = in_types[1].shape
    return out_types[0].numel * cg * kh * kw


def _conv2d_vjp(node, grads, wants, emit):
    """The course notes' rules: grad_input correlates the zero-padded output gradient with the
    180-degree-rotated kernel (a transposed conv); grad_weight correlates the input with the
    output gradient; grad_bias sums the output gradient over batch and pixels.

    At stride 1 the transposed conv is an ordinary conv2d, so it runs on the forward pass's
    fast kernels: the kernel flipped and its in/out channels swapped per group
    (``conv2d_flip_weight``), with "full" padding (K-1)*D - P on each side. Otherwise (strides,
    padding wider than the dilated kernel, or fewer than 8 input channels per group, which make
    that conv's GEMM too thin) ``conv2d_grad_input`` scatters columns back."""
    (gy,), (x, w) = grads, node.inputs[:2]
    attrs = {k: node.attrs[k] for k in ("stride", "padding", "dilation", "groups")}
    (kh, kw), (dh, dw), (pt, pb, pl, pr) = w.shape[2:], attrs["dilation"], attrs["padding"]
    full = ((kh - 1) * dh - pt, (kh - 1) * dh - pb, (kw - 1) * dw - pl, (kw - 1) * dw - pr)
    grad_x = None
    if wants[0] and attrs["stride"] == (1, 1) and min(full) >= 0 and w.shape[1] >= 8:
        flipped = emit("conv2d_flip_weight", [w], groups=attrs["groups"])[0]
        grad_x = emit(
            "conv2d",
            [gy, flipped],
            stride=(1, 1),
            padding=full,
            dilation=attrs["dilation"],
            groups=attrs["groups"],
        )[0]
    elif wants[0]:
        grad_x = emit("conv2d_grad_input", [gy, w], input_size=x.shape[2:], **attrs)[0]
    grad_w = (
        emit("conv2d_grad_weight", [x, gy], kernel=w.shape[2:], **attrs)[0] if wants[1] else None
    )
    grad_b = [emit("channel_sum", [gy])[0]] if len(node.inputs) == 3 else []
    return [grad_x, grad_w, *grad_b]


def _conv2d_flip_weight_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """[OC, C/g, KH, KW] -> [C, OC/g, KH, KW]: per group, in and out channels swapped and the
    kernel rotated by 180 degrees (the weight of the transposed conv)."""
    w, groups = in_types[0], attrs["groups"]
    expect_rank("conv2d_flip_weight", w, 4, "weight")
    oc, cg, kh, kw = w.shape
    if oc % groups:
        raise ValueError(f"conv2d_flip_weight: {oc} output channels do not divide into {groups}")
    return [TensorType((cg * groups, oc // groups, kh, kw), w.dtype)]


def _conv2d_grad_input_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    gy, w = in_types
    n, groups, (h, wd) = gy.shape[0], attrs["groups"], attrs["input_size"]
    x = TensorType((n, w.shape[1] * groups, h, wd), gy.dtype)
    if _conv2d_shape([x, w], attrs)[0] != gy:
        raise ValueError(f"conv2d_grad_input: output gradient {gy} does not match input {x}")
    return [x]


def _conv2d_grad_weight_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x, gy = in_types
    kh, kw = attrs["kernel"]
    w = TensorType((gy.shape[1], x.shape[1] // attrs["groups"], kh, kw), x.dtype)
    if _conv2d_shape([x, w], attrs)[0] != gy:
        raise ValueError(f"conv2d_grad_weight: output gradient {gy} does not match input {x}")
    return [w]


def _conv2d_grad_input_macs(in_types, out_types, attrs) -> int:
    _, cg, kh, kw = in_types[1].shape
    return in_types[0].numel * cg * kh * kw


def _conv2d_grad_weight_macs(in_types, out_types, attrs) -> int:
    _, cg, kh, kw = out_types[0].shape
    return in_types[1].numel * cg * kh * kw


def _channel_sum_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """Sum over every axis but 1: a bias gradient, [N, C, ...] -> [C]."""
    return [TensorType((in_types[0].shape[1],), in_types[0].dtype)]


_CONV_DEFAULTS = dict(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1)
register("conv2d", _conv2d_shape, _conv2d_macs, arity=None, vjp=_conv2d_vjp, **_CONV_DEFAULTS)
register(
    "conv2d_grad_input",
    _conv2d_grad_input_shape,
    _conv2d_grad_input_macs,
    arity=2,
    **_CONV_DEFAULTS,
)
register(
    "conv2d_grad_weight",
    _conv2d_grad_weight_shape,
    _conv2d_grad_weight_macs,
    arity=2,
    **_CONV_DEFAULTS,
)
register("channel_sum", _channel_sum_shape, no_macs)
register("conv2d_flip_weight", _conv2d_flip_weight_shape, no_macs, groups=1)
