"""linear: ``y = x @ weight.T + bias`` on a 2-D input [N, in_features], as ``F.linear``."""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import expect_rank, register


def _linear_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if len(in_types) not in (2, 3):
        raise ValueError(f"linear takes x, weight and an optional bias, but got {len(in_types)}")
    x, w = in_types[0], in_types[1]
    expect_rank("linear", x, 2)
    expect_rank("linear", w, 2, "weight")
    out_features, in_features = w.shape
    if x.shape[1] != in_features:
        raise ValueError(
            f"linear in_features must match the input's features, but got in_features="
            f"{in_features} for input shape {list(x.shape)}: the traced shape needs "
            f"in_features={x.shape[1]}"
        )
    if len(in_types) == 3 and in_types[2].shape != (out_features,):
        raise ValueError(
            f"linear bias must have shape [{out_features}], but got {list(in_types[2].shape)}"
        )
    return [TensorType((x.shape[0], out_features), x.dtype)]


def _linear_macs(in_types: list[TensorType], out_types: list[TensorType], attrs: dict) -> int:
    return out_types[0].numel * in_types[1].shape[1]


def _linear_vjp(node, grads, wants, emit):
    """y = x W^T + b: grad_x = gy W, grad_W = gy^T x, grad_b = sum of gy over the batch."""
    (gy,), (x, w) = grads, node.inputs[:2]
    grad_x = emit("matmul", [gy, w], trans_a=False, trans_b=False)[0] if wants[0] else None
    grad_w = emit("matmul", [gy, x], trans_a=True, trans_b=False)[0] if wants[1] else None
    grad_b = [emit("channel_sum", [gy])[0]] if len(node.inputs) == 3 else []
    return [grad_x, grad_w, *grad_b]


def _matmul_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """op(A) @ op(B) for 2-D A, B; op transposes when trans_a / trans_b is set."""
    a, b = in_types
    expect_rank("matmul", a, 2)
    expect_rank("matmul", b, 2, "second input")
    (m, k) = a.shape[::-1] if attrs["trans_a"] else a.shape
    (k2, n) = b.shape[::-1] if attrs["trans_b"] else b.shape
    if k != k2:
        raise ValueError(f"matmul inner sizes must match, but got {a} and {b} with {attrs}")
    return [TensorType((m, n), a.dtype)]


def _matmul_macs(in_types: list[TensorType], out_types: list[TensorType], attrs: dict) -> int:
    a = in_types[0].shape
    return out_types[0].numel * (a[0] if attrs["trans_a"] else a[1])


register("linear", _linear_shape, _linear_macs, arity=None, vjp=_linear_vjp)
register("matmul", _matmul_shape, _matmul_macs, arity=2, trans_a=False, trans_b=False)
