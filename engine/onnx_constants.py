"""ONNX import, the constant side: what the importer computes with NumPy, not in the network.

- ``FOLDS``: ONNX ops on NumPy arrays, the shape arithmetic and constant subgraphs exporters
  emit (Shape, Gather, Unsqueeze, Concat, ConstantOfShape, Cast, Sum...).
- ``fold_constants``: at import, every node whose inputs are all constants (initializers,
  Constant nodes, results of such nodes) is evaluated once and becomes a constant; a Shape of
  a computed tensor waits for the trace, where ``OnnxLayer`` folds it with the traced shape.
- ``fold_channel_affine``: per-channel Add, Sub, Mul and Div by constants (ONNX broadcasting
  of a [C, 1, 1], [1, C, 1, 1] or one-value constant), as old exporters write Caffe's Scale
  and Bias layers and input normalisation. An Add (a Sub, negated) folds into the bias of the
  Conv, BatchNormalization or Gemm that computes its input (the node goes; without a bias,
  the Add's constant becomes it, under its own name); when nothing can take it, it becomes a
  ``convforge::ChannelBias`` node, a depthwise 1x1 conv whose weight is a buffer of ones. A
  Div becomes a Mul by the reciprocals; a Mul stays, ``channel_scale`` by its own weight, as
  in the source model (folding it into the conv's weight would merge two trained tensors).

Folding changes which initializers a model has: the ones no node reads any more are dropped,
so only weights the network uses become parameters.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.onnx_export import require_onnx

if TYPE_CHECKING:
    from engine.onnx_import import OnnxNode

# **** Helpers shared with the handlers ****


def resolve_shape(node: OnnxNode, target: np.ndarray, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Reshape's target: 0 copies the input's axis (unless allowzero), -1 is inferred."""
    dims = [int(d) for d in target.reshape(-1)]
    if not node.attr("allowzero", 0):
        dims = [shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = math.prod(shape) // known if known else 0
    if math.prod(dims) != math.prod(shape):
        raise node.error(f"cannot reshape {list(shape)} to {[int(d) for d in target.reshape(-1)]}")
    return tuple(dims)


def axes_of(node: OnnxNode, args: list, index: int, rank: int) -> list[int] | None:
    """The ``axes`` attribute (older opsets) or constant input ``index``, made non-negative."""
    axes = node.attr("axes")
    if axes is None and index < len(args) and args[index] is not None:
        axes = args[index]
        if not isinstance(axes, np.ndarray):
            raise node.error(f"input {index} ({node.inputs[index]!r}) must be a constant")
    return None if axes is None else sorted(int(a) % rank for a in np.reshape(axes, -1))


def shape_of(node: OnnxNode, args: list) -> list:
    """Shape, of a constant or of a traced tensor (whose shape is known while tracing)."""
    return [np.asarray(args[0].shape[node.attr("start", 0) : node.attr("end")], np.int64)]


# **** FOLDS: ONNX ops on NumPy arrays ****


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):  # ONNX integer division truncates toward zero
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(a.dtype)
    return a / b


def _slice(node: OnnxNode, args: list) -> list:
    x = args[0]
    if node.opset < 10:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts, ends, axes, steps = (args[i] if i < len(args) else None for i in (1, 2, 3, 4))
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return [x[tuple(index)]]


def _unsqueeze(node: OnnxNode, args: list) -> list:
    x = args[0]
    axes = np.reshape(node.attr("axes") if node.attr("axes") is not None else args[1], -1)
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(sorted(int(a) % rank for a in axes)))]


def _squeeze(node: OnnxNode, args: list) -> list:
    x = args[0]
    axes = axes_of(node, args, 1, x.ndim)
    return [np.squeeze(x, tuple(axes)) if axes is not None else np.squeeze(x)]


def _fold(function: Callable[..., np.ndarray]) -> Callable[[OnnxNode, list], list]:
    return lambda node, args: [function(*[a for a in args if a is not None])]


def _variadic(function: Callable[..., np.ndarray]) -> Callable[[OnnxNode, list], list]:
    """Sum, Min, Max of any number of inputs, with broadcasting."""
    return lambda node, args: [functools.reduce(function, [a for a in args if a is not None])]


