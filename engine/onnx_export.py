"""ONNX export: ``export_onnx(exe, path)`` writes a compiled model as a standard ONNX file.

The exporter walks ``exe.traced_graph`` (the forward graph as traced, before the inference
passes fuse anything) and writes each node as one or a few standard ONNX ops; the weights are
``exe.state_dict()``, stored as initializers under their ``state_dict`` keys. Shapes are those
the executable was compiled for (batch included): ConvForge graphs are static, and so is the
file. ONNX Runtime's outputs equal ``exe.run``'s (tests/engine/test_onnx_io.py).

How ops without a one-to-one ONNX op are written:

- ``layer_norm2d`` (over channels): Transpose to NHWC, LayerNormalization over the last axis,
  Transpose back: the pattern PyTorch's exporter emits for ConvNeXt's LayerNorm2d.
- ``adaptive_*_pool2d``: MaxPool/AveragePool when the bins divide the input; otherwise each
  axis in turn, as one Slice + ReduceMax/ReduceMean per bin and a Concat (a bin is a product
  of a row range and a column range, so the max or the mean of a bin is that of its rows'
  maxima or means: one pass per axis, OH + OW slices rather than OH * OW).
- ``gelu``: the Gelu op from opset 20; before that its erf (or tanh) formula, written as
  PyTorch writes it, ``x * 0.5 * (1 + erf(x / sqrt(2)))``.
- ``channel_shuffle``: Reshape [N, g, C/g, H, W], Transpose, Reshape.
- ``dropout``: Dropout (the identity at inference), stochastic depth (``per_sample``) Identity.
- ``local_response_norm``: LRN, whose window starts ``(size - 1) // 2`` channels before;
  PyTorch's window for an even size starts one channel earlier and has no ONNX form.

Ops with no ONNX form (the capsule ops) fail before anything is written, naming each op and a
node using it. ``onnx`` is an optional dependency (``pip install "convforge[onnx]"``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.checkpoint import write_atomically
from engine.executable import Executable
from graph.ir import Graph, Node

MIN_OPSET = 17  # LayerNormalization


def require_onnx() -> Any:
    """The ``onnx`` module, or an ImportError that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise ImportError(
            'ONNX support needs the onnx package: pip install "convforge[onnx]"'
        ) from None
    return onnx


