"""ONNX import: ``import_onnx(path)`` reads an ONNX model as a ``graph.nn.Module``.

The module is an interpreter of the ONNX graph that ``engine.compile`` traces like any other
model, so an imported network is checked, optimised, run and trained like one written in
``graph.nn``:

- Weights: each floating-point initializer that a layer reads as its weight, or that has
  more than one element, becomes a ``Parameter`` (a BatchNormalization's running mean and
  variance a buffer, with a ``num_batches_tracked`` beside them as torch has), under its ONNX
  name made a valid ``state_dict`` key (``onnx::Conv_76`` -> ``onnx__Conv_76``; dotted names
  such as ``layer1.0.conv1.weight`` keep their dots, so a file written by ``export_onnx`` or by
  ``torch.onnx.export`` loads the ``state_dict`` of the model it came from).
  ``tensor_keys`` maps ONNX names to keys. Weights are float32, as every ``graph.nn`` weight.
- Layers: each ONNX node is a child module at the path of its name (``layer1.0.conv1``), so
  the traced graph's nodes, profile rows and errors carry the ONNX node names.
- Opsets: 7 to the newest the installed ``onnx`` knows; older models are converted to 7
  (``engine/onnx_opsets.py``).
- Constants (``engine/onnx_constants.py``): Constant nodes and everything computed from
  constants alone (ConstantOfShape, Unsqueeze, Gather, Concat...) are folded with NumPy at
  import, the shape arithmetic on traced shapes (Shape of a computed tensor) while tracing;
  a per-channel Add/Sub of a constant joins the bias of the Conv, BatchNormalization or Gemm
  before it (else it is a depthwise 1x1 conv of ones with that bias), a per-channel Mul/Div
  is a ``channel_scale``.
- Patterns: Transpose(NHWC) + LayerNormalization + Transpose(NCHW) is one ``layer_norm2d``;
  Reshape + Transpose + Reshape that shuffles channels is one ``channel_shuffle``; the erf
  formula of GELU (PyTorch's export before opset 20) is one ``gelu``; MatMul + Add of a bias
  is one ``linear``.

Ops: Conv, Gemm, MatMul ([N, K] by [K, M]), BatchNormalization, LayerNormalization (over
channels), LRN, Relu, LeakyRelu, Sigmoid, Tanh, Gelu, Clip (as ReLU or hardtanh), Softmax
(before opset 13 over the input coerced to 2-D), MaxPool, AveragePool, GlobalAveragePool,
GlobalMaxPool, ReduceMax/ReduceMean over H and W (adaptive pooling), Concat, Add/Sub/Mul
(same shapes; by a scalar or a per-channel constant), Sum (any number of inputs), Div by a
constant, Neg, Flatten, Reshape (to [N, -1] a flatten), Squeeze, Unsqueeze, Transpose, Slice,
Pad, Dropout (every version's ratio), Identity and Cast. Anything else fails at
``import_onnx``, naming each op and its nodes; a node that a supported op cannot express (a
3-D convolution, broadcasting between activations) fails at trace time, naming the node, the
rule and the shapes.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.onnx_constants import (
    FOLDS,
    axes_of,
    fold_channel_affine,
    fold_constants,
    resolve_shape,
    shape_of,
)
from engine.onnx_export import require_onnx
from engine.onnx_opsets import default_opset, readable
from graph import functional as F
from graph.nn import Module, Parameter
from graph.trace import Tensor, active_tracer


def import_onnx(path: str | os.PathLike[str]) -> OnnxModel:
    """Read the ONNX model at ``path`` (one NCHW input, one output) as a module.

    Compile it with ``engine.compile(model, model.input_shape, batch)`` (``input_shape`` is
    None when the file leaves height or width free: give one).

    Raises:
        ImportError: ``onnx`` is not installed.
        OSError: the file cannot be read.
        ValueError: the file is not a valid ONNX model, has other than one input and one
            output, or uses ops ConvForge cannot import (listed with their node names).
    """
    onnx = require_onnx()
    from google.protobuf.message import DecodeError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:  # weights stored beside the file (external data, as torch's exporter may) load too
        proto = onnx.load(path)
    except (DecodeError, ValueError, OSError) as error:
        raise _invalid(path, error) from None
    proto = readable(onnx, proto, str(path))
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise _invalid(path, error) from None
    return OnnxModel(proto, str(path))


def _invalid(path: str | os.PathLike[str], error: Exception) -> ValueError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ValueError(f"{path}: not a valid ONNX model: {first}")


@dataclass
class OnnxNode:
    """One ONNX node as plain Python: attributes decoded, tensors as NumPy arrays."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int
    needed: list[bool] = field(default_factory=list)  # which outputs some node or the graph reads
    batch: int | None = None  # the batch the file fixes, if any

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.name} (ONNX {self.op_type}): {message}")

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