FOLDS: dict[str, Callable[[OnnxNode, list], list]] = {
    "Constant": lambda node, args: [node.attr("value")],
    "Identity": lambda node, args: [args[0]],
    "Shape": shape_of,
    "Size": lambda node, args: [np.asarray(args[0].size, np.int64)],
    "Cast": lambda node, args: [
        args[0].astype(require_onnx().helper.tensor_dtype_to_np_dtype(node.attr("to")))
    ],
    "Gather": lambda node, args: [np.take(args[0], args[1], axis=node.attr("axis", 0))],
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda node, args: [np.concatenate(args, node.attr("axis"))],
    "Slice": _slice,
    "Reshape": lambda node, args: [args[0].reshape(resolve_shape(node, args[1], args[0].shape))],
    "Transpose": lambda node, args: [np.transpose(args[0], node.attr("perm"))],
    "ConstantOfShape": lambda node, args: [
        np.full(tuple(args[0]), *(np.reshape(node.attr("value", np.zeros(1, np.float32)), -1)[:1]))
    ],
    "Range": _fold(lambda start, limit, delta: np.arange(start, limit, delta, dtype=start.dtype)),
    "Expand": _fold(
        lambda x, shape: np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape))).copy()
    ),
    "Where": _fold(np.where),
    "Equal": _fold(np.equal),
    "Less": _fold(np.less),
    "Greater": _fold(np.greater),
    "Not": _fold(np.logical_not),
    "Add": _fold(np.add),
    "Sub": _fold(np.subtract),
    "Mul": _fold(np.multiply),
    "Div": _fold(_divide),
    "Neg": _fold(np.negative),
    "Abs": _fold(np.abs),
    "Floor": _fold(np.floor),
    "Ceil": _fold(np.ceil),
    "Sqrt": _fold(np.sqrt),
    "Sum": _variadic(np.add),
    "Min": _variadic(np.minimum),
    "Max": _variadic(np.maximum),
}


def fold_constants(nodes: list[OnnxNode], constants: dict[str, np.ndarray]) -> list[OnnxNode]:
    """``nodes`` without those computed from constants alone, whose outputs are added to
    ``constants``."""
    kept = []
    for node in nodes:
        inputs = [name for name in node.inputs if name]
        if node.op_type not in FOLDS or not all(name in constants for name in inputs):
            kept.append(node)
            continue
        args = [constants[name] if name else None for name in node.inputs]
        for name, value in zip(node.outputs, FOLDS[node.op_type](node, args), strict=False):
            constants[name] = np.asarray(value)
    return kept


# **** Per-channel Mul and Add by constants ****

# The layers whose bias a per-channel Add folds into, with the rank of the output it must
# imply (a BatchNormalization's may be 2 or 4: folded when the constant says 4)
_PRODUCERS = {"Conv": 4, "BatchNormalization": 4, "Gemm": 2}


def fold_channel_affine(
    nodes: list[OnnxNode], constants: dict[str, np.ndarray], outputs: set[str]
) -> list[OnnxNode]:
    """``nodes`` with each per-channel Add (or Sub) of a constant folded into the bias of the
    layer before it or made a ``convforge::ChannelBias`` node, each per-channel Div a Mul by
    the reciprocals (module docstring); ``constants`` gets the new weights. A per-channel Mul
    stays (``channel_scale``): its constant is a weight of its own, as in the source model."""
    readers: dict[str, list[OnnxNode]] = {}
    for node in nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    producer = {name: node for node in nodes for name in node.outputs}
    dropped: set[int] = set()
    for node in nodes:
        operands = _channel_operands(node, constants)
        if operands is None:
            continue
        x, constant, rank = operands
        values = constants[constant].reshape(-1).astype(np.float64)
        if node.op_type == "Div" and values.size > 1:
            name = _fresh_name(f"{constant}_reciprocal", constants)
            constants[name] = (1.0 / constants[constant].astype(np.float64)).astype(np.float32)
            node.op_type, node.inputs = "Mul", [x, name]
        if node.op_type not in ("Add", "Sub"):
            continue
        shift = -values if node.op_type == "Sub" else values
        source = producer.get(x)
        if (
            source is not None
            and len(readers.get(x, [])) == 1
            and x not in outputs
            and source.op_type in _PRODUCERS
            and rank in (None, _PRODUCERS[source.op_type])
            and _fold_shift(source, shift, node, constants, readers)
        ):
            source.outputs = [node.outputs[0], *source.outputs[1:]]
            producer[node.outputs[0]] = source  # a second Add folds too
            dropped.add(id(node))
        elif values.size > 1:
            _as_channel_bias(node, x, rank, shift, constants)
    return [node for node in nodes if id(node) not in dropped]


