"""conv2d: 2-D cross-correlation over NCHW input, as ``torch.nn.functional.conv2d``.

Inputs: x [N, C, H, W], weight [OC, C/groups, KH, KW], optional bias [OC].
Attributes (always tuples, normalised by ``graph.nn``/``graph.functional``):
``stride=(SH, SW)``, ``padding=(top, bottom, left, right)`` (asymmetric for ``"same"`` with an
even kernel, as PyTorch pads the extra row at the bottom), ``dilation=(DH, DW)``, ``groups``.
Output size per axis: ``floor((H + P_lo + P_hi - D*(K-1) - 1) / S) + 1``.
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import expect_positive, expect_rank, register


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


register(
    "conv2d",
    _conv2d_shape,
    _conv2d_macs,
    arity=None,
    stride=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    groups=1,
)
