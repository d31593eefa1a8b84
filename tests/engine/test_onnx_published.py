"""Published models through ONNX: the forms older exporters write, at every opset from 7.

The ONNX model zoo's classic CNNs (BVLC AlexNet and GoogLeNet, ZFNet-512, ResNet-50, SqueezeNet,
VGG-19, DenseNet-121) were exported by Caffe2 and early PyTorch at opsets 7-9. The files cannot
be downloaded here, so each of their patterns is a small graph built with ``onnx.helper``:
LRN (odd and even sizes, wider than the channels), Sum of one to three inputs, constant
subgraphs (ConstantOfShape, Constant, Shape, Gather, Unsqueeze, Concat) folded at import,
per-channel Add/Sub/Mul/Div by constants (folded into a conv's or a Gemm's bias, or lowered to
channel_scale and a bias), Reshape to a flatten, Softmax (the 2-D coercion before opset 13),
Dropout of every version, old BatchNormalization attributes, DenseNet's concatenations; plus a
BVLC-AlexNet-like and a GoogLeNet-like graph at opsets 7-9.

- ONNX Runtime is the oracle: outputs rel 1e-5 (float32), on fresh random inputs, buffers
  poisoned with NaN, at opsets 7, 8, 9, 11, 13 and the newest the installed ``onnx`` knows
  (opset 7-8 files use IR version 3, their initializers listed as graph inputs, as then).
- Training: each imported pattern compiles with ``train=True`` in float64 and its gradient
  (input and every weight) agrees with central differences along a random direction
  (``tests/gradcheck.py``); one SGD step in float32 lowers the loss.
- A DenseNet written in PyTorch (``tests/torch_twins.py``-style, torchvision being absent) goes
  through ``torch.onnx.export`` and comes back with torch's and ONNX Runtime's outputs: a small
  configuration in the quick suite, DenseNet-121 in the slow one.
- Opsets: a model older than 7 is converted by ``onnx.version_converter`` or refused with its
  reason; one newer than ``onnx`` knows is refused naming the installed version; unsupported
  ops are listed with their nodes.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import engine
import zoo
from engine.optim import SGD
from graph import nn
from tests.gradcheck import check_directional_derivative
from tests.helpers import rel_error

NEWEST = onnx.defs.onnx_opset_version()
OPSETS = [7, 8, 9, 11, 13, NEWEST]
INPUT = (3, 8, 8)


class Builder:
    """A small ONNX graph written as an exporter of opset ``opset`` writes it: node and value
    names ``<op>_<k>``, random weights, ops spelled in that opset's form."""

    def __init__(self, opset: int, rng: np.random.Generator) -> None:
        self.opset, self.rng = opset, rng
        self.nodes: list = []
        self.initializers: dict[str, np.ndarray] = {}

    def _name(self, base: str) -> str:
        return f"{base}_{len(self.nodes) + len(self.initializers)}"

    def const(self, value, dtype=np.float32) -> str:
        name = self._name("const")
        self.initializers[name] = np.asarray(value, dtype)
        return name

    def weight(self, *shape: int, scale: float = 0.4) -> str:
        return self.const(scale * self.rng.standard_normal(shape))

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str:
        name = self._name(op_type.lower())
        names = [name] + [f"{name}_out{k}" for k in range(1, outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int = 3, bias: bool = True, **attrs) -> str:
        groups = attrs.get("group", 1)
        inputs = [x, self.weight(cout, cin // groups, k, k)]
        inputs += [self.weight(cout, scale=0.1)] if bias else []
        attrs.setdefault("pads", [k // 2] * 4)
        return self.op("Conv", inputs, kernel_shape=[k, k], **attrs)

    def batch_norm(self, x: str, channels: int) -> str:
        stats = [
            self.const(self.rng.uniform(0.5, 1.5, channels)),
            self.weight(channels, scale=0.2),
            self.weight(channels, scale=0.2),
            self.const(self.rng.uniform(0.5, 2.0, channels)),
        ]
        old = {"spatial": 1} if self.opset < 9 else {}  # an opset 7-8 attribute
        return self.op("BatchNormalization", [x, *stats], epsilon=1e-3, **old)

    def gemm(self, x: str, k: int, m: int) -> str:
        """Gemm with transB, as exporters write a Linear (C is required before opset 11)."""
        return self.op("Gemm", [x, self.weight(m, k), self.weight(m, scale=0.1)], transB=1)

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.const(axes, np.int64)])
        return self.op("Unsqueeze", [x], axes=axes)

    def dropout(self, x: str, ratio: float) -> str:
        """With the mask output no node reads, as old exporters left it."""
        if self.opset >= 12:
            return self.op("Dropout", [x, self.const(ratio)], outputs=2)
        return self.op("Dropout", [x], outputs=2, ratio=ratio)

    def flatten(self, x: str) -> str:
        """Reshape to [N, -1] by a constant shape (0 copies N)."""
        return self.op("Reshape", [x, self.const([0, -1], np.int64)])

    def save(self, output: str, path, shape=INPUT, batch: int = 2, out_shape=None) -> None:
        """Written at the opset's oldest IR version; the output's shape is ``out_shape`` or
        found by ONNX Runtime."""
        elem = TensorProto.FLOAT
        inputs = [helper.make_tensor_value_info("x", elem, [batch, *shape])]
        weights = [numpy_helper.from_array(a, n) for n, a in self.initializers.items()]
        outputs = [helper.make_tensor_value_info(output, elem, None)]
        graph = helper.make_graph(self.nodes, "published", inputs, outputs, weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", self.opset)])
        model.ir_version = max(ir_version, 7)  # ONNX Runtime reads it without output shape
        dims = out_shape or _onnx_runtime(model, np.zeros((batch, *shape), np.float32)).shape
        graph.output[0].CopyFrom(helper.make_tensor_value_info(output, elem, dims))
        if ir_version < 4:  # IR 3: initializers are graph inputs too
            graph.input.extend(
                helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                for n, a in self.initializers.items()
            )
        model = helper.make_model(graph, opset_imports=model.opset_import)
        model.ir_version = ir_version
        onnx.checker.check_model(model)
        onnx.save(model, str(path))


# **** The patterns: (builder, input name) -> output name, on [2, 3, 8, 8] ****


def lrn(b: Builder, x: str) -> str:
    """Conv + ReLU + LRN as AlexNet, LRN before and after pooling as GoogLeNet, a size larger
    than the channels. (ONNX Runtime refuses even sizes: ``test_lrn_of_even_size``.)"""
    h = b.op("Relu", [b.conv(x, 3, 6)])
    h = b.op("LRN", [h], size=5, alpha=0.5, beta=0.75, bias=2.0)
    h = b.op("MaxPool", [h], kernel_shape=[3, 3], strides=[2, 2])
    h = b.op("Relu", [b.conv(h, 6, 4, group=2)])
    h = b.op("LRN", [h], size=3, alpha=0.3, beta=0.6)
    return b.op("LRN", [h], size=7, alpha=1.0, beta=0.9, bias=1.5)


def sums(b: Builder, x: str) -> str:
    """Sum of three branches, of two, of one (Caffe2's residual merges)."""
    branches = [b.conv(x, 3, 4) for _ in range(3)]
    h = b.op("Relu", [b.op("Sum", branches)])
    h = b.op("Sum", [h, b.conv(h, 4, 4)])
    return b.op("Sum", [b.op("Relu", [h])])


def constant_subgraph(b: Builder, x: str) -> str:
    """A per-channel scale and shift made by ConstantOfShape (a Constant before opset 9) and
    Unsqueeze, a Reshape target made by Shape + Gather + Unsqueeze + Concat."""
    h = b.conv(x, 3, 4)
    if b.opset >= 9:
        filled = b.op("ConstantOfShape", [b.const([4], np.int64)], value=helper.make_tensor(
            "value", TensorProto.FLOAT, [1], [0.75]))  # fmt: skip
    else:
        filled = b.op("Constant", [], value=numpy_helper.from_array(np.full(4, 0.75, np.float32)))
    scale = b.unsqueeze(filled, [1, 2])
    shift = b.unsqueeze(b.op("Constant", [], value=numpy_helper.from_array(
        np.linspace(-1.0, 1.0, 4).astype(np.float32))), [1, 2])  # fmt: skip
    h = b.op("Relu", [b.op("Add", [b.op("Mul", [h, scale]), shift])])
    batch = b.unsqueeze(b.op("Gather", [b.op("Shape", [h]), b.const(0, np.int64)]), [0])
    target = b.op("Concat", [batch, b.const([-1], np.int64)], axis=0)
    return b.gemm(b.op("Reshape", [h, target]), 4 * 8 * 8, 5)


def channel_affine(b: Builder, x: str) -> str:
    """Input normalisation (Sub mean, Div std per channel), a conv without bias and an Add
    (folded into it), BatchNormalization then Caffe's Scale layer as Mul + Add, a Gemm and
    an Add of a [1, M] constant (folded into its bias)."""
    mean = b.const(b.rng.uniform(-1.0, 1.0, (1, 3, 1, 1)))
    std = b.const(b.rng.uniform(0.5, 2.0, (1, 3, 1, 1)))
    h = b.op("Div", [b.op("Sub", [x, mean]), std])
    h = b.op("Add", [b.conv(h, 3, 4, bias=False), b.weight(4, 1, 1)])
    h = b.batch_norm(h, 4)
    h = b.op("Add", [b.op("Mul", [h, b.weight(1, 4, 1, 1)]), b.weight(1, 4, 1, 1)])
    h = b.op("GlobalAveragePool", [b.op("Relu", [h])])
    h = b.op("Flatten", [h])
    return b.op("Add", [b.gemm(h, 4, 5), b.weight(1, 5)])


def reshape_softmax(b: Builder, x: str) -> str:
    """Softmax with axis=1 on a 4-D tensor (over C*H*W at once before opset 13, over C from
    13), Reshape to a flatten, Gemm, Softmax of the logits (its default axis)."""
    h = b.op("Softmax", [b.conv(x, 3, 4)], axis=1)
    return b.op("Softmax", [b.gemm(b.flatten(h), 4 * 8 * 8, 6)])


def dropout_batch_norm(b: Builder, x: str) -> str:
    """Conv + BatchNormalization (spatial=1 at opsets 7-8) + ReLU + Dropout with its mask
    output, max and average pooling."""
    h = b.op("Relu", [b.batch_norm(b.conv(x, 3, 4, bias=False), 4)])
    h = b.dropout(b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2]), 0.3)
    return b.dropout(b.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2]), 0.5)