def _channel_operands(
    node: OnnxNode, constants: dict[str, np.ndarray]
) -> tuple[str, str, int | None] | None:
    """(input, constant, the input's rank as the constant implies it, None for one value) of
    a Mul/Add/Sub/Div of a computed tensor by a float constant that broadcasts along axis 1;
    None for anything else."""
    if node.op_type not in ("Mul", "Add", "Sub", "Div") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a in constants and node.op_type in ("Mul", "Add"):
        a, b = b, a
    value = constants.get(b)
    if a in constants or value is None or not np.issubdtype(value.dtype, np.floating):
        return None
    rank = None if value.size == 1 else _channel_rank(value.shape)
    return None if value.size > 1 and rank is None else (a, b, rank)


def _channel_rank(shape: tuple[int, ...]) -> int | None:
    """The rank R of the tensors along whose axis 1 a constant of ``shape`` broadcasts (its
    shape, padded on the left to R, is [1, C, 1, ...]): [C] and [1, C] give 2, [C, 1, 1] and
    [1, C, 1, 1] give 4; None when it broadcasts along no axis 1."""
    lead = 1 if len(shape) >= 2 and shape[0] == 1 else 0
    if len(shape) <= lead or any(d != 1 for d in shape[lead + 1 :]):
        return None
    return len(shape) + 1 - lead


def _fold_shift(
    layer: OnnxNode,
    shift: np.ndarray,
    add: OnnxNode,
    constants: dict[str, np.ndarray],
    readers: dict[str, list[OnnxNode]],
) -> bool:
    """``shift`` added to ``layer``'s bias (made from the Add's constant when ``layer`` has
    none, under that constant's name); False, nothing changed, when the weights are not
    constants or the bias is shared."""
    weight = constants.get(layer.inputs[1]) if len(layer.inputs) > 1 else None
    bias = layer.inputs[2] if len(layer.inputs) > 2 else ""
    if weight is None or (bias and (bias not in constants or len(readers[bias]) != 1)):
        return False
    if layer.op_type == "Gemm" and layer.attr("beta", 1.0) != 1.0:
        return False
    axis = 1 if layer.op_type == "Gemm" and not layer.attr("transB", 0) else 0
    channels = weight.shape[axis]
    if shift.size not in (1, channels) or (bias and constants[bias].size != channels):
        return False
    total = np.broadcast_to(shift, (channels,))
    if bias:
        constants[bias] = (constants[bias].reshape(-1) + total).astype(constants[bias].dtype)
        return True
    own = next(name for name in add.inputs if name in constants)
    if add.op_type == "Add" and len(readers[own]) == 1 and constants[own].size == channels:
        name = own
    else:
        name = _fresh_name(f"{layer.inputs[1]}_bias", constants)
    constants[name] = total.astype(np.float32)
    layer.inputs = [*layer.inputs[:2], name]
    return True


def _as_channel_bias(
    node: OnnxNode, x: str, rank: int, shift: np.ndarray, constants: dict[str, np.ndarray]
) -> None:
    """An Add (or Sub) of a per-channel constant as a ``convforge::ChannelBias`` node, in
    place: inputs x, the bias [C] (a weight) and a [C, 1, 1, 1] buffer of ones."""
    bias = _fresh_name(f"{node.name}.bias", constants)
    ones = _fresh_name(f"{node.name}.ones", constants)
    constants[bias] = shift.astype(np.float32)
    constants[ones] = np.ones((shift.size, 1, 1, 1), np.float32)
    node.op_type, node.inputs = "convforge::ChannelBias", [x, bias, ones]
    node.attrs = {"rank": rank}


def _fresh_name(base: str, taken: dict[str, Any]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name
