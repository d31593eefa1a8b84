"""Shape rules and MAC counts of graph.ops against PyTorch and hand formulas.

The oracle for every output shape is torch itself, run on small random tensors (shapes only are
compared); where torch rejects a configuration, the rule must reject it too, with a ValueError.
Imports nothing from backends/ or engine/.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from graph import nn
from graph.functional import conv_padding
from graph.ir import TensorType
from graph.ops import get_op
from graph.trace import trace


def _torch_shape(fn, *args, **kwargs) -> tuple[int, ...] | None:
    """torch's output shape, or None where torch refuses the configuration."""
    try:
        with torch.no_grad():
            return tuple(fn(*args, **kwargs).shape)
    except RuntimeError:
        return None


def _rule_shape(op: str, in_shapes: list[tuple[int, ...]], attrs: dict) -> tuple[int, ...] | None:
    try:
        (out,) = get_op(op).infer([TensorType(s) for s in in_shapes], attrs)
    except ValueError:
        return None
    return out.shape


# **** conv2d ****

CONV_SIZES = (1, 2, 5, 8)
CONV_KERNELS = ((1, 1), (2, 2), (3, 3), (1, 3), (5, 2))


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
def test_conv2d_shape_matches_torch(stride, dilation):
    checked = rejected = 0
    for h, w, (kh, kw), pad, groups in itertools.product(
        CONV_SIZES, CONV_SIZES, CONV_KERNELS, (0, 1, 2), (1, 2)
    ):
        x, weight = torch.randn(2, 4, h, w), torch.randn(6, 4 // groups, kh, kw)
        expected = _torch_shape(
            TF.conv2d, x, weight, stride=stride, padding=pad, dilation=dilation, groups=groups
        )
        attrs = dict(
            stride=(stride, stride),
            padding=(pad, pad, pad, pad),
            dilation=(dilation, dilation),
            groups=groups,
        )
        actual = _rule_shape("conv2d", [tuple(x.shape), tuple(weight.shape)], attrs)
        assert actual == expected, (h, w, kh, kw, stride, pad, dilation, groups)
        checked += 1
        rejected += expected is None
    assert 0 < rejected < checked  # the grid covers both valid and empty outputs


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel", [(1, 1), (2, 2), (3, 3), (4, 1), (2, 5)])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_conv2d_same_padding_matches_torch(kernel, dilation):
    """'same' with an even dilated kernel pads asymmetrically, as torch does."""
    x, weight = torch.randn(1, 3, 7, 9), torch.randn(4, 3, *kernel)
    expected = tuple(TF.conv2d(x, weight, padding="same", dilation=dilation).shape)
    pads = conv_padding("same", kernel, (dilation, dilation), 1)
    attrs = dict(stride=(1, 1), padding=pads, dilation=(dilation, dilation), groups=1)
    assert _rule_shape("conv2d", [(1, 3, 7, 9), (4, 3, *kernel)], attrs) == expected
    assert expected[2:] == (7, 9)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=(1, 3), padding=(0, 1)),
        dict(kernel_size=(3, 1), stride=(2, 1), padding=(1, 0)),
        dict(kernel_size=3, stride=2, padding=1, dilation=2),
        dict(kernel_size=4, padding="same"),
        dict(kernel_size=3, padding="valid"),
        dict(kernel_size=3, padding=1, groups=4),
        dict(kernel_size=3, padding=1, groups=8, bias=False),
        dict(kernel_size=2, padding=1, padding_mode="reflect"),
    ],
)
def test_conv2d_layer_shape_matches_torch(kwargs):
    """The whole path: nn.Conv2d normalises its arguments, the tracer applies the rule."""
    graph = trace(nn.Conv2d(8, 16, **kwargs), (8, 11, 10), batch=3)
    expected = tuple(torch.nn.Conv2d(8, 16, **kwargs)(torch.randn(3, 8, 11, 10)).shape)
    assert graph.outputs[0].shape == expected