def dense_block(b: Builder, x: str) -> str:
    """DenseNet: each layer (BN, ReLU, 1x1 conv, BN, ReLU, 3x3 conv) reads the concatenation
    of all the maps before it; a transition (BN, ReLU, 1x1 conv, 2x2 average pool)."""
    features = [b.conv(x, 3, 4)]
    for _ in range(3):
        channels = 4 + 2 * (len(features) - 1)
        joined = b.op("Concat", features, axis=1) if len(features) > 1 else features[0]
        h = b.conv(b.op("Relu", [b.batch_norm(joined, channels)]), channels, 4, 1, bias=False)
        features.append(b.conv(b.op("Relu", [b.batch_norm(h, 4)]), 4, 2, bias=False))
    h = b.op("Relu", [b.batch_norm(b.op("Concat", features, axis=1), 10)])
    return b.op(
        "AveragePool", [b.conv(h, 10, 5, 1, bias=False)], kernel_shape=[2, 2], strides=[2, 2]
    )


PATTERNS = {
    f.__name__: f
    for f in (lrn, sums, constant_subgraph, channel_affine, reshape_softmax, dropout_batch_norm,
              dense_block)
}  # fmt: skip


def _onnx_runtime(source, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's output for a file or a model."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    model = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _write(pattern, opset: int, path, rng) -> None:
    b = Builder(opset, rng)
    b.save(pattern(b, "x"), path)


def _assert_like_onnx_runtime(
    path, rng, shape=INPUT, scale: float = 3.0, oracle=None, tolerance: float = 1e-5
):
    """Imported and compiled for the file's batch, run on a random batch times ``scale``;
    ONNX Runtime runs ``oracle`` (default: the file itself). ``tolerance`` is DESIGN's: 1e-5
    for a few ops, 1e-4 for whole networks."""
    model = engine.import_onnx(path)
    exe = engine.compile(model, model.input_shape, batch=model.batch)
    exe.poison_buffers()
    x = (scale * rng.standard_normal((model.batch, *shape))).astype(np.float32)
    err = rel_error(exe.run(x), _onnx_runtime(oracle or path, x))
    assert err < tolerance, f"relative error {err:.2e} against ONNX Runtime"
    return model


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_pattern_runs_as_onnx_runtime_runs_it(pattern, opset, tmp_path, rng):
    _write(PATTERNS[pattern], opset, tmp_path / "model.onnx", rng)
    _assert_like_onnx_runtime(tmp_path / "model.onnx", rng)


def _hold_dropout_masks(exe) -> None:
    """The same dropout masks at every step (the step counter held), so that the loss is one
    function of the weights for finite differences and descent."""
    for method in ("forward_backward", "train_step"):
        run = getattr(exe, method)

        def held(*args, _run=run):
            for counter in exe.rng_state.values():
                counter[1] = 0
            return _run(*args)

        setattr(exe, method, held)


@pytest.mark.parametrize("opset", [7, NEWEST])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_imported_pattern_trains_with_exact_gradients(pattern, opset, tmp_path, rng):
    """float64: input and weight gradients against central differences; float32: one SGD
    step lowers the loss on a fixed batch."""
    _write(PATTERNS[pattern], opset, tmp_path / "model.onnx", rng)
    model = engine.import_onnx(tmp_path / "model.onnx")
    exe = engine.compile(
        model, INPUT, batch=2, dtype="float64", train=True, loss="mse", input_grad=True
    )
    _hold_dropout_masks(exe)
    x = 2.0 * rng.standard_normal((2, *INPUT))
    target = rng.standard_normal(exe.graph.outputs[0].shape)
    exe.forward_backward(x, target)
    assert all(np.all(np.isfinite(g)) for g in exe.grads.values())
    check_directional_derivative(exe, x, target, rng)
    trainer = engine.compile(model, INPUT, batch=2, train=True, loss="mse", optimizer=SGD(1e-3))
    _hold_dropout_masks(trainer)
    x, target = x.astype(np.float32), target.astype(np.float32)
    first = trainer.train_step(x, target)
    assert np.isfinite(first) and trainer.train_step(x, target) < first


def _onnx_lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX's LRN as its specification states it, one channel at a time: the window of c is
    [c - floor((size - 1) / 2), c + ceil((size - 1) / 2)], clipped to the channels."""
    y = np.empty_like(x)
    channels = x.shape[1]
    for c in range(channels):
        low, high = max(0, c - (size - 1) // 2), min(channels - 1, c + size // 2)
        square_sum = (x[:, low : high + 1] ** 2).sum(axis=1)
        y[:, c] = x[:, c] / (bias + alpha / size * square_sum) ** beta
    return y


@pytest.mark.parametrize("size", [2, 4, 6])
def test_lrn_of_even_size(size, tmp_path, rng):
    """ONNX Runtime implements odd sizes only; the oracle is the specification's formula."""
    b = Builder(13, rng)
    lrn = b.op("LRN", ["x"], size=size, alpha=0.8, beta=0.7, bias=1.5)
    b.save(lrn, tmp_path / "lrn.onnx", (5, 3, 4), out_shape=(2, 5, 3, 4))
    exe = engine.compile(engine.import_onnx(tmp_path / "lrn.onnx"), (5, 3, 4), batch=2)
    exe.poison_buffers()
    x = 2.0 * rng.standard_normal((2, 5, 3, 4))
    expected = _onnx_lrn(x, size, 0.8, 0.7, 1.5)
    assert rel_error(exe.run(x.astype(np.float32)), expected) < 1e-5


def test_old_forms_are_lowered_as_documented(tmp_path, rng):
    """The per-channel Add after a bias-free conv becomes its bias, the Gemm's Add joins its
    bias, Sub and Div of the input become a bias (a depthwise conv) and a channel scale, as
    does Caffe's Scale layer (Mul, Add); the constant subgraphs leave no node behind, Reshape
    to [N, -1] is a flatten."""
    _write(channel_affine, 9, tmp_path / "affine.onnx", rng)
    exe = engine.compile(engine.import_onnx(tmp_path / "affine.onnx"), INPUT, batch=2)
    ops = [n.op for n in exe.traced_graph.nodes]
    assert ops.count("conv2d") == 3 and ops.count("channel_scale") == 2  # 2 biases, 1 conv
    assert "add" not in ops and "sub" not in ops
    _write(constant_subgraph, 13, tmp_path / "constants.onnx", rng)
    exe = engine.compile(engine.import_onnx(tmp_path / "constants.onnx"), INPUT, batch=2)
    ops = [n.op for n in exe.traced_graph.nodes]
    assert ops == ["conv2d", "channel_scale", "conv2d", "relu", "flatten", "linear"]


# **** Classic networks as the model zoo's files have them, at opsets 7-9 ****


def bvlc_alexnet(b: Builder, x: str) -> str:
    """bvlc_alexnet's layers at a quarter of its widths: conv1 11x11/4, ReLU, LRN, pool,
    conv2 5x5 in two groups, ReLU, LRN, pool, conv3-5 (4 and 5 grouped), pool, fc6-fc8 with
    dropout, softmax."""
    pool = {"kernel_shape": [3, 3], "strides": [2, 2]}
    h = b.op("Relu", [b.conv(x, 3, 24, 11, strides=[4, 4], pads=[0] * 4)])
    h = b.op("MaxPool", [b.op("LRN", [h], size=5, alpha=1e-4, beta=0.75, bias=1.0)], **pool)
    h = b.op("Relu", [b.conv(h, 24, 64, 5, group=2)])
    h = b.op("MaxPool", [b.op("LRN", [h], size=5, alpha=1e-4, beta=0.75, bias=1.0)], **pool)
    h = b.op("Relu", [b.conv(h, 64, 96)])
    h = b.op("Relu", [b.conv(h, 96, 96, group=2)])
    h = b.op("Relu", [b.conv(h, 96, 64, group=2)])
    h = b.flatten(b.op("MaxPool", [h], **pool))
    h = b.dropout(b.op("Relu", [b.gemm(h, 64 * 6 * 6, 128)]), 0.5)
    h = b.dropout(b.op("Relu", [b.gemm(h, 128, 128)]), 0.5)
    return b.op("Softmax", [b.gemm(h, 128, 10)])


def bvlc_googlenet(b: Builder, x: str) -> str:
    """bvlc_googlenet's stem (conv 7x7/2, pool, LRN, 1x1, 3x3, LRN, pool; ceil-mode pools as
    Caffe's) and one inception module (1x1 | 1x1-3x3 | 1x1-5x5 | pool-1x1, concatenated),
    average pool, dropout, fc, softmax."""
    ceil = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 1]}
    h = b.op("MaxPool", [b.op("Relu", [b.conv(x, 3, 16, 7, strides=[2, 2])])], **ceil)
    h = b.op("LRN", [h], size=5, alpha=1e-4, beta=0.75)
    h = b.op("Relu", [b.conv(b.op("Relu", [b.conv(h, 16, 16, 1)]), 16, 24)])
    h = b.op("MaxPool", [b.op("LRN", [h], size=5, alpha=1e-4, beta=0.75)], **ceil)
    branches = [
        b.op("Relu", [b.conv(h, 24, 8, 1)]),
        b.op("Relu", [b.conv(b.op("Relu", [b.conv(h, 24, 12, 1)]), 12, 16)]),
        b.op("Relu", [b.conv(b.op("Relu", [b.conv(h, 24, 4, 1)]), 4, 8, 5)]),
        b.op("Relu", [b.conv(b.op("MaxPool", [h], kernel_shape=[3, 3], pads=[1] * 4), 24, 8, 1)]),
    ]
    h = b.op("Concat", branches, axis=1)
    h = b.dropout(b.op("AveragePool", [h], kernel_shape=[7, 7]), 0.4)
    return b.op("Softmax", [b.gemm(b.flatten(h), 40, 10)])


