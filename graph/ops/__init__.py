"""The op registry: one ``OpDef`` per op, declared once in its family's module.

Each family module (``conv``, ``linear``, ``elementwise``, ``pooling``, ``norm``, ``shape``)
defines ``_<op>_shape`` and ``_<op>_macs`` functions and ends with one ``register`` call per op,
as JAX's ``lax`` modules do. Shape rules check the attributes too, so every invalid layer fails
at trace time. Backends key their kernels by ``OpDef.name``; op properties are the frozensets
at the bottom, so passes test membership rather than lists of names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from graph.ir import TensorType

ShapeRule = Callable[[list[TensorType], dict], list[TensorType]]
MacRule = Callable[[list[TensorType], list[TensorType], dict], int]
# vjp(node, output grads (None where unused), which inputs want a grad, emit) -> input grads.
# ``emit(op, inputs, **attrs)`` appends a backward node and returns its output values.
VjpRule = Callable[..., list]


@dataclass(frozen=True)
class OpDef:
    """An op's rules. ``shape`` raises ValueError stating the rule and the numbers when inputs
    or attributes are invalid; the tracer prefixes the layer path."""

    name: str
    shape: ShapeRule
    macs: MacRule
    arity: int | None  # number of inputs; None for variadic ops (concat)
    defaults: dict  # attribute values that printing leaves out
    vjp: VjpRule | None = None  # None: not differentiable (backward and update ops)
    mutates: tuple[int, ...] = ()  # inputs the op writes in place (running stats, weights)
    # inputs whose buffer output 0 may take over when that input dies at this node (the
    # in-place pass, graph/passes/inplace.py): the kernel reads each element before it writes
    # the same element, and never reads an element it has written
    inplace: tuple[int, ...] = ()

    def infer(self, in_types: list[TensorType], attrs: dict) -> list[TensorType]:
        """Check arity and dtypes, then apply the shape rule."""
        if self.arity is not None and len(in_types) != self.arity:
            raise ValueError(f"{self.name} takes {self.arity} inputs, but got {len(in_types)}")
        dtypes = {t.dtype for t in in_types}
        if len(dtypes) > 1:
            raise TypeError(f"{self.name} inputs must share one dtype, but got {sorted(dtypes)}")
        return self.shape(in_types, attrs)

    def count_macs(self, in_types: list[TensorType], out_types: list[TensorType], attrs: dict):
        return int(self.macs(in_types, out_types, attrs))


OPS: dict[str, OpDef] = {}


def register(
    name: str,
    shape: ShapeRule,
    macs: MacRule,
    arity: int | None = 1,
    *,
    vjp: VjpRule | None = None,
    mutates: tuple[int, ...] = (),
    inplace: tuple[int, ...] = (),
    **defaults: object,
) -> OpDef:
    if name in OPS:
        raise ValueError(f"op {name!r} is registered twice")
    OPS[name] = OpDef(name, shape, macs, arity, defaults, vjp, mutates, inplace)
    return OPS[name]


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {sorted(OPS)}") from None


# **** Helpers shared by the rules ****


def no_macs(in_types: list[TensorType], out_types: list[TensorType], attrs: dict) -> int:
    """MAC rule of ops that move, compare or normalise data but multiply no weights."""
    return 0


def same_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """Shape rule of elementwise ops: one output like the first input."""
    return [in_types[0]]


def expect_rank(op: str, t: TensorType, rank: int, what: str = "input") -> None:
    if len(t.shape) != rank:
        raise ValueError(
            f"{op} expects a rank-{rank} {what}, but got shape {list(t.shape)} "
            f"(rank {len(t.shape)})"
        )


def expect_positive(op: str, **values: object) -> None:
    """Every named int (or every int of a named tuple) must be >= 1."""
    for name, value in values.items():
        items = value if isinstance(value, tuple) else (value,)
        if any(not isinstance(v, int) or v < 1 for v in items):
            raise ValueError(f"{op} {name} must be positive integers, but got {name}={value}")


from graph.ops import capsule, conv, elementwise, fused, linear, loss, norm, optim, pooling  # noqa: E402,F401,I001
from graph.ops import shape as shape_ops  # noqa: E402,F401
from graph.ops import mask  # noqa: E402,F401
from graph.ops import quantized  # noqa: E402,F401
from graph.ops import collective, sync_norm  # noqa: E402,F401

UNARY_ELEMENTWISE = frozenset({"relu", "leaky_relu", "sigmoid", "tanh", "gelu", "dropout"})
BINARY_ELEMENTWISE = frozenset({"add", "mul"})
POOLING = frozenset(
    {"max_pool2d", "avg_pool2d", "global_avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d"}
)
WEIGHTED = frozenset({"conv2d", "linear"})
