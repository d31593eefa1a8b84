"""The graph IR: the one data structure every pass, planner and backend reads.

A ``Graph`` is a static, fully shaped dataflow graph of a CNN, in the spirit of ``torch.fx``:

- ``TensorType(shape, dtype)``: every shape is known at compile time; users see NCHW.
- ``Value``: a typed SSA name with a ``role``:
  ``input`` (a graph input), ``param`` (a trainable weight), ``state`` (BatchNorm running
  statistics and other non-trainable buffers), ``act`` (an activation produced by a node),
  ``grad`` (a gradient), ``const`` (a compile-time constant), ``scratch`` (kernel workspace).
  Ops in ``graph.ops`` declare the inputs they write in place (``OpDef.mutates``: running
  statistics, weights under an optimizer update); such nodes may have no outputs.
  Parameter values carry PyTorch's dotted names (``layer1.0.conv1.weight``).
- ``Node(op, inputs, outputs, attrs, name)``: ``op`` names an ``OpDef`` in ``graph.ops``;
  ``attrs`` holds only ints, floats, strings, bools and tuples of them; ``name`` is the layer
  path (``layer1.0.conv1``), used in every error message, profile row and summary line.
- ``Graph``: inputs, params (trainable and state), nodes in a valid topological order, outputs.

``str(graph)`` prints one line per node, ``print_tabular()`` adds MACs and bytes, and
``verify()`` checks ownership, order, unique names and every shape against its op's rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ROLES = ("input", "param", "state", "act", "grad", "const", "scratch")
DTYPES = ("float32", "float64")
_DTYPE_SHORT = {"float32": "f32", "float64": "f64", "int64": "i64", "uint8": "u8"}


@dataclass(frozen=True)
class TensorType:
    """A static tensor type: shape (NCHW for feature maps) and NumPy dtype name."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def __str__(self) -> str:
        return f"{_DTYPE_SHORT.get(self.dtype, self.dtype)}[{','.join(map(str, self.shape))}]"


@dataclass(eq=False)
class Value:
    """A named, typed SSA value. ``producer`` is None for inputs, params, state and consts."""

    name: str
    type: TensorType
    role: str
    producer: Node | None = None
    users: list[Node] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclass(eq=False)
class Node:
    """One op application. ``name`` is the layer path used in errors and reports."""

    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict[str, object]
    name: str

    def format(self) -> str:
        """One FX-style line: ``%name : f32[...] = op[attr=v](%a, %b)``, non-default attrs only."""
        from graph.ops import get_op

        defaults = get_op(self.op).defaults
        shown = {k: v for k, v in self.attrs.items() if defaults.get(k, object()) != v}
        outs = ", ".join(f"%{v.name} : {v.type}" for v in self.outputs)
        attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in shown.items())
        args = ", ".join(f"%{v.name}" for v in self.inputs)
        call = f"{self.op}{f'[{attrs}]' if attrs else ''}({args})"
        return f"{outs} = {call}" if outs else call


def _fmt_attr(value: object) -> str:
    if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
        return f"({','.join(value)})"
    if isinstance(value, tuple) and value and all(v == value[0] for v in value):
        return str(value[0])
    return str(value).replace(" ", "")