class OnnxModel(Module):
    """An imported ONNX graph; see the module docstring.

    Attributes:
        input_shape: the input's (C, H, W) when the file fixes them, else None.
        batch: the input's batch when the file fixes it (the batch it was exported with; the
            model traces at any batch its nodes allow), else None.
        tensor_keys: ONNX initializer name -> ``state_dict`` key, for every weight.
    """

    def __init__(self, proto: Any, source: str) -> None:
        super().__init__()
        onnx = require_onnx()
        graph = proto.graph
        opset = default_opset(proto)
        arrays = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [v for v in graph.input if v.name not in arrays]
        if len(inputs) != 1 or len(graph.output) != 1:
            names = [v.name for v in inputs], [v.name for v in graph.output]
            raise ValueError(
                f"{source}: ConvForge imports models of one input and one output, but this one "
                f"has inputs {names[0]} and outputs {names[1]}"
            )
        nodes = [_decode(onnx, proto_node, i, opset) for i, proto_node in enumerate(graph.node)]
        # weights (float initializers of more than one value) stay tensors of the network
        constants = {name: a for name, a in arrays.items() if not _is_weight_array(a)}
        nodes = fold_constants(nodes, constants)
        constants.update((name, a) for name, a in arrays.items() if _is_weight_array(a))
        outputs = {graph.output[0].name}
        nodes = fold_channel_affine(nodes, constants, outputs)
        nodes = _rewrite(nodes, constants, outputs)
        _check_supported(nodes, source)
        read = {name for node in nodes for name in node.inputs} | outputs
        arrays = {name: array for name, array in constants.items() if name in read}
        for node in nodes:
            node.needed = [name in read for name in node.outputs]
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        dims = [
            d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim
        ]
        self._input_dims = dims
        self.batch = dims[0] if len(dims) == 4 else None
        for node in nodes:
            node.batch = self.batch
        self.input_shape = tuple(dims[1:]) if len(dims) == 4 and None not in dims[1:] else None
        self.tensor_keys: dict[str, str] = {}
        self._values: dict[str, object] = {}  # ONNX name -> Parameter, buffer or constant
        self._register_tensors(arrays, *_weight_names(nodes))
        self._steps = [self._layer_for(node) for node in nodes]

    # **** Building the module tree ****

    def _register_tensors(
        self, arrays: dict[str, np.ndarray], weights: set[str], buffers: set[str]
    ) -> None:
        for name, array in arrays.items():
            floating = np.issubdtype(array.dtype, np.floating)
            if not (floating and (array.size > 1 or name in weights)):
                self._values[name] = array  # a constant: shapes, scalars, indices
                continue
            tensor = np.array(array, np.float32)  # a writable copy: it is trained
            parts = [re.sub(r"\W", "_", part) or "_" for part in name.split(".")]
            owner = _container(self, parts[:-1])
            key = parts[-1] if owner is not None and _free(owner, parts[-1]) else None
            if key is None:  # the path clashes with another tensor or layer: flat on the root
                owner, key = self, _unique(self, "_".join(parts))
            if name in buffers:
                owner.register_buffer(key, tensor)
                if key == "running_var" and _free(owner, "num_batches_tracked"):  # as torch's
                    owner.register_buffer("num_batches_tracked", np.zeros((), np.int64))
            else:
                setattr(owner, key, Parameter(tensor))
            self._values[name] = getattr(owner, key)
            self.tensor_keys[name] = ".".join(parts[:-1] + [key]) if owner is not self else key

    def _layer_for(self, node: OnnxNode) -> OnnxLayer:
        """The child module at the path of ``node``'s name (the container of its weights, when
        they share the path), so that the ops it emits are named after it."""
        parts = node.name.split(".")
        owner = _container(self, parts[:-1]) if all(parts) else None
        if owner is not None:
            existing = owner._modules.get(parts[-1])
            if isinstance(existing, OnnxLayer) and existing.node is None:
                existing.node = node
                return existing
            if _free(owner, parts[-1]):
                setattr(owner, parts[-1], OnnxLayer(node))
                return getattr(owner, parts[-1])
        key = _unique(self, node.name)
        setattr(self, key, OnnxLayer(node))
        return getattr(self, key)

    # **** Running: interpret the nodes on traced tensors and NumPy constants ****

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        values: dict[str, object] = {**self._values, self.input_name: x}
        for layer in self._steps:
            node = layer.node
            outputs = layer(*[values[name] if name else None for name in node.inputs])
            for i, name in enumerate(node.outputs):
                if i < len(outputs):
                    values[name] = outputs[i]
                elif node.needed[i]:
                    raise node.error(
                        f"output {name!r} is read, but ConvForge computes only the first"
                    )
        out = values[self.output_name]
        if not isinstance(out, Tensor):
            raise ValueError(f"ONNX output {self.output_name!r} does not depend on the input")
        return out

    def _check_input(self, x: Tensor) -> None:
        """C, H and W as the file fixes them; the batch is free (the file's is the one it was
        exported with; a node that hard-codes it, such as a Reshape to [1, ...], fails at
        trace time naming itself)."""
        dims = self._input_dims
        fits = len(dims) == len(x.shape) and all(
            d is None or d == s for d, s in zip(dims[1:], x.shape[1:], strict=True)
        )
        if dims and not fits:  # a file without the input's shape fits any
            shown = ", ".join(["N", *(str(d) if d is not None else "?" for d in dims[1:])])
            raise ValueError(
                f"ONNX input {self.input_name!r} has shape [{shown}] (N is any batch, ? is "
                f"free), but the model is traced with {list(x.shape)}"
            )