@pytest.mark.parametrize("opset", [7, 8, 9])
@pytest.mark.parametrize(
    "network,side", [(bvlc_alexnet, 227), (bvlc_googlenet, 56)], ids=["alexnet", "googlenet"]
)
def test_classic_network_from_the_model_zoo_era(network, side, opset, tmp_path, rng):
    """Written for a batch of 1 as the model zoo's files are, trained at a batch of 2. Whole
    networks get DESIGN's 1e-4: two float32 engines each within 1e-5 of the float64 answer can
    differ by more than 1e-5 (GoogLeNet, seed 2282938435: ours 4.0e-6 and ONNX Runtime 6.9e-6
    from our float64 plan, 1.09e-5 apart)."""
    b = Builder(opset, rng)
    b.save(network(b, "x"), tmp_path / "net.onnx", (3, side, side), batch=1)
    model = _assert_like_onnx_runtime(
        tmp_path / "net.onnx", rng, (3, side, side), 1.0, tolerance=1e-4
    )
    trainer = engine.compile(model, (3, side, side), batch=2, train=True, optimizer=SGD(0.01))
    x = rng.standard_normal((2, 3, side, side)).astype(np.float32)
    assert np.isfinite(trainer.train_step(x, np.array([1, 7])))
    assert all(np.all(np.isfinite(g)) for g in trainer.grads.values())