class Graph:
    """A static CNN graph. Nodes are kept in a valid topological order (the schedule)."""

    def __init__(self) -> None:
        self.inputs: list[Value] = []
        self.params: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.values: dict[str, Value] = {}
        # Training graphs (graph.autodiff) also record:
        self.consts: dict[str, float] = {}  # const value name -> fill value
        self.grads: dict[str, Value] = {}  # parameter name -> its gradient value
        self.backward_start: int | None = None  # index of the first node after the loss

    # **** Building ****

    def add_value(self, name: str, type_: TensorType, role: str) -> Value:
        if role not in ROLES:
            raise ValueError(f"value role must be one of {ROLES}, but got role={role!r}")
        if name in self.values:
            raise ValueError(f"value name {name!r} is already used in this graph")
        value = Value(name, type_, role)
        self.values[name] = value
        if role == "input":
            self.inputs.append(value)
        elif role in ("param", "state"):
            self.params.append(value)
        return value

    def add_node(
        self,
        op: str,
        inputs: list[Value],
        output_types: list[TensorType],
        attrs: dict,
        name: str,
        output_names: list[str] | None = None,
    ) -> Node:
        """Append a node whose outputs are new ``act`` values named after the node (``name``,
        ``name:1``...), or ``output_names``: a fused node keeps the name of the value it now
        computes, so its users and the graph's outputs keep theirs."""
        node = Node(op, list(inputs), [], dict(attrs), name)
        names = output_names or [
            name if i == 0 else f"{name}:{i}" for i in range(len(output_types))
        ]
        for out_name, type_ in zip(names, output_types, strict=True):
            out = self.add_value(out_name, type_, "act")
            out.producer = node
            node.outputs.append(out)
        for value in inputs:
            value.users.append(node)
        self.nodes.append(node)
        return node

    def unique_name(self, base: str) -> str:
        """``base`` if unused, else ``base_1``, ``base_2``... (as torch.fx names repeated calls)."""
        if base not in self.values:
            return base
        k = 1
        while f"{base}_{k}" in self.values:
            k += 1
        return f"{base}_{k}"

    def copy(self) -> Graph:
        """A new graph with the same values, nodes (same names, order and attributes),
        outputs and training records, sharing nothing mutable with this one: passes that
        rewrite a graph work on a copy."""
        graph = Graph()
        for value in self.values.values():
            if value.producer is None:
                graph.add_value(value.name, value.type, value.role)
        for node in self.nodes:
            inputs = [graph.values[v.name] for v in node.inputs]
            types, names = [v.type for v in node.outputs], [v.name for v in node.outputs]
            graph.add_node(node.op, inputs, types, node.attrs, node.name, names)
        graph.outputs = [graph.values[v.name] for v in self.outputs]
        graph.consts = dict(self.consts)
        graph.grads = {k: graph.values[v.name] for k, v in self.grads.items()}
        graph.backward_start = self.backward_start
        return graph

    # **** Reading ****

    def __str__(self) -> str:
        lines = [f"graph({', '.join(f'%{v.name} : {v.type}' for v in self.inputs)}):"]
        lines += [f"    {node.format()}" for node in self.nodes]
        lines.append(f"    return {', '.join(f'%{v.name}' for v in self.outputs)}")
        return "\n".join(lines)

    def print_tabular(self) -> str:
        """The nodes as columns (name, op, output shape, MACs, output bytes); returns the text."""
        from graph.ops import get_op

        rows = [("name", "op", "output", "MACs", "bytes")]
        for node in self.nodes:
            macs = get_op(node.op).count_macs(
                [v.type for v in node.inputs], [v.type for v in node.outputs], node.attrs
            )
            out = node.outputs[0].type
            rows.append((node.name, node.op, str(out), f"{macs:,}", f"{out.nbytes:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        text = "\n".join(
            "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=False))
            )
            for r in rows
        )
        print(text)
        return text

    def verify(self) -> None:
        """Check ownership, order, unique names and each node's shapes against its op's rule."""
        from graph.ops import get_op

        defined = {v.name for v in self.values.values() if v.producer is None}
        names: set[str] = set()
        for node in self.nodes:
            if node.name in names:
                raise ValueError(f"node name {node.name!r} is used twice\n{self}")
            names.add(node.name)
            for value in node.inputs:
                if value.name not in defined:
                    raise ValueError(
                        f"{node.name}: input %{value.name} was used before it was defined\n{self}"
                    )
                if node not in value.users:
                    raise ValueError(f"{node.name}: %{value.name} does not list it as a user")
            expected = get_op(node.op).infer([v.type for v in node.inputs], node.attrs)
            actual = [v.type for v in node.outputs]
            if expected != actual:
                raise ValueError(
                    f"{node.name}: {node.op} shape rule gives {[str(t) for t in expected]}, "
                    f"but the graph has {[str(t) for t in actual]}"
                )
            for value in node.outputs:
                if value.producer is not node:
                    raise ValueError(f"{node.name}: output %{value.name} has another producer")
                defined.add(value.name)
        for value in self.outputs:
            if value.name not in defined:
                raise ValueError(f"graph output %{value.name} is never defined\n{self}")