class OnnxLayer(Module):
    """A node of the ONNX graph (``node``), or a container of others and of weights."""

    def __init__(self, node: OnnxNode | None = None) -> None:
        super().__init__()
        self.node = node

    def forward(self, *args: object) -> list:
        node = self.node
        if node.op_type in FOLDS and all(a is None or isinstance(a, np.ndarray) for a in args):
            return [np.asarray(value) for value in FOLDS[node.op_type](node, list(args))]
        if node.op_type not in _HANDLERS:
            computed = next(n for n, a in zip(node.inputs, args, strict=True) if not _is_const(a))
            raise node.error(
                f"ConvForge folds this op on constants only, but input {computed!r} is computed "
                "by the network"
            )
        return _HANDLERS[node.op_type](node, list(args))

    def extra_repr(self) -> str:
        return self.node.op_type if self.node else ""


def _is_weight_array(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) and array.size > 1


def _container(root: Module, parts: list[str]) -> Module | None:
    """The module at path ``parts`` below ``root``, made of empty layers where missing; None
    when a tensor or an attribute holds one of the names."""
    owner = root
    for part in parts:
        child = owner._modules.get(part)
        if child is None:
            if not _free(owner, part):
                return None
            child = OnnxLayer()
            setattr(owner, part, child)
        owner = child
    return owner


def _free(module: Module, key: str) -> bool:
    return not any(
        key in r for r in (module._modules, module._parameters, module._buffers)
    ) and not hasattr(module, key)


def _unique(module: Module, base: str) -> str:
    key, k = base, 1
    while not _free(module, key):
        key, k = f"{base}_{k}", k + 1
    return key


# **** Reading the file ****


def _decode(onnx: Any, proto: Any, index: int, opset: int) -> OnnxNode:
    attrs = {}
    for attribute in proto.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        elif isinstance(value, float):  # stored as float32: 1e-5 is back as 1e-5, not 9.99e-6
            value = float(str(np.float32(value)))
        attrs[attribute.name] = value
    if proto.op_type == "Constant":
        attrs["value"] = _constant_value(attrs)
    domain = "" if proto.domain in ("", "ai.onnx") else proto.domain
    op_type = f"{domain}::{proto.op_type}" if domain else proto.op_type
    name = proto.name or f"{proto.op_type}_{index}"
    return OnnxNode(op_type, name, list(proto.input), list(proto.output), attrs, opset)


def _constant_value(attrs: dict[str, Any]) -> np.ndarray:
    for key, dtype in (
        ("value", None),
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    raise ValueError(f"Constant with attributes {sorted(attrs)} is not supported")


# inputs that hold weights, by op: a float initializer read there is a weight, whatever its size
_WEIGHT_INPUTS = {
    "Conv": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "BatchNormalization": (1, 2, 3, 4),
    "LayerNormalization": (1, 2),
    "convforge::LayerNorm2d": (1, 2),
    "convforge::ChannelBias": (1, 2),
}
# inputs that hold buffers (state that is not trained): BatchNormalization's running mean and
# variance, ChannelBias's ones
_BUFFER_INPUTS = {"BatchNormalization": (3, 4), "convforge::ChannelBias": (2,)}


def _weight_names(nodes: list[OnnxNode]) -> tuple[set[str], set[str]]:
    """The initializers read as weights, and those read only as buffers."""
    slots = {(n.op_type, i, name) for n in nodes for i, name in enumerate(n.inputs)}
    weights = {name for op, i, name in slots if i in _WEIGHT_INPUTS.get(op, ())}
    state = {name for op, i, name in slots if i in _BUFFER_INPUTS.get(op, ())}
    other = {name for op, i, name in slots if i not in _BUFFER_INPUTS.get(op, ())}
    return weights, state - other


def _check_supported(nodes: list[OnnxNode], source: str) -> None:
    unsupported: dict[str, list[str]] = {}
    for node in nodes:
        if node.op_type not in _HANDLERS and node.op_type not in FOLDS:
            unsupported.setdefault(node.op_type, []).append(node.name)
    if unsupported:
        listing = "; ".join(
            f"{op} (at {', '.join(names[:3])}"
            + (f" and {len(names) - 3} more)" if names[3:] else ")")
            for op, names in sorted(unsupported.items())
        )
        raise ValueError(
            f"{source}: ConvForge cannot import these ONNX ops: {listing}. Supported: "
            f"{', '.join(sorted(op for op in {*_HANDLERS, *FOLDS} if '::' not in op))}"
        )


# **** Patterns: node chains that are one ConvForge op ****


def _rewrite(
    nodes: list[OnnxNode], constants: dict[str, np.ndarray], outputs: set[str]
) -> list[OnnxNode]:
    """``nodes`` with each chain a pattern matches replaced by one node, named after the
    chain's last node (whose output it computes)."""
    readers: dict[str, list[OnnxNode]] = {}
    for node in nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)

    def follow(node: OnnxNode | None, op_type: str) -> OnnxNode | None:
        """The only reader of ``node``'s first output, if it is an ``op_type``."""
        out = node.outputs[0] if node else None
        after = readers.get(out, [])
        if out is None or out in outputs or len(after) != 1 or after[0].op_type != op_type:
            return None
        return after[0]

    replaced: dict[int, OnnxNode | None] = {}  # id(node) -> its replacement (None: dropped)
    for node in nodes:
        for pattern in _PATTERNS:
            match = pattern(node, follow, constants.get)
            if match is None or any(id(n) in replaced for n in match[0]):
                continue
            chain, op_type, inputs, attrs = match
            last = chain[-1]
            replaced.update({id(n): None for n in chain})
            fused = OnnxNode(op_type, last.name, inputs, last.outputs[:1], attrs, node.opset)
            replaced[id(last)] = fused
    return [replaced.get(id(n), n) for n in nodes if replaced.get(id(n), n) is not None]