# **** pooling ****


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool2d_shape_matches_torch(op, ceil_mode):
    checked = rejected = 0
    dilations = (1, 2) if op == "max_pool2d" else (1,)
    for size, kernel, stride, pad, dilation in itertools.product(
        (1, 2, 3, 6, 7), (1, 2, 3, 4), (1, 2, 3), (0, 1, 2), dilations
    ):
        x = torch.randn(2, 3, size, size + 1)
        attrs = dict(kernel=(kernel, kernel), stride=(stride, stride), padding=(pad, pad))
        attrs["ceil_mode"] = ceil_mode
        if op == "max_pool2d":
            attrs["dilation"] = (dilation, dilation)
            expected = _torch_shape(
                TF.max_pool2d, x, kernel, stride, pad, dilation, ceil_mode=ceil_mode
            )
        else:
            attrs["count_include_pad"] = True
            expected = _torch_shape(TF.avg_pool2d, x, kernel, stride, pad, ceil_mode=ceil_mode)
        actual = _rule_shape(op, [tuple(x.shape)], attrs)
        assert actual == expected, (size, kernel, stride, pad, dilation, ceil_mode)
        checked += 1
        rejected += expected is None
    assert 0 < rejected < checked


@pytest.mark.parametrize("out_size", [1, 2, 3, (2, 5), (7, 1)])
@pytest.mark.parametrize("in_size", [(7, 7), (5, 9), (13, 6)])
def test_adaptive_pool_shape_matches_torch(out_size, in_size):
    x = torch.randn(2, 3, *in_size)
    for layer, torch_layer in [
        (nn.AdaptiveAvgPool2d(out_size), torch.nn.AdaptiveAvgPool2d(out_size)),
        (nn.AdaptiveMaxPool2d(out_size), torch.nn.AdaptiveMaxPool2d(out_size)),
    ]:
        graph = trace(layer, (3, *in_size), batch=2)
        assert graph.outputs[0].shape == tuple(torch_layer(x).shape)


# **** the other shape rules ****


def test_linear_flatten_concat_pad_shapes_match_torch():
    x, y = torch.randn(2, 3, 5, 4), torch.randn(2, 7, 5, 4)
    features, weight, planes = torch.randn(3, 20), torch.randn(7, 20), torch.randn(2, 6, 3, 3)
    reflect = TF.pad(x, (3, 2, 1, 4), mode="reflect")
    cases = [
        ("flatten", [x], dict(start_dim=1, end_dim=3), torch.flatten(x, 1)),
        ("flatten", [x], dict(start_dim=0, end_dim=2), torch.flatten(x, 0, 2)),
        ("reshape", [x], dict(shape=(6, 20)), x.reshape(6, 20)),
        ("concat", [x, y], dict(dim=1), torch.cat([x, y], 1)),
        ("concat", [x, x, x], dict(dim=3), torch.cat([x, x, x], 3)),
        ("pad", [x], dict(pads=(1, 2, 3, 0), mode="constant", value=0.0), TF.pad(x, (1, 2, 3, 0))),
        ("pad", [x], dict(pads=(3, 2, 1, 4), mode="reflect", value=0.0), reflect),
        ("linear", [features, weight], {}, TF.linear(features, weight)),
        ("softmax", [x], dict(dim=1), TF.softmax(x, 1)),
        ("global_avg_pool2d", [x], {}, TF.adaptive_avg_pool2d(x, 1)),
        ("channel_shuffle", [planes], dict(groups=3), TF.channel_shuffle(planes, 3)),
    ]
    for op, inputs, attrs, expected in cases:
        assert _rule_shape(op, [tuple(t.shape) for t in inputs], attrs) == tuple(expected.shape)


