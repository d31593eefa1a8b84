"""Capsule ops (Sabour, Frosst & Hinton 2017, "Dynamic Routing Between Capsules").

- squash(s; dim, eps): ``v = |s|^2 / (1 + |s|^2) * s / sqrt(|s|^2 + eps)`` along ``dim``, so
  short vectors shrink to 0 and long ones to just under unit length (eps keeps the zero
  vector's gradient finite, as reference implementations do).
- capsule_predict(u [N, I, Din], W [I, J, Dout, Din]) -> u_hat [N, I, J, Dout]: each input
  capsule's prediction for each output capsule, ``u_hat[n,i,j] = W[i,j] @ u[n,i]``.
- capsule_routing(u_hat; iterations, eps) -> v [N, J, D], plus the coupling coefficients
  c [N, I, J] and the weighted sums s [N, J, D] kept for the backward pass: routing by
  agreement, ``c = softmax_j(b)``, ``s_j = sum_i c_ij u_hat_ij``, ``v = squash(s)``,
  ``b_ij += u_hat_ij . v_j`` between iterations, b starting at 0.
  Gradient: as the paper's reference implementation (which stops gradients through the
  agreement updates), the coupling coefficients are constants of the backward pass:
  ``grad u_hat_ij = c_ij * grad s_j`` with grad s from squash's derivative.
- capsule_length(v [N, J, D]) -> [N, J]: ``sqrt(|v|^2 + eps)``, the class probabilities the
  margin loss reads.
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import expect_positive, expect_rank, no_macs, register


def _squash_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if not 0 <= attrs["dim"] < len(in_types[0].shape):
        raise ValueError(f"squash dim {attrs['dim']} is not an axis of {in_types[0]}")
    return [in_types[0]]


def _squash_vjp(node, grads, wants, emit):
    return [emit("squash_grad", [grads[0], node.inputs[0]], **node.attrs)[0]]


def _squash_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if in_types[0] != in_types[1]:
        raise ValueError(f"squash_grad: gradient {in_types[0]} does not match {in_types[1]}")
    return _squash_shape(in_types[1:], attrs)


def _predict_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    u, w = in_types
    expect_rank("capsule_predict", u, 3, "input capsules")
    expect_rank("capsule_predict", w, 4, "weight")
    n, i, d_in = u.shape
    if w.shape[0] != i or w.shape[3] != d_in:
        raise ValueError(
            f"capsule_predict weight must be [{i}, J, Dout, {d_in}] for input capsules "
            f"{list(u.shape)}, but got {list(w.shape)}"
        )
    return [TensorType((n, i, w.shape[1], w.shape[2]), u.dtype)]


def _predict_macs(in_types, out_types, attrs) -> int:
    """N*I*J*Dout*Din for the prediction and both of its gradients."""
    return max(t.numel for t in in_types + out_types if len(t.shape) == 4) * min(
        t.shape[-1] for t in in_types + out_types if len(t.shape) == 3
    )


def _predict_vjp(node, grads, wants, emit):
    (g,), (u, w) = grads, node.inputs
    grad_u = emit("capsule_predict_grad_input", [g, w])[0] if wants[0] else None
    grad_w = emit("capsule_predict_grad_weight", [u, g])[0] if wants[1] else None
    return [grad_u, grad_w]


def _predict_grad_input_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    g, w = in_types
    return [TensorType(g.shape[:2] + w.shape[3:], g.dtype)]


def _predict_grad_weight_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    u, g = in_types
    return [TensorType(g.shape[1:] + u.shape[2:], u.dtype)]


def _routing_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    u_hat = in_types[0]
    expect_rank("capsule_routing", u_hat, 4, "predictions")
    expect_positive("capsule_routing", iterations=attrs["iterations"])
    n, i, j, d = u_hat.shape
    out = TensorType((n, j, d), u_hat.dtype)
    return [out, TensorType((n, i, j), u_hat.dtype), out]


def _routing_vjp(node, grads, wants, emit):
    gv = grads[0]
    _, couplings, sums = node.outputs
    gs = emit("squash_grad", [gv, sums], dim=2, eps=node.attrs["eps"])[0]
    return [emit("capsule_routing_grad", [gs, couplings])[0]]


def _routing_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    gs, c = in_types
    return [TensorType(c.shape + gs.shape[2:], gs.dtype)]


def _length_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    v = in_types[0]
    expect_rank("capsule_length", v, 3, "capsules")
    return [TensorType(v.shape[:2], v.dtype)]


def _length_vjp(node, grads, wants, emit):
    return [emit("capsule_length_grad", [grads[0], node.inputs[0], node.outputs[0]])[0]]


def _length_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    return [in_types[1]]


register("squash", _squash_shape, no_macs, vjp=_squash_vjp, eps=1e-8)
register("squash_grad", _squash_grad_shape, no_macs, arity=2, eps=1e-8)
register("capsule_predict", _predict_shape, _predict_macs, arity=2, vjp=_predict_vjp)
register("capsule_predict_grad_input", _predict_grad_input_shape, _predict_macs, arity=2)
register("capsule_predict_grad_weight", _predict_grad_weight_shape, _predict_macs, arity=2)
register("capsule_routing", _routing_shape, no_macs, vjp=_routing_vjp, iterations=3, eps=1e-8)
register("capsule_routing_grad", _routing_grad_shape, no_macs, arity=2)
register("capsule_length", _length_shape, no_macs, vjp=_length_vjp, eps=1e-8)
register("capsule_length_grad", _length_grad_shape, no_macs, arity=3)
