"""Optimizers whose updates are graph ops (``graph/ops/optim.py``), run inside the executor.

An optimizer adds, for every parameter with a gradient, its state buffers (persistent, named
``optimizer.<param>.<state>`` like torch's per-parameter state) and one update node reading a
shared ``hyper`` vector. Before each step the executable writes ``hyper_values()`` into that
vector: the learning rate (which schedules change through ``lr``) and the step-dependent
terms, exactly as ``torch.optim`` computes them, so updates match PyTorch step for step.
"""

from __future__ import annotations

import math

from graph.ir import Graph, TensorType
from graph.ops import get_op
from graph.ops.optim import ADAM_HYPER, SGD_HYPER

HYPER_VALUE = "optimizer.hyper"


class Optimizer:
    """Base class: ``lr`` is read at every step; ``steps`` counts the updates done."""

    update_op: str
    state_names: tuple[str, ...]
    hyper_names: tuple[str, ...]

    def __init__(self, lr: float) -> None:
        if not lr >= 0.0:
            raise ValueError(f"{type(self).__name__} lr must be non-negative, but got lr={lr}")
        self.lr = float(lr)
        self.steps = 0

    def hyper_values(self) -> list[float]:
        """The hyper vector for the next update (``steps`` already counts it)."""
        raise NotImplementedError

    def add_updates(self, graph: Graph) -> None:
        """Append one update node per parameter gradient of a training graph."""
        dtype = next(iter(graph.grads.values())).type.dtype if graph.grads else "float32"
        hyper = graph.add_value(HYPER_VALUE, TensorType((len(self.hyper_names),), dtype), "const")
        graph.consts[hyper.name] = 0.0
        for name, grad in graph.grads.items():
            param = graph.values[name]
            states = [
                graph.add_value(f"optimizer.{name}.{state}", param.type, "state")
                for state in self.state_names
            ]
            inputs = [param, grad, *states, hyper]
            get_op(self.update_op).infer([v.type for v in inputs], {})
            graph.add_node(self.update_op, inputs, [], {}, f"{name}.{self.update_op}")

    def state_dict(self) -> dict[str, object]:
        return {"type": type(self).__name__, "lr": self.lr, "steps": self.steps}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {state.get('type')}, not {type(self)}")
        self.lr, self.steps = float(state["lr"]), int(state["steps"])


class SGD(Optimizer):
    """``torch.optim.SGD``: weight decay added to the gradient, momentum buffer initialised to
    the first gradient, dampening, and Nesterov momentum."""

    update_op, state_names, hyper_names = "sgd_update", ("momentum_buffer",), SGD_HYPER

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD nesterov momentum requires a momentum and zero dampening")
        if momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"SGD momentum and weight_decay must be >= 0, got {momentum}, {weight_decay}"
            )
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)

    def hyper_values(self) -> list[float]:
        return [
            self.lr,
            self.momentum,
            self.dampening,
            self.weight_decay,
            float(self.nesterov),
            float(self.steps == 1),
        ]


class Adam(Optimizer):
    """``torch.optim.Adam`` (L2 weight decay added to the gradient)."""

    update_op, state_names, hyper_names = "adam_update", ("exp_avg", "exp_avg_sq"), ADAM_HYPER
    decoupled = False

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr)
        if not all(0.0 <= b < 1.0 for b in betas) or eps < 0 or weight_decay < 0:
            raise ValueError(
                f"{type(self).__name__}: invalid betas={betas}, eps={eps} or "
                f"weight_decay={weight_decay}"
            )
        self.betas, self.eps, self.weight_decay = tuple(map(float, betas)), float(eps), weight_decay

    def hyper_values(self) -> list[float]:
        beta1, beta2 = self.betas
        return [
            self.lr,
            beta1,
            beta2,
            self.eps,
            float(self.weight_decay),
            float(self.decoupled),
            1.0 - beta1**self.steps,
            math.sqrt(1.0 - beta2**self.steps),
        ]


class AdamW(Adam):
    """``torch.optim.AdamW``: decoupled weight decay (default 0.01), param *= 1 - lr*wd."""

    decoupled = True

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(lr, betas, eps, weight_decay)