@pytest.mark.parametrize(
    "op, in_shapes, attrs",
    [
        ("linear", [(3, 20), (7, 21)], {}),
        ("add", [(2, 3, 4, 4), (2, 3, 4, 5)], {}),
        ("concat", [(2, 3, 4, 4), (2, 3, 5, 4)], dict(dim=1)),
        ("reshape", [(2, 3, 4, 4)], dict(shape=(5, 19))),
        ("pad", [(1, 1, 3, 3)], dict(pads=(3, 0, 0, 0), mode="reflect", value=0.0)),
        ("channel_shuffle", [(2, 6, 3, 3)], dict(groups=4)),
        ("softmax", [(2, 6)], dict(dim=2)),
        ("flatten", [(2, 6, 3)], dict(start_dim=2, end_dim=1)),
    ],
)
def test_rules_reject_what_torch_rejects(op, in_shapes, attrs):
    torch_calls = {
        "linear": lambda a, b: TF.linear(a, b),
        "add": lambda a, b: a + b,
        "concat": lambda a, b: torch.cat([a, b], attrs["dim"]),
        "reshape": lambda a: a.reshape(attrs["shape"]),
        "pad": lambda a: TF.pad(a, attrs["pads"], mode="reflect"),
        "channel_shuffle": lambda a: TF.channel_shuffle(a, attrs["groups"]),
        "softmax": lambda a: TF.softmax(a, attrs["dim"]),
        "flatten": lambda a: torch.flatten(a, attrs["start_dim"], attrs["end_dim"]),
    }
    with pytest.raises((RuntimeError, IndexError, ValueError)):
        torch_calls[op](*[torch.randn(s) for s in in_shapes])
    with pytest.raises(ValueError):
        get_op(op).infer([TensorType(s) for s in in_shapes], attrs)


def test_rules_keep_dtype_and_reject_mixed_dtypes():
    attrs = dict(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1)
    conv = get_op("conv2d")
    x64 = TensorType((1, 2, 5, 5), "float64")
    w32, w64 = TensorType((3, 2, 3, 3), "float32"), TensorType((3, 2, 3, 3), "float64")
    (out,) = conv.infer([x64, w64], attrs)
    assert out == TensorType((1, 3, 3, 3), "float64")
    with pytest.raises(TypeError, match="float32.*float64|float64.*float32"):
        conv.infer([x64, w32], attrs)


# **** MAC counts, against the hand formulas ****


@pytest.mark.parametrize(
    "n, c, h, w, oc, k, stride, pad, groups",
    [
        (1, 3, 32, 32, 16, 3, 1, 1, 1),
        (2, 8, 15, 9, 12, 5, 2, 2, 4),
        (4, 16, 7, 7, 16, 3, 1, 1, 16),  # depthwise
        (2, 32, 8, 8, 64, 1, 1, 0, 1),  # pointwise
        (3, 6, 10, 10, 6, 3, 3, 0, 2),
    ],
)
def test_conv2d_macs_hand_formula(n, c, h, w, oc, k, stride, pad, groups):
    graph = trace(nn.Conv2d(c, oc, k, stride, pad, groups=groups), (c, h, w), batch=n)
    (node,) = graph.nodes
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    expected = n * oc * oh * ow * (c // groups) * k * k
    in_types = [v.type for v in node.inputs]
    assert get_op("conv2d").count_macs(in_types, [node.outputs[0].type], node.attrs) == expected


@pytest.mark.parametrize("n, fin, fout, bias", [(1, 10, 3, True), (8, 256, 100, False)])
def test_linear_macs_hand_formula(n, fin, fout, bias):
    graph = trace(
        nn.Sequential(nn.Flatten(), nn.Linear(fin, fout, bias=bias)), (fin, 1, 1), batch=n
    )
    node = graph.nodes[-1]
    macs = get_op("linear").count_macs([v.type for v in node.inputs], [node.outputs[0].type], {})
    assert macs == n * fin * fout


def test_weightless_ops_count_no_macs():
    model = nn.Sequential(
        nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    graph = trace(model, (3, 8, 8), batch=2)
    for node in graph.nodes:
        macs = get_op(node.op).count_macs(
            [v.type for v in node.inputs], [v.type for v in node.outputs], node.attrs
        )
        assert macs == 0, node.name
    assert np.prod(graph.outputs[0].shape) == 2 * 3