# A pattern: (first node, follow, constant lookup) -> (chain, op type, inputs, attrs) or None.


def _layer_norm_pattern(node: OnnxNode, follow: Callable, constant: Callable):
    """Transpose to NHWC, LayerNormalization over C, Transpose back (torch's LayerNorm2d)."""
    if node.op_type != "Transpose" or list(node.attr("perm", [])) != [0, 2, 3, 1]:
        return None
    norm = follow(node, "LayerNormalization")
    back = follow(norm, "Transpose")
    if not back or norm.attr("axis", -1) not in (-1, 3) or back.attr("perm") != [0, 3, 1, 2]:
        return None
    inputs = [node.inputs[0], *norm.inputs[1:]]
    return [node, norm, back], "convforge::LayerNorm2d", inputs, {"epsilon": norm.attr("epsilon")}


def _shuffle_pattern(node: OnnxNode, follow: Callable, constant: Callable):
    """Reshape to 5-D, swap axes 1 and 2, Reshape back: a channel shuffle, when the shapes
    say so at trace time (``_channel_shuffle``)."""
    swap = follow(node, "Transpose") if node.op_type == "Reshape" else None
    back = follow(swap, "Reshape")
    if not back or swap.attr("perm") != [0, 2, 1, 3, 4]:
        return None
    inputs = [node.inputs[0], node.inputs[1], back.inputs[1]]
    return [node, swap, back], "convforge::ChannelShuffle", inputs, {}


def _gelu_pattern(node: OnnxNode, follow: Callable, constant: Callable):
    """x * (1 + erf(x / sqrt(2))) * 0.5: GELU as torch exports it before opset 20."""
    if node.op_type != "Div" or not _close(_scalar(constant(node.inputs[1])), math.sqrt(2.0)):
        return None
    erf = follow(node, "Erf")
    plus = follow(erf, "Add")
    times = follow(plus, "Mul")
    half = follow(times, "Mul")
    x = node.inputs[0]
    if not (
        half
        and _close(_scalar(constant(_other(plus, erf.outputs[0]))), 1.0)
        and _other(times, plus.outputs[0]) == x
        and _close(_scalar(constant(_other(half, times.outputs[0]))), 0.5)
    ):
        return None
    return [node, erf, plus, times, half], "Gelu", [x], {"approximate": "none"}


def _linear_pattern(node: OnnxNode, follow: Callable, constant: Callable):
    """MatMul by a weight, then Add of a bias vector: a Gemm."""
    add = follow(node, "Add") if node.op_type == "MatMul" else None
    bias = add and _other(add, node.outputs[0])
    if bias is None or constant(bias) is None or constant(bias).ndim != 1:
        return None
    return [node, add], "Gemm", [*node.inputs, bias], {}


_PATTERNS = (_layer_norm_pattern, _shuffle_pattern, _gelu_pattern, _linear_pattern)


def _scalar(value: np.ndarray | None) -> float | None:
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _other(node: OnnxNode, name: str) -> str | None:
    """The input of a binary ``node`` that is not ``name``."""
    rest = [n for n in node.inputs if n != name]
    return rest[0] if len(rest) == 1 and len(node.inputs) == 2 else None