# **** The zoo's published AlexNet, ZFNet and GoogLeNet round-trip through ONNX ****


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,side", [("alexnet", 227), ("zfnet", 224), ("googlenet", 224)], ids=str
)
def test_zoo_published_variant_round_trips(name, side, tmp_path, rng):
    exe = engine.compile(zoo.get(name, lrn=True, num_classes=10), (3, side, side), batch=1)
    path = tmp_path / f"{name}.onnx"
    engine.export_onnx(exe, path)
    x = rng.standard_normal((1, 3, side, side)).astype(np.float32)
    assert rel_error(_onnx_runtime(path, x), exe.run(x)) < 1e-5
    assert any(n.op_type == "LRN" for n in onnx.load(str(path)).graph.node)
    again = engine.compile(engine.import_onnx(path), (3, side, side), batch=1)
    np.testing.assert_array_equal(again.run(x), exe.run(x))


# **** DenseNet: a model that comes only as a file ****


class DenseLayer(torch.nn.Module):
    def __init__(self, channels: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = torch.nn.BatchNorm2d(channels)
        self.conv1 = torch.nn.Conv2d(channels, bn_size * growth, 1, bias=False)
        self.norm2 = torch.nn.BatchNorm2d(bn_size * growth)
        self.conv2 = torch.nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        h = self.conv1(torch.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(torch.relu(self.norm2(h)))


class DenseNet(torch.nn.Module):
    """torchvision's DenseNet (Huang et al. 2017), with its module names; DenseNet-121 is
    ``DenseNet(32, (6, 12, 24, 16), 64)``, 7,978,856 parameters at 1000 classes."""

    def __init__(self, growth: int, blocks: tuple[int, ...], init: int, bn_size: int = 4,
                 num_classes: int = 1000) -> None:  # fmt: skip
        super().__init__()
        layers = {
            "conv0": torch.nn.Conv2d(3, init, 7, stride=2, padding=3, bias=False),
            "norm0": torch.nn.BatchNorm2d(init),
            "relu0": torch.nn.ReLU(),
            "pool0": torch.nn.MaxPool2d(3, 2, 1),
        }
        channels = init
        for i, count in enumerate(blocks, 1):
            block = torch.nn.ModuleDict()
            for j in range(count):
                block[f"denselayer{j + 1}"] = DenseLayer(channels + j * growth, growth, bn_size)
            layers[f"denseblock{i}"] = block
            channels += count * growth
            if i < len(blocks):
                layers[f"transition{i}"] = torch.nn.Sequential()
                layers[f"transition{i}"].add_module("norm", torch.nn.BatchNorm2d(channels))
                layers[f"transition{i}"].add_module("relu", torch.nn.ReLU())
                layers[f"transition{i}"].add_module(
                    "conv", torch.nn.Conv2d(channels, channels // 2, 1, bias=False)
                )
                layers[f"transition{i}"].add_module("pool", torch.nn.AvgPool2d(2, 2))
                channels //= 2
        layers["norm5"] = torch.nn.BatchNorm2d(channels)
        self.features = torch.nn.ModuleDict(layers)
        self.classifier = torch.nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, layer in self.features.items():
            if name.startswith("denseblock"):
                features = [x]
                for dense in layer.values():
                    features.append(dense(features))
                x = torch.cat(features, 1)
            else:
                x = layer(x)
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(x), 1)
        return self.classifier(torch.flatten(x, 1))


def _random_statistics(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def _densenet_case(model: DenseNet, side: int, tmp_path, rng) -> None:
    """The README's case: exported by torch for a batch of 1 (legacy exporter, opset 9, as
    the model zoo's DenseNet-121), imported with torch's and ONNX Runtime's outputs, trained
    at a batch of 4 (one SGD step, finite gradients), saved, and resumed by ``engine.load``
    with the same next step."""
    model = _random_statistics(model)
    x = torch.from_numpy(rng.standard_normal((1, 3, side, side)).astype(np.float32))
    path = tmp_path / "densenet.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=9)
    imported = engine.import_onnx(path)
    assert (imported.input_shape, imported.batch) == ((3, side, side), 1)
    exe = engine.compile(imported, imported.input_shape, batch=1)
    exe.poison_buffers()
    out = exe.run(x.numpy())
    assert rel_error(out, _onnx_runtime(path, x.numpy())) < 1e-5
    with torch.no_grad():
        assert rel_error(out, model(x).numpy()) < 1e-4
    optimizer = SGD(0.01, momentum=0.9)
    trainer = engine.compile(imported, imported.input_shape, 4, train=True, optimizer=optimizer)
    images = rng.standard_normal((4, 3, side, side)).astype(np.float32)
    labels = np.array([1, 3, 0, 9])
    assert np.isfinite(trainer.train_step(images, labels))
    assert all(np.all(np.isfinite(g)) for g in trainer.grads.values())
    engine.save(trainer, tmp_path / "densenet.cf")
    resumed = engine.load(tmp_path / "densenet.cf")
    assert resumed.train_step(images, labels) == trainer.train_step(images, labels)


def test_small_densenet_from_torch(tmp_path, rng):
    _densenet_case(DenseNet(4, (2, 3), 8, bn_size=2, num_classes=10), 32, tmp_path, rng)


@pytest.mark.slow
def test_densenet121_from_torch(tmp_path, rng):
    model = DenseNet(32, (6, 12, 24, 16), 64)
    assert sum(p.numel() for p in model.parameters()) == 7_978_856  # torchvision's figure
    _densenet_case(model, 32, tmp_path, rng)


# **** Opsets and errors ****


def _opset6_model(path, broadcast_add: bool) -> None:
    """Conv, BatchNormalization and Dropout with opset 6's is_test; with ``broadcast_add``,
    an Add of a [C] bias with opset 6's broadcast=1, axis=1 (which the converter refuses)."""
    b = Builder(6, np.random.default_rng(0))
    h = b.op("Relu", [b.batch_norm(b.conv("x", 3, 4), 4)])
    b.nodes[-2].attribute.append(helper.make_attribute("is_test", 1))
    h = b.op("Dropout", [h], is_test=1, ratio=0.3)
    if broadcast_add:
        h = b.op("Add", [h, b.weight(4)], broadcast=1, axis=1)
    b.save(h, path, out_shape=(2, 4, 8, 8))


def test_opset_6_model_is_converted_to_7(tmp_path, rng):
    """ONNX Runtime no longer runs opset 6's BatchNormalization: its oracle is the file as the
    converter writes it at opset 7."""
    _opset6_model(tmp_path / "old.onnx", broadcast_add=False)
    converted = onnx.version_converter.convert_version(onnx.load(str(tmp_path / "old.onnx")), 7)
    onnx.save(converted, str(tmp_path / "converted.onnx"))
    _assert_like_onnx_runtime(tmp_path / "old.onnx", rng, oracle=tmp_path / "converted.onnx")


def test_unconvertible_and_too_new_opsets_say_why(tmp_path):
    _opset6_model(tmp_path / "old.onnx", broadcast_add=True)
    with pytest.raises(ValueError, match=r"opset 6 is older than 7.*version_converter could not"):
        engine.import_onnx(tmp_path / "old.onnx")
    b = Builder(NEWEST, np.random.default_rng(0))
    b.save(b.op("Relu", ["x"]), tmp_path / "new.onnx")
    model = onnx.load(str(tmp_path / "new.onnx"))
    model.opset_import[0].version = NEWEST + 1
    onnx.save(model, str(tmp_path / "new.onnx"))
    with pytest.raises(ValueError, match=rf"opset {NEWEST + 1} is newer than the installed onnx"):
        engine.import_onnx(tmp_path / "new.onnx")


def test_unsupported_ops_and_forms_are_named(tmp_path):
    b = Builder(9, np.random.default_rng(0))
    h = b.op("Upsample", [b.op("Relu", ["x"]), b.const([1, 1, 2, 2])])
    b.save(b.op("Hardmax", [b.op("Relu", [h])]), tmp_path / "model.onnx")
    with pytest.raises(ValueError, match=r"Hardmax \(at hardmax_\d+\); Upsample \(at upsample_"):
        engine.import_onnx(tmp_path / "model.onnx")
    b = Builder(7, np.random.default_rng(0))
    b.save(b.batch_norm("x", 3), tmp_path / "bn.onnx")
    model = onnx.load(str(tmp_path / "bn.onnx"))
    model.graph.node[0].attribute[-1].i = 0  # spatial=0: statistics per activation
    onnx.save(model, str(tmp_path / "bn.onnx"))
    with pytest.raises(ValueError, match=r"batchnormalization_\d+ .*spatial=0 .* not supported"):
        engine.compile(engine.import_onnx(tmp_path / "bn.onnx"), INPUT, batch=2)
    b = Builder(9, np.random.default_rng(0))
    b.save(b.op("Add", ["x", b.weight(1, 1, 8)]), tmp_path / "rows.onnx")  # along W
    with pytest.raises(ValueError, match=r"add_\d+ \(ONNX Add\).*\[2, 3, 8, 8\] and \[1, 1, 8\]"):
        engine.compile(engine.import_onnx(tmp_path / "rows.onnx"), INPUT, batch=2)


def test_a_batch_the_file_hard_codes_is_named(tmp_path, rng):
    """A file exported for a batch of 1 traces at any batch, unless a Reshape fixes it."""
    b = Builder(9, rng)
    flat = b.op("Reshape", [b.op("Relu", ["x"]), b.const([1, -1], np.int64)])
    b.save(b.gemm(flat, 3 * 8 * 8, 4), tmp_path / "fixed.onnx", batch=1)
    model = engine.import_onnx(tmp_path / "fixed.onnx")
    assert model.batch == 1 and engine.compile(model, INPUT, batch=1).run(
        rng.standard_normal((1, *INPUT)).astype(np.float32)
    ).shape == (1, 4)
    with pytest.raises(ValueError, match=r"reshape_\d+ \(ONNX Reshape\): reshapes \[2, 3, 8, 8\] "
                       r"to \[1, 384\].*compile it with batch=1"):  # fmt: skip
        engine.compile(model, INPUT, batch=2)


def test_even_lrn_in_pytorch_form_has_no_onnx_form(tmp_path):
    """PyTorch's window for an even size starts one channel before ONNX's: refused, naming
    the layer, and nothing is written."""
    exe = engine.compile(nn.LocalResponseNorm(4), (6, 3, 3), batch=1)
    with pytest.raises(ValueError, match=r"local_response_norm of even size 4 .* no ONNX form"):
        engine.export_onnx(exe, tmp_path / "lrn.onnx")
    assert not (tmp_path / "lrn.onnx").exists()
