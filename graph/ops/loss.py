"""Losses: softmax cross-entropy and mean squared error, each a scalar [1] output.

- cross_entropy(logits [N, C], target [N] class indices stored as floats): mean over the batch
  of ``-sum_c q_c log softmax(logits)_c`` with ``q`` the one-hot target smoothed as PyTorch
  does (``(1 - label_smoothing) * onehot + label_smoothing / C``). A second output keeps the
  softmax probabilities for the backward pass: grad_logits = (probs - q) / N * grad_loss.
- mse(prediction, target of the same shape): mean of squared differences.
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
