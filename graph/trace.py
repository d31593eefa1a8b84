"""Tracing: run a ``graph.nn`` model once on symbolic tensors and record a ``Graph``.

``trace(model, input_shape, batch)`` gives every parameter and buffer a graph value named by
its dotted path, then calls ``model(x)`` on a symbolic ``Tensor``. Each functional call
(``graph.functional``) emits one node through the active ``Tracer``, which checks it with the
op's shape rule and names it by the layer path of the module that made the call. Any invalid
layer fails here, with the path, the rule and the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graph.ir import DTYPES, Graph, TensorType, Value
from graph.ops import get_op


class Tensor:
    """A symbolic tensor during tracing: a graph value plus the tracer that owns it."""

    def __init__(self, value: Value, tracer: Tracer) -> None:
        self.value = value
        self.tracer = tracer

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def dtype(self) -> str:
        return self.value.type.dtype

    def dim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None) -> tuple[int, ...] | int:
        return self.shape if dim is None else self.shape[dim]

    def __add__(self, other: Tensor) -> Tensor:
        from graph import functional as F

        return F.add(self, other)

    def __mul__(self, other: Tensor) -> Tensor:
        from graph import functional as F

        return F.mul(self, other)

    def __sub__(self, other: Tensor) -> Tensor:
        from graph import functional as F

        return F.sub(self, other)

    def __neg__(self) -> Tensor:
        from graph import functional as F

        return F.neg(self)

    __radd__ = __add__
    __rmul__ = __mul__

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        from graph import functional as F

        return F.flatten(self, start_dim, end_dim)

    def reshape(self, *shape: int | Sequence[int]) -> Tensor:
        from graph import functional as F

        return F.reshape(self, *shape)

    view = reshape

    def __repr__(self) -> str:
        return f"Tensor(%{self.value.name} : {self.value.type})"


class Tracer:
    """Records nodes into a graph; knows which module (layer path) is running."""

    def __init__(self, graph: Graph, module_paths: dict[int, str]) -> None:
        self.graph = graph
        self.module_paths = module_paths
        self.path_stack: list[list] = []  # [layer path, is a leaf module, ops emitted so far]
        self.param_values: dict[int, Value] = {}

    def enter(self, module: object) -> None:
        path = self.module_paths.get(id(module), type(module).__name__)
        self.path_stack.append([path, not getattr(module, "_modules", None), 0])

    def leave(self) -> None:
        self.path_stack.pop()

    def _node_name(self, op: str) -> str:
        """A leaf module's first op is named by its path (``_1`` on a repeated call); other ops
        get ``path.op`` (a container's functional calls, a leaf's helper ops)."""
        frame = self.path_stack[-1] if self.path_stack else ["", False, 0]
        path, leaf, emitted = frame
        frame[2] = emitted + 1
        if leaf and path and not emitted:
            return self.graph.unique_name(path)
        return self.graph.unique_name(f"{path}.{op}" if path else op)

    def value_of(self, obj: object) -> Value:
        if isinstance(obj, Tensor):
            if obj.tracer is not self:
                raise ValueError(f"{obj!r} belongs to another trace")
            return obj.value
        try:
            return self.param_values[id(obj)]
        except KeyError:
            raise TypeError(
                f"{self._node_name('op')}: expected a traced tensor or a registered parameter, "
                f"but got {type(obj).__name__}; register weights on the module first"
            ) from None

    def emit(self, op: str, inputs: Sequence[object], attrs: dict) -> Tensor:
        """Check and append one node; errors carry the layer path and the inputs' producers."""
        values = [self.value_of(x) for x in inputs]
        name = self._node_name(op)
        try:
            out_types = get_op(op).infer([v.type for v in values], attrs)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{name}: {err}{_producers(values)}") from None
        node = self.graph.add_node(op, values, out_types, attrs, name)
        return Tensor(node.outputs[0], self)


def _producers(values: list[Value]) -> str:
    """One line per input made by a node, with that node's own input shapes (the arithmetic)."""
    lines = [
        f"\n  input %{v.name} : {v.type} = {v.producer.op}("
        + ", ".join(f"%{u.name} : {u.type}" for u in v.producer.inputs)
        + ")"
        for v in values
        if v.producer
    ]
    return "".join(lines)


_ACTIVE: list[Tracer] = []


def active_tracer() -> Tracer | None:
    return _ACTIVE[-1] if _ACTIVE else None


def trace(
    model: object, input_shape: Sequence[int], batch: int = 1, dtype: str = "float32"
) -> Graph:
    """Trace ``model`` (a ``graph.nn.Module``) for a fixed input [batch, *input_shape].

    Returns a verified Graph whose params list every parameter (role ``param``) and every
    floating-point buffer (role ``state``) under its ``state_dict`` key.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, but got dtype={dtype!r}")
    if not isinstance(batch, int | np.integer) or batch < 1:
        raise ValueError(f"batch must be a positive integer, but got batch={batch!r}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(
            f"input_shape must be (C, H, W) with positive sizes, but got {list(input_shape)}"
        )
    graph = Graph()
    paths = {id(m): name for name, m in model.named_modules()}
    tracer = Tracer(graph, paths)
    x = graph.add_value("input", TensorType((int(batch),) + input_shape, dtype), "input")
    for name, tensor, role in model.named_tensors():
        if np.issubdtype(tensor.dtype, np.floating):
            tracer.param_values[id(tensor)] = graph.add_value(
                name, TensorType(tuple(tensor.shape), dtype), role
            )
    _ACTIVE.append(tracer)
    try:
        out = model(Tensor(x, tracer))
    finally:
        _ACTIVE.pop()
    if not isinstance(out, Tensor):
        raise TypeError(f"model forward must return one traced tensor, but got {type(out)}")
    graph.outputs.append(out.value)
    graph.verify()
    return graph