def _close(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-6 * abs(target)


# **** Helpers of the handlers ****


def _is_const(value: object) -> bool:
    return isinstance(value, np.ndarray)


def _emit(op: str, inputs: list, **attrs: object) -> Tensor:
    """An op that ``graph.functional`` does not spell this way (asymmetric conv padding, a
    slice by start and length): straight to the tracer."""
    return active_tracer().emit(op, inputs, attrs)


def _const(node: OnnxNode, args: list, index: int, default: object = None) -> np.ndarray | None:
    value = args[index] if index < len(args) else None
    if value is None:
        return None if default is None else np.asarray(default)
    if not _is_const(value):
        raise node.error(f"input {index} ({node.inputs[index]!r}) must be a constant")
    return value


def _weight(node: OnnxNode, args: list, index: int, what: str) -> object:
    value = args[index]
    if _is_const(value):
        raise node.error(
            f"the {what} ({node.inputs[index]!r}) must be an initializer (a trainable weight), "
            f"but it is a constant of shape {list(value.shape)}"
        )
    return value


def _activation(node: OnnxNode, args: list, rank: int | None = None) -> Tensor:
    x = args[0]
    if not isinstance(x, Tensor):
        raise node.error(f"input {node.inputs[0]!r} must be computed by the network")
    if rank is not None and len(x.shape) != rank:
        raise node.error(f"expects a rank-{rank} input, but got shape {list(x.shape)}")
    return x


def _pairs(node: OnnxNode, name: str, default: int) -> tuple[int, int]:
    values = tuple(int(v) for v in node.attr(name, [default, default]))
    if len(values) != 2:
        raise node.error(f"only 2-D windows are supported, but {name}={list(values)}")
    return values


def _pads(node: OnnxNode, size, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from ``pads`` or ``auto_pad`` (ONNX's SAME rule)."""
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        pads = [int(p) for p in node.attr("pads", [0, 0, 0, 0])] if auto == "NOTSET" else [0] * 4
        return (pads[0], pads[2], pads[1], pads[3])
    result = []
    for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small = total // 2
        result += [small, total - small] if auto == "SAME_UPPER" else [total - small, small]
    return tuple(result)


def _transpose(x: object, perm: list[int]) -> object:
    """Any permutation as swaps of two axes (the IR's transpose)."""
    order = list(range(len(perm)))
    for i, axis in enumerate(perm):
        j = order.index(axis)
        if j != i:  # j > i: the axes before i are in place
            x = _emit("transpose", [x], dim0=i, dim1=j)
            order[i], order[j] = order[j], order[i]
    return x


# **** Handlers: one per ONNX op, (node, inputs) -> outputs, emitting ConvForge ops ****


def _conv(node: OnnxNode, args: list) -> list:
    x, weight = _activation(node, args, 4), _weight(node, args, 1, "weight")
    bias = _weight(node, args, 2, "bias") if len(args) > 2 and args[2] is not None else None
    if len(weight.shape) != 4:
        raise node.error(
            f"only 2-D convolutions are supported, but the weight is {list(weight.shape)}"
        )
    kernel = tuple(weight.shape[2:])
    stride, dilation = _pairs(node, "strides", 1), _pairs(node, "dilations", 1)
    padding = _pads(node, x.shape[2:], kernel, stride, dilation)
    inputs = [x, weight] + ([bias] if bias is not None else [])
    attrs = dict(
        stride=stride, padding=padding, dilation=dilation, groups=int(node.attr("group", 1))
    )
    return [_emit("conv2d", inputs, **attrs)]


def _gemm(node: OnnxNode, args: list) -> list:
    x, weight = _activation(node, args, 2), _weight(node, args, 1, "weight")
    if node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0 or node.attr("beta", 1.0) != 1.0:
        raise node.error("only transA=0, alpha=1, beta=1 are supported (a Linear layer)")
    if len(weight.shape) != 2:
        raise node.error(f"the weight must be a matrix, but got shape {list(weight.shape)}")
    if not node.attr("transB", 0):  # B is [in, out]; linear wants [out, in]
        weight = _transpose(weight, [1, 0])
    bias = None
    if len(args) > 2 and args[2] is not None:
        bias = _weight(node, args, 2, "bias")
        out = weight.shape[0]
        if tuple(bias.shape) not in ((out,), (1, out)):
            raise node.error(f"the bias must have shape [{out}], but got {list(bias.shape)}")
        bias = F.reshape(bias, (out,)) if len(bias.shape) == 2 else bias
    return [F.linear(x, weight, bias)]


def _batch_norm(node: OnnxNode, args: list) -> list:
    x = _activation(node, args)
    if node.attr("training_mode", 0) or any(node.needed[1:]):
        raise node.error("only inference-form BatchNormalization (one output) is supported")
    if node.attr("spatial", 1) != 1:
        raise node.error(
            "BatchNormalization with spatial=0 (statistics per activation, opsets 7 and 8) is "
            "not supported"
        )
    scale, bias = (_weight(node, args, i, what) for i, what in ((1, "scale"), (2, "bias")))
    mean, var = args[3], args[4]  # buffers (see _weight_names)
    # ONNX keeps the old statistics' share, torch the new one's: 0.9 is 0.1, to float32 digits
    momentum = float(f"{1.0 - node.attr('momentum', 0.9):.6g}")
    return [
        F.batch_norm(x, mean, var, scale, bias, momentum=momentum, eps=node.attr("epsilon", 1e-5))
    ]


def _layer_norm2d(node: OnnxNode, args: list) -> list:
    x = _activation(node, args, 4)
    if len(args) < 3 or args[2] is None:
        raise node.error("LayerNormalization without a bias is not supported")
    scale, bias = _weight(node, args, 1, "scale"), _weight(node, args, 2, "bias")
    return [F.layer_norm2d(x, scale, bias, node.attr("epsilon", 1e-5))]


def _layer_norm(node: OnnxNode, args: list) -> list:
    """Over the last axis only, which must be the channels: [N, C] or NHWC."""
    x = _activation(node, args)
    rank = len(x.shape)
    if any(node.needed[1:]) or node.attr("axis", -1) % rank != rank - 1 or rank not in (2, 4):
        raise node.error(
            f"only LayerNormalization over the last axis of [N, C] or [N, H, W, C] is supported, "
            f"but got axis={node.attr('axis', -1)} for shape {list(x.shape)}"
        )
    if rank == 2:
        image = F.reshape(x, (*x.shape, 1, 1))
        return [F.reshape(_layer_norm2d(node, [image, *args[1:]])[0], x.shape)]
    nchw = F.transpose(x, 1, 3)  # [N, C, W, H]: the norm is per pixel, so W, H may swap
    return [F.transpose(_layer_norm2d(node, [nchw, *args[1:]])[0], 1, 3)]


def _clip(node: OnnxNode, args: list) -> list:
    x = _activation(node, args)
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    else:
        low, high = (None if (v := _const(node, args, i)) is None else float(v) for i in (1, 2))
    if low == 0.0 and (high is None or math.isinf(high)):
        return [F.relu(x)]
    if low is None or high is None:
        raise node.error(f"only Clip to [0, inf) or [min, max] is supported, got [{low}, {high}]")
    return [F.hardtanh(x, low, high)]


def _softmax(node: OnnxNode, args: list) -> list:
    """From opset 13 along ``axis`` (default -1); before, over the input coerced to 2-D at
    ``axis`` (default 1): along all the axes from ``axis`` on at once."""
    x = _activation(node, args)
    axis = node.attr("axis", -1 if node.opset >= 13 else 1) % len(x.shape)
    if node.opset >= 13 or axis == len(x.shape) - 1:
        return [F.softmax(x, axis)]
    rows = (math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
    return [F.reshape(F.softmax(F.reshape(x, rows), 1), x.shape)]


def _local_response_norm(node: OnnxNode, args: list) -> list:
    """ONNX's window starts (size - 1) // 2 channels before (PyTorch's: size // 2)."""
    x = _activation(node, args)
    size = int(node.attr("size", 0))
    if size < 1:
        raise node.error(f"LRN size must be a positive integer, but got size={size}")
    attrs = dict(alpha=node.attr("alpha", 1e-4), beta=node.attr("beta", 0.75))
    k = node.attr("bias", 1.0)
    return [_emit("local_response_norm", [x], size=size, **attrs, k=k, before=(size - 1) // 2)]


def _sum(node: OnnxNode, args: list) -> list:
    """Sum of any number of tensors of one shape (Caffe2's residual merges)."""
    total = _activation(node, args)
    if any(not isinstance(a, Tensor) or tuple(a.shape) != tuple(total.shape) for a in args):
        shapes = ", ".join(f"{list(a.shape)}{' (a constant)' * _is_const(a)}" for a in args)
        raise node.error(f"Sum takes computed tensors of one shape, but got {shapes}")
    for other in args[1:]:
        total = F.add(total, other)
    return [total]


def _channel_bias(node: OnnxNode, args: list) -> list:
    """x + bias along axis 1 (``engine.onnx_constants``): a depthwise 1x1 conv of weight 1."""
    x, bias, ones = _activation(node, args), args[1], args[2]
    channels = bias.shape[0]
    if len(x.shape) != node.attr("rank") or x.shape[1] != channels:
        raise node.error(
            f"adds a per-channel constant of {channels} values shaped for rank-{node.attr('rank')} "
            f"tensors, but the input has shape {list(x.shape)}"
        )
    image = F.reshape(x, (*x.shape, 1, 1)) if len(x.shape) == 2 else x
    attrs = dict(stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=channels)
    y = _emit("conv2d", [image, ones, bias], **attrs)
    return [F.reshape(y, x.shape) if len(x.shape) == 2 else y]


def _window_pool(node: OnnxNode, args: list) -> list:
    x = _activation(node, args, 4)
    is_max = node.op_type == "MaxPool"
    kernel, stride = _pairs(node, "kernel_shape", 1), _pairs(node, "strides", 1)
    dilation = _pairs(node, "dilations", 1)
    top, bottom, left, right = _pads(node, x.shape[2:], kernel, stride, dilation)
    ceil, include = bool(node.attr("ceil_mode", 0)), bool(node.attr("count_include_pad", 0))
    if (top, left) != (bottom, right) or top > kernel[0] // 2 or left > kernel[1] // 2:
        # pad first: the same windows for max (padding -inf) and for an average that counts
        # the padding (padding 0); ceil mode's extra windows would see the new edge
        if ceil or not (is_max or include):
            raise node.error(f"pads {[top, left, bottom, right]} cannot be expressed here")
        x = F.pad(x, (left, right, top, bottom), value=-math.inf if is_max else 0.0)
        top = bottom = left = right = 0
    if is_max:
        return [F.max_pool2d(x, kernel, stride, (top, left), dilation, ceil)]
    if dilation != (1, 1):
        raise node.error(f"AveragePool with dilations {list(dilation)} is not supported")
    return [F.avg_pool2d(x, kernel, stride, (top, left), ceil, include)]


def _global_pool(node: OnnxNode, args: list) -> list:
    x = _activation(node, args, 4)
    return [F.adaptive_max_pool2d(x, 1) if "Max" in node.op_type else F.adaptive_avg_pool2d(x, 1)]


def _reduce(node: OnnxNode, args: list) -> list:
    """ReduceMax/ReduceMean over H and/or W: adaptive pooling to one row or column."""
    x = _activation(node, args, 4)
    axes = axes_of(node, args, 1, 4)
    if not axes or not set(axes) <= {2, 3}:
        raise node.error(f"only reductions over axes 2 and 3 of NCHW are supported, got {axes}")
    size = tuple(1 if axis in axes else x.shape[axis] for axis in (2, 3))
    pool = F.adaptive_max_pool2d if node.op_type == "ReduceMax" else F.adaptive_avg_pool2d
    y = pool(x, size)
    if not node.attr("keepdims", 1):
        y = F.reshape(y, tuple(d for i, d in enumerate(y.shape) if i not in axes))
    return [y]


def _binary(node: OnnxNode, args: list) -> list:
    """Add, Sub, Mul, Div: same-shape tensors; by a scalar constant; Mul by a channel weight."""
    a, b = args
    if _is_const(a) and node.op_type in ("Add", "Mul"):
        a, b = b, a
    if not _is_const(a) and _is_const(b) and b.size == 1:
        value = float(b.reshape(()))
        if node.op_type in ("Mul", "Div"):
            return [F.scale(a, value if node.op_type == "Mul" else 1.0 / value)]
        if value == 0.0:
            return [a]
    elif not (_is_const(a) or _is_const(b)) and node.op_type != "Div":
        if tuple(a.shape) == tuple(b.shape):
            return [{"Add": F.add, "Sub": F.sub, "Mul": F.mul}[node.op_type](a, b)]
        if node.op_type == "Mul" and _is_channel_vector(b.shape, a.shape):
            channels = (a.shape[1],) + (1,) * (len(a.shape) - 2)
            return [F.channel_scale(a, b if tuple(b.shape) == channels else F.reshape(b, channels))]
    shapes = " and ".join(f"{list(v.shape)}{' (a constant)' * _is_const(v)}" for v in (a, b))
    raise node.error(
        f"ConvForge's {node.op_type.lower()} takes two tensors of one shape or a tensor and a "
        f"scalar constant (Mul also a per-channel weight), but got {shapes}"
    )


def _is_channel_vector(shape: tuple[int, ...], of: tuple[int, ...]) -> bool:
    channels = (of[1],) + (1,) * (len(of) - 2)
    return len(of) >= 2 and tuple(shape) in (channels, (1, *channels))


def _flatten(node: OnnxNode, args: list) -> list:
    x = args[0]
    axis = node.attr("axis", 1) % (len(x.shape) + 1) if len(x.shape) else 0
    if axis == 1:
        return [F.flatten(x, 1)]
    return [F.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))]


def _reshape(node: OnnxNode, args: list) -> list:
    """To [N, everything else]: a flatten (what exporters write before the classifier)."""
    x = args[0]
    shape = resolve_shape(node, _const(node, args, 1), tuple(x.shape))
    if shape == tuple(x.shape):
        return [x]
    if node.batch not in (None, x.shape[0]) and shape[0] != x.shape[0]:
        raise node.error(
            f"reshapes {list(x.shape)} to {list(shape)}: the file was exported for a batch of "
            f"{node.batch} and its Reshape target fixes it; compile it with batch={node.batch}"
        )
    if len(x.shape) > 2 and shape == (x.shape[0], math.prod(x.shape[1:])):
        return [F.flatten(x, 1)]
    return [F.reshape(x, shape)]


def _squeeze(node: OnnxNode, args: list) -> list:
    """On a computed tensor: a reshape."""
    x = args[0]
    fold = FOLDS[node.op_type]  # the same op on an empty array of x's shape
    shape = fold(node, [np.empty(x.shape, np.int8), *args[1:]])[0].shape
    return [F.reshape(x, tuple(shape))]


def _transpose_node(node: OnnxNode, args: list) -> list:
    perm = node.attr("perm") or list(range(len(args[0].shape)))[::-1]
    return [_transpose(args[0], [int(p) for p in perm])]


def _channel_shuffle(node: OnnxNode, args: list) -> list:
    """Reshape [N, g, C/g, H, W] + Transpose(0, 2, 1, 3, 4) + Reshape [N, C, H, W]."""
    x, first, last = args
    split = resolve_shape(node, _const(node, args, 1), tuple(x.shape))
    swapped = (split[0], split[2], split[1], *split[3:])
    if len(x.shape) == 4 and len(split) == 5:
        n, c, h, w = x.shape
        groups = split[1]
        if (
            split == (n, groups, c // groups, h, w)
            and resolve_shape(node, last, swapped) == x.shape
        ):
            return [F.channel_shuffle(x, groups)]
    y = F.transpose(F.reshape(x, split), 1, 2)
    return [F.reshape(y, resolve_shape(node, _const(node, args, 2), swapped))]


def _slice(node: OnnxNode, args: list) -> list:
    x = _activation(node, args)
    rank = len(x.shape)
    if node.opset < 10:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts, ends, axes, steps = (_const(node, args, i) for i in (1, 2, 3, 4))
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
    if steps is not None and any(int(s) != 1 for s in steps):
        raise node.error(f"only Slice with step 1 is supported, got steps {list(steps)}")
    for axis, start, end in zip(axes, starts, ends, strict=True):
        size = x.shape[axis]
        begin, stop, _ = slice(int(start), int(end)).indices(size)
        if stop <= begin:
            raise node.error(
                f"slice [{int(start)}, {int(end)}) of axis {axis} (size {size}) is empty"
            )
        if (begin, stop) != (0, size):
            x = _emit("slice", [x], dim=axis, start=begin, length=stop - begin)
    return [x]


def _pad(node: OnnxNode, args: list) -> list:
    x = _activation(node, args, 4)
    mode = node.attr("mode", "constant")
    if node.opset < 11:
        pads, value = node.attr("pads"), node.attr("value", 0.0)
    else:
        pads, value = _const(node, args, 1), _const(node, args, 2, 0.0)
    axes = axes_of(node, args, 3, 4) or [0, 1, 2, 3]
    full = [0] * 8
    for i, axis in enumerate(axes):
        full[axis], full[axis + 4] = int(pads[i]), int(pads[i + len(axes)])
    if (
        mode not in ("constant", "reflect")
        or any(full[a] or full[a + 4] for a in (0, 1))
        or min(full) < 0
    ):
        raise node.error(
            f"only constant or reflect padding of H and W, non-negative, is supported, but got "
            f"mode={mode!r}, pads={full}"
        )
    return [F.pad(x, (full[3], full[7], full[2], full[6]), mode, float(np.reshape(value, -1)[0]))]


def _dropout(node: OnnxNode, args: list) -> list:
    ratio = _const(node, args, 1) if node.opset >= 12 else node.attr("ratio", 0.5)
    training = _const(node, args, 2)
    if training is not None and bool(training):
        raise node.error("Dropout in training mode is not supported in an inference graph")
    return [F.dropout(args[0], 0.5 if ratio is None else float(ratio))]


def _cast(node: OnnxNode, args: list) -> list:
    onnx = require_onnx()
    if not np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(node.attr("to")), np.floating):
        raise node.error("a computed tensor can be cast to floating point only")
    return [args[0]]


_ACTIVATIONS = {
    "Relu": lambda node, x: F.relu(x),
    "Sigmoid": lambda node, x: F.sigmoid(x),
    "Tanh": lambda node, x: F.tanh(x),
    "Neg": lambda node, x: F.neg(x),
    "LeakyRelu": lambda node, x: F.leaky_relu(x, node.attr("alpha", 0.01)),
    "Gelu": lambda node, x: F.gelu(x, node.attr("approximate", "none")),
}


def _elementwise(function: Callable) -> Callable[[OnnxNode, list], list]:
    return lambda node, args: [function(node, _activation(node, args))]


_HANDLERS: dict[str, Callable[[OnnxNode, list], list]] = {
    **{op: _elementwise(function) for op, function in _ACTIVATIONS.items()},
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _gemm,  # [N, K] @ [K, M]: a Gemm without bias
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "convforge::LayerNorm2d": _layer_norm2d,
    "Clip": _clip,
    "Softmax": _softmax,
    "LRN": _local_response_norm,
    "Sum": _sum,
    "convforge::ChannelBias": _channel_bias,
    "MaxPool": _window_pool,
    "AveragePool": _window_pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "ReduceMax": _reduce,
    "ReduceMean": _reduce,
    "Add": _binary,
    "Sub": _binary,
    "Mul": _binary,
    "Div": _binary,
    "Concat": lambda node, args: [F.cat(args, node.attr("axis") % len(args[0].shape))],
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _squeeze,
    "Transpose": _transpose_node,
    "convforge::ChannelShuffle": _channel_shuffle,
    "Slice": _slice,
    "Pad": _pad,
    "Dropout": _dropout,
    "Identity": lambda node, args: [args[0]],
    "Cast": _cast,
    "Shape": shape_of,
}