def export_onnx(
    exe: Executable,
    path: str | os.PathLike[str],
    opset: int = MIN_OPSET,
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``exe`` (built by ``engine.compile``) to ``path`` as an ONNX model, atomically
    (a temporary file in the same folder, then ``os.replace``): an old file stays whole until
    the new one replaces it.

    Args:
        exe: a compiled model; its inference form is written, in its dtype, for its input
            shape and batch, with its current weights.
        path: the ``.onnx`` file to write.
        opset: the ONNX opset, from 17 to the installed ``onnx``'s newest.
        metadata: strings stored as the model's ``metadata_props`` (the CLI records the zoo
            model and the input normalisation there).

    Raises:
        ImportError: ``onnx`` is not installed.
        ValueError: ``exe`` has no traced graph, ``opset`` is out of range, or the graph has
            ops with no ONNX form (each op is named with a node using it).
    """
    onnx = require_onnx()
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"ONNX opset must be in [{MIN_OPSET}, {newest}], but got opset={opset}")
    graph = exe.traced_graph
    if graph is None:
        raise ValueError("export_onnx needs an executable built by engine.compile")
    _check_exportable(graph)
    builder = _Builder(onnx, opset, graph)
    for node in graph.nodes:
        _EXPORTERS[node.op](builder, node)
    model = builder.model(graph, exe.state_dict(), dict(metadata or {}))
    blob = model.SerializeToString()  # one file up to protobuf's 2 GB (VGG-19: 0.55 GB)
    onnx.checker.check_model(blob, full_check=True)  # every op, attribute and shape
    write_atomically(Path(path), blob)


def _check_exportable(graph: Graph) -> None:
    missing: dict[str, str] = {}
    for node in graph.nodes:
        if node.op not in _EXPORTERS:
            missing.setdefault(node.op, node.name)
    if missing:
        listing = ", ".join(f"{op} (at {name})" for op, name in sorted(missing.items()))
        raise ValueError(f"cannot export to ONNX: these ops have no ONNX form: {listing}")


class _Builder:
    """Collects ONNX nodes and constant initializers; names helper values after their node."""

    def __init__(self, onnx: Any, opset: int, graph: Graph) -> None:
        self.onnx, self.helper, self.opset = onnx, onnx.helper, opset
        self.dtype = np.dtype(graph.inputs[0].type.dtype)
        self.nodes: list[Any] = []
        self.constants: list[Any] = []
        self._values = set(graph.values)  # value names in use; node names are apart
        self._node_names: set[str] = set()

    @staticmethod
    def _fresh(base: str, used: set[str]) -> str:
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    def add(self, op_type: str, inputs: list[str], name: str, output: str | None = None, **attrs):
        """Append one ONNX node for layer ``name``; returns its output. The node writing the
        layer's own ``output`` takes the layer's name (an importer names its layer so), helper
        nodes and values ``name/OpType``."""
        node_name = self._fresh(name if output else f"{name}/{op_type}", self._node_names)
        output = output or self._fresh(f"{name}/{op_type}", self._values)
        self.nodes.append(self.helper.make_node(op_type, inputs, [output], node_name, **attrs))
        return output

    def const(self, value: object, name: str, dtype: np.dtype | None = None) -> str:
        """A constant initializer (the model's dtype unless ``dtype``, int64 for shapes)."""
        array = np.asarray(value, dtype or self.dtype)
        unique = self._fresh(f"{name}/const", self._values)
        self.constants.append(self.onnx.numpy_helper.from_array(array, unique))
        return unique

    def ints(self, values: tuple[int, ...] | list[int], name: str) -> str:
        return self.const(list(values), name, np.dtype(np.int64))

    def reduce(
        self, op_type: str, x: str, axes: list[int], name: str, output: str | None = None
    ) -> str:
        """ReduceMax/ReduceMean with keepdims: axes became an input in opset 18."""
        if self.opset >= 18:
            return self.add(op_type, [x, self.ints(axes, name)], name, output, keepdims=1)
        return self.add(op_type, [x], name, output, axes=axes, keepdims=1)

    def model(self, graph: Graph, state: Mapping[str, np.ndarray], metadata: dict[str, str]):
        helper, elem = self.helper, self.helper.np_dtype_to_tensor_dtype(self.dtype)
        weights = [  # parameters no node reads (GoogLeNet's auxiliary heads) stay out
            self.onnx.numpy_helper.from_array(np.asarray(state[v.name], self.dtype), v.name)
            for v in graph.params
            if v.users
        ]
        inputs = [helper.make_tensor_value_info(v.name, elem, v.shape) for v in graph.inputs]
        outputs = [helper.make_tensor_value_info(v.name, elem, v.shape) for v in graph.outputs]
        body = helper.make_graph(
            self.nodes, "convforge", inputs, outputs, initializer=weights + self.constants
        )
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(body, opset_imports=opsets, producer_name="convforge")
        model.ir_version = helper.find_min_ir_version_for(opsets)  # what older runtimes read
        helper.set_model_props(model, metadata)
        return model


# **** One function per op: node -> ONNX nodes whose last output is the node's output ****


def _names(node: Node) -> tuple[list[str], str]:
    return [v.name for v in node.inputs], node.outputs[0].name


def _conv2d(b: _Builder, node: Node) -> None:
    inputs, out = _names(node)
    top, bottom, left, right = node.attrs["padding"]
    b.add(
        "Conv",
        inputs,
        node.name,
        out,
        kernel_shape=list(node.inputs[1].shape[2:]),
        strides=list(node.attrs["stride"]),
        pads=[top, left, bottom, right],
        dilations=list(node.attrs["dilation"]),
        group=node.attrs["groups"],
    )


def _linear(b: _Builder, node: Node) -> None:
    inputs, out = _names(node)
    b.add("Gemm", inputs, node.name, out, transB=1)


def _batch_norm(b: _Builder, node: Node) -> None:
    (x, mean, var, *affine), out = _names(node)
    if not affine:
        channels = node.inputs[1].shape[0]
        affine = [b.const(np.ones(channels), node.name), b.const(np.zeros(channels), node.name)]
    eps, momentum = node.attrs["eps"], 1.0 - node.attrs["momentum"]  # ONNX keeps 1 - torch's
    b.add(
        "BatchNormalization",
        [x, *affine, mean, var],
        node.name,
        out,
        epsilon=eps,
        momentum=momentum,
    )


def _layer_norm2d(b: _Builder, node: Node) -> None:
    (x, *affine), out = _names(node)
    if not affine:
        channels = node.inputs[0].shape[1]
        affine = [b.const(np.ones(channels), node.name), b.const(np.zeros(channels), node.name)]
    nhwc = b.add("Transpose", [x], node.name, perm=[0, 2, 3, 1])
    y = b.add("LayerNormalization", [nhwc, *affine], node.name, axis=-1, epsilon=node.attrs["eps"])
    b.add("Transpose", [y], node.name, out, perm=[0, 3, 1, 2])


def _gelu(b: _Builder, node: Node) -> None:
    (x,), out = _names(node)
    approximate = node.attrs["approximate"]
    if b.opset >= 20:
        b.add("Gelu", [x], node.name, out, approximate=approximate)
        return
    if approximate == "none":  # x * 0.5 * (1 + erf(x / sqrt(2)))
        inner = b.add(
            "Erf", [b.add("Div", [x, b.const(math.sqrt(2.0), node.name)], node.name)], node.name
        )
    else:  # x * 0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))
        cube = b.add("Mul", [b.add("Mul", [x, x], node.name), x], node.name)
        poly = b.add(
            "Add", [x, b.add("Mul", [cube, b.const(0.044715, node.name)], node.name)], node.name
        )
        scaled = b.add("Mul", [poly, b.const(math.sqrt(2.0 / math.pi), node.name)], node.name)
        inner = b.add("Tanh", [scaled], node.name)
    half = b.add("Mul", [x, b.add("Add", [inner, b.const(1.0, node.name)], node.name)], node.name)
    b.add("Mul", [half, b.const(0.5, node.name)], node.name, out)


def _same(op_type: str) -> Callable[[_Builder, Node], None]:
    """An op whose ONNX twin takes the same inputs and no attributes."""

    def export(b: _Builder, node: Node) -> None:
        inputs, out = _names(node)
        b.add(op_type, inputs, node.name, out)

    return export


def _leaky_relu(b: _Builder, node: Node) -> None:
    inputs, out = _names(node)
    b.add("LeakyRelu", inputs, node.name, out, alpha=node.attrs["negative_slope"])


def _hardtanh(b: _Builder, node: Node) -> None:
    (x,), out = _names(node)
    low, high = (b.const(node.attrs[k], node.name) for k in ("min_val", "max_val"))
    b.add("Clip", [x, low, high], node.name, out)


def _scale(b: _Builder, node: Node) -> None:
    (x,), out = _names(node)
    b.add("Mul", [x, b.const(node.attrs["factor"], node.name)], node.name, out)


def _channel_scale(b: _Builder, node: Node) -> None:
    """x * scale, the scale reshaped to broadcast over x's axes after the channels."""
    (x, scale), out = _names(node)
    rank, channels = len(node.inputs[0].shape), node.inputs[0].shape[1]
    shape = (channels,) + (1,) * (rank - 2)
    if node.inputs[1].shape != shape:
        scale = b.add("Reshape", [scale, b.ints(shape, node.name)], node.name)
    b.add("Mul", [x, scale], node.name, out)


def _dropout(b: _Builder, node: Node) -> None:
    """Dropout(ratio) keeps ``p`` for an importer that trains; per-sample drop (stochastic
    depth) has no ONNX op and is the identity at inference."""
    (x,), out = _names(node)
    if node.attrs.get("per_sample"):
        b.add("Identity", [x], node.name, out)
    else:
        b.add("Dropout", [x, b.const(node.attrs["p"], node.name)], node.name, out)


def _window(op_type: str) -> Callable[[_Builder, Node], None]:
    def export(b: _Builder, node: Node) -> None:
        inputs, out = _names(node)
        a, (ph, pw) = node.attrs, node.attrs["padding"]
        extra = (
            {"dilations": list(a["dilation"])}
            if op_type == "MaxPool"
            else {"count_include_pad": int(a["count_include_pad"])}
        )
        b.add(
            op_type,
            inputs,
            node.name,
            out,
            kernel_shape=list(a["kernel"]),
            strides=list(a["stride"]),
            pads=[ph, pw, ph, pw],
            ceil_mode=int(a["ceil_mode"]),
            **extra,
        )

    return export


def _adaptive_pool(b: _Builder, node: Node) -> None:
    (x,), out = _names(node)
    is_max = node.op == "adaptive_max_pool2d"
    pool, reduce = ("MaxPool", "ReduceMax") if is_max else ("AveragePool", "ReduceMean")
    size, bins = node.inputs[0].shape[2:], node.attrs["output_size"]
    if size[0] % bins[0] == 0 and size[1] % bins[1] == 0:  # equal windows, side by side
        kernel = [size[0] // bins[0], size[1] // bins[1]]
        b.add(pool, [x], node.name, out, kernel_shape=kernel, strides=kernel)
        return
    axes = [axis for axis in (2, 3) if bins[axis - 2] != size[axis - 2]]
    for axis in axes:
        n, total = bins[axis - 2], size[axis - 2]
        last = out if axis == axes[-1] else None
        if total % n == 0:  # this axis alone: a window along it, one row or column wide
            kernel = [total // n, 1] if axis == 2 else [1, total // n]
            x = b.add(pool, [x], node.name, last, kernel_shape=kernel, strides=kernel)
            continue
        parts = []
        for i in range(n):  # PyTorch's windows: [floor(i*total/n), ceil((i+1)*total/n))
            start, end = i * total // n, -(-(i + 1) * total // n)
            starts, ends, axis_ = (b.ints([v], node.name) for v in (start, end, axis))
            window = b.add("Slice", [x, starts, ends, axis_], node.name)
            parts.append(b.reduce(reduce, window, [axis], node.name, None if n > 1 else last))
        x = b.add("Concat", parts, node.name, last, axis=axis) if n > 1 else parts[0]


def _flatten(b: _Builder, node: Node) -> None:
    (x,), out = _names(node)
    rank, (start, end) = len(node.inputs[0].shape), (node.attrs["start_dim"], node.attrs["end_dim"])
    if start == 1 and end == rank - 1:
        b.add("Flatten", [x], node.name, out, axis=1)
    else:
        b.add("Reshape", [x, b.ints(node.outputs[0].shape, node.name)], node.name, out)


def _reshape(b: _Builder, node: Node) -> None:
    (x,), out = _names(node)
    b.add("Reshape", [x, b.ints(node.attrs["shape"], node.name)], node.name, out)


def _concat(b: _Builder, node: Node) -> None:
    inputs, out = _names(node)
    b.add("Concat", inputs, node.name, out, axis=node.attrs["dim"])


def _slice(b: _Builder, node: Node) -> None:
    (x,), out = _names(node)
    start, dim = node.attrs["start"], node.attrs["dim"]
    bounds = [b.ints([v], node.name) for v in (start, start + node.attrs["length"], dim)]
    b.add("Slice", [x, *bounds], node.name, out)


def _channel_shuffle(b: _Builder, node: Node) -> None:
    (x,), out = _names(node)
    n, c, h, w = node.inputs[0].shape
    groups = node.attrs["groups"]
    split = b.add("Reshape", [x, b.ints((n, groups, c // groups, h, w), node.name)], node.name)
    swapped = b.add("Transpose", [split], node.name, perm=[0, 2, 1, 3, 4])
    b.add("Reshape", [swapped, b.ints((n, c, h, w), node.name)], node.name, out)


def _transpose(b: _Builder, node: Node) -> None:
    (x,), out = _names(node)
    perm = list(range(len(node.inputs[0].shape)))
    a, c = node.attrs["dim0"], node.attrs["dim1"]
    perm[a], perm[c] = perm[c], perm[a]
    b.add("Transpose", [x], node.name, out, perm=perm)


def _pad(b: _Builder, node: Node) -> None:
    """F.pad's (left, right, top, bottom) on NCHW: ONNX lists all begins, then all ends."""
    (x,), out = _names(node)
    left, right, top, bottom = node.attrs["pads"]
    pads = b.ints([0, 0, top, left, 0, 0, bottom, right], node.name)
    value = b.const(node.attrs["value"], node.name)
    b.add("Pad", [x, pads, value], node.name, out, mode=node.attrs["mode"])


def _softmax(b: _Builder, node: Node) -> None:
    inputs, out = _names(node)
    b.add("Softmax", inputs, node.name, out, axis=node.attrs["dim"])


def _local_response_norm(b: _Builder, node: Node) -> None:
    inputs, out = _names(node)
    a = node.attrs
    if a["before"] != (a["size"] - 1) // 2:
        raise ValueError(
            f"{node.name}: local_response_norm of even size {a['size']} with PyTorch's window "
            f"({a['before']} channels before) has no ONNX form (ONNX's LRN starts "
            f"{(a['size'] - 1) // 2} before)"
        )
    attrs = dict(size=a["size"], alpha=a["alpha"], beta=a["beta"], bias=a["k"])
    b.add("LRN", inputs, node.name, out, **attrs)


_EXPORTERS: dict[str, Callable[[_Builder, Node], None]] = {
    "conv2d": _conv2d,
    "linear": _linear,
    "batch_norm": _batch_norm,
    "layer_norm2d": _layer_norm2d,
    "softmax": _softmax,
    "local_response_norm": _local_response_norm,
    "max_pool2d": _window("MaxPool"),
    "avg_pool2d": _window("AveragePool"),
    "global_avg_pool2d": _same("GlobalAveragePool"),
    "adaptive_max_pool2d": _adaptive_pool,
    "adaptive_avg_pool2d": _adaptive_pool,
    "add": _same("Add"),
    "sub": _same("Sub"),
    "mul": _same("Mul"),
    "neg": _same("Neg"),
    "scale": _scale,
    "channel_scale": _channel_scale,
    "relu": _same("Relu"),
    "leaky_relu": _leaky_relu,
    "hardtanh": _hardtanh,
    "sigmoid": _same("Sigmoid"),
    "tanh": _same("Tanh"),
    "gelu": _gelu,
    "dropout": _dropout,
    "flatten": _flatten,
    "reshape": _reshape,
    "concat": _concat,
    "slice": _slice,
    "channel_shuffle": _channel_shuffle,
    "transpose": _transpose,
    "pad": _pad,
}

EXPORTABLE_OPS = frozenset(_EXPORTERS)
