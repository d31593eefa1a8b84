"""Optimizer updates as graph ops, so a whole training step is one executor call.

Each update writes its parameter and state buffers in place (``mutates``) and has no output.
``hyper`` is a small persistent vector the engine rewrites between steps (learning rate,
step-dependent bias corrections), so schedules never recompile anything:

- sgd_update(param, grad, momentum_buffer, hyper=[lr, momentum, dampening, weight_decay,
  nesterov, first_step]), as ``torch.optim.SGD``.
- adam_update(param, grad, exp_avg, exp_avg_sq, hyper=[lr, beta1, beta2, eps, weight_decay,
  decoupled, bias_correction1, sqrt(bias_correction2)]), as ``torch.optim.Adam`` and
  ``AdamW`` (decoupled=1).
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import no_macs, register

SGD_HYPER = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "first_step")
ADAM_HYPER = (
    "lr",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "decoupled",
    "bias_correction1",
    "bias_correction2_sqrt",
)


def _update_shape(op: str, hyper_names: tuple[str, ...]):
    def shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
        param, hyper = in_types[0], in_types[-1]
        for t in in_types[1:-1]:
            if t != param:
                raise ValueError(f"{op}: gradient and state must match the parameter {param}")
        if hyper.shape != (len(hyper_names),):
            raise ValueError(f"{op}: hyper must hold {hyper_names}, got shape {hyper.shape}")
        return []

    return shape


UPDATES = frozenset({"sgd_update", "adam_update"})

register("sgd_update", _update_shape("sgd_update", SGD_HYPER), no_macs, arity=4, mutates=(0, 2))
register(
    "adam_update", _update_shape("adam_update", ADAM_HYPER), no_macs, arity=5, mutates=(0, 2, 3)
)
