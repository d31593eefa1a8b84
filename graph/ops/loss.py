"""Losses: softmax cross-entropy and mean squared error, each a scalar [1] output.

- cross_entropy(logits [N, C], target [N] class indices stored as floats): mean over the batch
  of ``-sum_c q_c log softmax(logits)_c`` with ``q`` the one-hot target smoothed as PyTorch
  does (``(1 - label_smoothing) * onehot + label_smoothing / C``). A second output keeps the
  softmax probabilities for the backward pass: grad_logits = (probs - q) / N * grad_loss.
- mse(prediction, target of the same shape): mean of squared differences.
- margin(lengths [N, C], target [N]): the capsule-network margin loss (Sabour et al. 2017),
  ``sum_c T_c max(0, m+ - v_c)^2 + lambda (1 - T_c) max(0, v_c - m-)^2`` averaged over the
  batch, with ``v_c`` the length of class c's capsule (defaults m+ 0.9, m- 0.1, lambda 0.5).
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import expect_rank, no_macs, register


def _cross_entropy_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    logits, target = in_types
    expect_rank("cross_entropy", logits, 2, "logits")
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy target must have shape [{logits.shape[0]}] (one class index per "
            f"sample), but got {list(target.shape)}"
        )
    if not 0.0 <= attrs["label_smoothing"] <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {attrs['label_smoothing']}")
    return [TensorType((1,), logits.dtype), logits]


def _cross_entropy_vjp(node, grads, wants, emit):
    logits, target = node.inputs
    grad = emit("cross_entropy_grad", [node.outputs[1], target, grads[0]], **node.attrs)[0]
    return [grad, None]


def _cross_entropy_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    return [in_types[0]]


def _mse_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    prediction, target = in_types
    if prediction.shape != target.shape:
        raise ValueError(f"mse target must have the prediction's shape {prediction}, got {target}")
    return [TensorType((1,), prediction.dtype)]


def _mse_vjp(node, grads, wants, emit):
    prediction, target = node.inputs
    return [emit("mse_grad", [prediction, target, grads[0]])[0], None]


def _mse_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    return [in_types[0]]


register(
    "cross_entropy",
    _cross_entropy_shape,
    no_macs,
    arity=2,
    vjp=_cross_entropy_vjp,
    label_smoothing=0.0,
)
register("cross_entropy_grad", _cross_entropy_grad_shape, no_macs, arity=3, label_smoothing=0.0)
register("mse", _mse_shape, no_macs, arity=2, vjp=_mse_vjp)
register("mse_grad", _mse_grad_shape, no_macs, arity=3)


def _margin_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    lengths, target = in_types
    expect_rank("margin", lengths, 2, "capsule lengths")
    if target.shape != lengths.shape[:1]:
        raise ValueError(f"margin target must have shape [{lengths.shape[0]}], got {target}")
    return [TensorType((1,), lengths.dtype)]


def _margin_vjp(node, grads, wants, emit):
    lengths, target = node.inputs
    return [emit("margin_grad", [lengths, target, grads[0]], **node.attrs)[0], None]


_MARGIN_DEFAULTS = dict(m_plus=0.9, m_minus=0.1, down_weight=0.5)
register("margin", _margin_shape, no_macs, arity=2, vjp=_margin_vjp, **_MARGIN_DEFAULTS)
register("margin_grad", _mse_grad_shape, no_macs, arity=3, **_MARGIN_DEFAULTS)
