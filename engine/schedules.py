"""Learning-rate schedules that reproduce ``torch.optim.lr_scheduler`` step for step, torch-free.

Protocol: a schedule is built over one base learning rate and owns the current rate.
``schedule.lr`` (equally ``schedule.get_lr()``) is the rate to use now; ``schedule.step()``
advances one position. The optimizer reads ``schedule.lr`` before each update and nothing is
written into it, so a schedule can be tested, saved and resumed without one. The loop is torch's:

    schedule = make_schedule("cosine", base_lr=0.1, T_max=epochs)
    for epoch in range(epochs):
        for batch in batches:
            optimizer.step(lr=schedule.lr)
        schedule.step(val_loss)        # per epoch here; per iteration if the caller prefers

Right after construction ``lr`` is torch's ``get_last_lr()[0]`` after constructing its scheduler
(``base_lr * start_factor`` for a warm-up), and after ``n`` calls of ``step`` it equals torch's
after ``n`` calls of ``scheduler.step()``. NOTE: torch's own ``get_lr()`` computes the *next*
rate; ours, like ``get_last_lr()``, returns the current one.

Why the odd formulas: torch updates most rates recursively from the previous one (``lr * gamma``;
cosine as a ratio of two cosines, with an additive step where that ratio is 0/0) rather than from
the closed form, and the two differ in the last bits. Every rule below uses torch's formula with
its order of operations, so the rates agree with torch's to the last bit, not just to a tolerance.

``step(metric)`` takes the monitored value on every schedule so a training loop can treat them
alike; only ``ReduceLROnPlateau`` reads it. ``state_dict()`` is a plain JSON-safe dict (strict
JSON: no NaN or infinity) holding hyperparameters and progress, and ``load_state_dict``
restores both, as torch's does, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import copy
import math
import numbers
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any


def _integer(owner: str, name: str, value: object, minimum: int = 1) -> int:
    """``value`` as a Python int (NumPy ints are not JSON), checked against ``minimum``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"{owner} {name} must be an integer >= {minimum}, but got {name}={value!r}"
        )
    return int(value)


class Schedule:
    """Base class: ``base_lr``, the current ``lr`` and ``last_epoch`` (calls of ``step`` so far).

    Subclasses set their hyperparameters, then call ``super().__init__``, and define
    ``_next_lr`` (torch's recursive ``get_lr``) and ``_closed_form_lr`` (torch's
    ``_get_closed_form_lr``, which ``SequentialLR`` uses when it switches schedules). Every
    attribute is JSON-safe state: ``state_dict`` is ``vars(self)`` plus the class name.
    """

    def __init__(self, base_lr: float) -> None:
        if not math.isfinite(base_lr) or base_lr < 0:
            raise ValueError(
                f"{type(self).__name__} base_lr must be a finite number >= 0, "
                f"but got base_lr={base_lr!r}"
            )
        self.base_lr = float(base_lr)
        self.last_epoch = 0
        self.lr = self._initial_lr()

    def get_lr(self) -> float:
        """The learning rate for the current position (torch's ``get_last_lr()[0]``)."""
        return self.lr

    def step(self, metric: float | None = None) -> None:
        """Advance one position; ``metric`` is ignored except by ``ReduceLROnPlateau``."""
        self.last_epoch += 1
        self.lr = self._next_lr()

    def _initial_lr(self) -> float:
        return self.base_lr

    def _next_lr(self) -> float:
        raise NotImplementedError

    def _closed_form_lr(self) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters and progress, JSON-safe; a copy, so later steps leave it alone."""
        return {"type": type(self).__name__, **copy.deepcopy(vars(self))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` of the same class; the keys must match exactly."""
        _check_state(self, state)
        for key in vars(self):
            setattr(self, key, copy.deepcopy(state[key]))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_lr={self.base_lr}, lr={self.lr}, step={self.last_epoch})"
        )


def _check_state(schedule: Schedule, state: dict[str, Any]) -> None:
    name = type(schedule).__name__
    if not isinstance(state, dict) or state.get("type") != name:
        found = state.get("type") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{name}.load_state_dict needs a {name} state, but got {found!r}")
    expected, given = set(vars(schedule)), set(state) - {"type"}
    if expected != given:
        raise ValueError(
            f"{name}.load_state_dict: state keys do not match, missing {sorted(expected - given)}, "
            f"unexpected {sorted(given - expected)}"
        )


# **** Fixed-shape schedules ****


class FixedLR(Schedule):
    """The rate stays at ``base_lr``: ``--schedule none`` (torch: ``LambdaLR`` of 1)."""

    def _next_lr(self) -> float:
        return self.lr

    def _closed_form_lr(self) -> float:
        return self.base_lr


class StepLR(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` steps (torch ``StepLR``)."""

    def __init__(self, base_lr: float, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _integer("StepLR", "step_size", step_size)
        self.gamma = float(gamma)
        super().__init__(base_lr)

    def _next_lr(self) -> float:
        if self.last_epoch % self.step_size != 0:
            return self.lr
        return self.lr * self.gamma

    def _closed_form_lr(self) -> float:
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class MultiStepLR(Schedule):
    """Multiply the rate by ``gamma`` at each milestone (torch ``MultiStepLR``).

    A milestone listed twice multiplies by ``gamma**2`` there, as torch's ``Counter`` does.
    """

    def __init__(self, base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> None:
        self.milestones = sorted(_integer("MultiStepLR", "milestone", m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(base_lr)

    def _next_lr(self) -> float:
        count = self.milestones.count(self.last_epoch)
        if count == 0:
            return self.lr
        return self.lr * self.gamma**count

    def _closed_form_lr(self) -> float:
        return self.base_lr * self.gamma ** bisect_right(self.milestones, self.last_epoch)


class ExponentialLR(Schedule):
    """Multiply the rate by ``gamma`` every step (torch ``ExponentialLR``)."""

    def __init__(self, base_lr: float, gamma: float) -> None:
        self.gamma = float(gamma)
        super().__init__(base_lr)

    def _next_lr(self) -> float:
        return self.lr * self.gamma

    def _closed_form_lr(self) -> float:
        return self.base_lr * self.gamma**self.last_epoch


class CosineAnnealingLR(Schedule):
    """Cosine from ``base_lr`` to ``eta_min`` over ``T_max`` steps (torch; SGDR without restarts).

    Past ``T_max`` the rate climbs back along the cosine, period ``2 * T_max``, as torch's does.
    """

    def __init__(self, base_lr: float, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max = _integer("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = float(eta_min)
        super().__init__(base_lr)

    def _next_lr(self) -> float:
        epoch, period = self.last_epoch, self.T_max
        # the ratio below is 0/0 one step after each minimum: torch adds the first step instead
        if (epoch - 1 - period) % (2 * period) == 0:
            return self.lr + (self.base_lr - self.eta_min) * (1 - math.cos(math.pi / period)) / 2
        return (1 + math.cos(math.pi * epoch / period)) / (
            1 + math.cos(math.pi * (epoch - 1) / period)
        ) * (self.lr - self.eta_min) + self.eta_min

    def _closed_form_lr(self) -> float:
        cosine = 1 + math.cos(math.pi * self.last_epoch / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * cosine / 2


class LinearLR(Schedule):
    """Scale the rate linearly from ``start_factor`` to ``end_factor`` over ``total_iters`` steps.

    The usual warm-up (Goyal et al. 2017); torch ``LinearLR``, whose defaults these are.
    """

    def __init__(
        self,
        base_lr: float,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
    ) -> None:
        if not 0 < start_factor <= 1:
            raise ValueError(
                f"LinearLR start_factor must be in (0, 1], but got start_factor={start_factor!r}"
            )
        if not 0 <= end_factor <= 1:
            raise ValueError(
                f"LinearLR end_factor must be in [0, 1], but got end_factor={end_factor!r}"
            )
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)
        self.total_iters = _integer("LinearLR", "total_iters", total_iters)
        super().__init__(base_lr)

    def _initial_lr(self) -> float:
        return self.base_lr * self.start_factor

    def _next_lr(self) -> float:
        if self.last_epoch > self.total_iters:
            return self.lr
        slope = self.end_factor - self.start_factor
        done = self.total_iters * self.start_factor + (self.last_epoch - 1) * slope
        return self.lr * (1.0 + slope / done)

    def _closed_form_lr(self) -> float:
        progress = min(self.total_iters, self.last_epoch) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


# **** Chaining ****


class SequentialLR(Schedule):
    """Run ``schedules[i]`` from ``milestones[i - 1]`` on (torch ``SequentialLR``).

    At a milestone the next schedule restarts at its own step 0 from its closed form (torch's
    ``_update_lr(0)``), then steps on recursively. The schedules must be fresh and share one
    ``base_lr``: in torch they share the optimizer's ``initial_lr``.
    """

    def __init__(self, schedules: Sequence[Schedule], milestones: Sequence[int]) -> None:
        if not schedules:
            raise ValueError("SequentialLR needs at least one schedule, but got none")
        if len(milestones) != len(schedules) - 1:
            raise ValueError(
                f"SequentialLR needs one milestone fewer than schedules, but got "
                f"{len(schedules)} schedules and milestones={list(milestones)}"
            )
        milestones = [_integer("SequentialLR", "milestone", m) for m in milestones]
        if milestones != sorted(set(milestones)):
            raise ValueError(
                f"SequentialLR milestones must increase strictly, but got {milestones}"
            )
        for index, schedule in enumerate(schedules):
            if isinstance(schedule, ReduceLROnPlateau | SequentialLR):
                raise ValueError(
                    f"SequentialLR cannot chain {type(schedule).__name__} (schedule {index}): "
                    "it has no closed form to restart from, as in torch"
                )
            if schedule.base_lr != schedules[0].base_lr or schedule.last_epoch != 0:
                raise ValueError(
                    f"SequentialLR schedules must be fresh and share one base_lr, but schedule "
                    f"{index} is {schedule!r} and schedule 0 is {schedules[0]!r}"
                )
        self.schedules = list(schedules)
        self.milestones = milestones
        super().__init__(schedules[0].base_lr)

    def _initial_lr(self) -> float:
        return self.schedules[0].lr

    def _next_lr(self) -> float:
        index = bisect_right(self.milestones, self.last_epoch)
        schedule = self.schedules[index]
        if index > 0 and self.milestones[index - 1] == self.last_epoch:
            schedule.last_epoch = 0
            schedule.lr = schedule._closed_form_lr()
        else:
            schedule.step()
        return schedule.lr

    def state_dict(self) -> dict[str, Any]:
        state = {
            key: copy.deepcopy(value) for key, value in vars(self).items() if key != "schedules"
        }
        state["schedules"] = [schedule.state_dict() for schedule in self.schedules]
        return {"type": type(self).__name__, **state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(self, state)
        if len(state["schedules"]) != len(self.schedules):
            raise ValueError(
                f"SequentialLR.load_state_dict: the state chains {len(state['schedules'])} "
                f"schedules, this one {len(self.schedules)}"
            )
        for schedule, schedule_state in zip(self.schedules, state["schedules"], strict=True):
            schedule.load_state_dict(schedule_state)
        self.milestones = list(state["milestones"])
        self.base_lr, self.lr, self.last_epoch = state["base_lr"], state["lr"], state["last_epoch"]


# **** Feedback ****


class ReduceLROnPlateau(Schedule):
    """Multiply the rate by ``factor`` once the metric has not improved for ``patience + 1`` steps.

    The AlexNet recipe (divide by 10 when the validation error stops improving), with torch's
    rules: improvement is relative or absolute by ``threshold``, ``cooldown`` steps after a cut
    count no bad steps, the rate never goes below ``min_lr``, and a cut smaller than ``eps``
    is skipped. ``step(metric)`` needs the metric.
    """

    def __init__(
        self,
        base_lr: float,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau mode must be 'min' or 'max', but got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(
                "ReduceLROnPlateau threshold_mode must be 'rel' or 'abs', "
                f"but got {threshold_mode!r}"
            )
        if not 0 <= factor < 1:
            raise ValueError(f"ReduceLROnPlateau factor must be in [0, 1), but got {factor!r}")
        self.mode, self.threshold_mode, self.threshold = mode, threshold_mode, float(threshold)
        self.factor = float(factor)
        self.patience = _integer("ReduceLROnPlateau", "patience", patience, minimum=0)
        self.cooldown = _integer("ReduceLROnPlateau", "cooldown", cooldown, minimum=0)
        self.min_lr, self.eps = float(min_lr), float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        super().__init__(base_lr)

    def step(self, metric: float | None = None) -> None:
        """Record the monitored ``metric`` (e.g. the validation loss) and cut the rate if stuck."""
        if metric is None:
            raise TypeError("ReduceLROnPlateau.step needs the monitored metric, but got None")
        current = float(metric)
        self.last_epoch += 1
        if self._is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad steps in cooldown do not count
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def _is_better(self, current: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return current < self.best * (1.0 - self.threshold)
        if self.mode == "min":
            return current < self.best - self.threshold
        if self.threshold_mode == "rel":
            return current > self.best * (self.threshold + 1.0)
        return current > self.best + self.threshold

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # strict JSON has no infinity: before the first finite metric, best is stored as text
        if not math.isfinite(self.best):
            state["best"] = repr(self.best)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.best = float(self.best)


# **** Factory for the CLI ****


def warmup_cosine(
    base_lr: float,
    warmup_iters: int,
    T_max: int,
    start_factor: float = 1.0 / 3,
    eta_min: float = 0.0,
) -> SequentialLR:
    """Linear warm-up over ``warmup_iters`` steps, then cosine over the next ``T_max`` steps.

    torch: ``SequentialLR(opt, [LinearLR(opt, start_factor, total_iters=warmup_iters),
    CosineAnnealingLR(opt, T_max, eta_min)], milestones=[warmup_iters])``.
    """
    warmup = LinearLR(base_lr, start_factor=start_factor, total_iters=warmup_iters)
    cosine = CosineAnnealingLR(base_lr, T_max=T_max, eta_min=eta_min)
    return SequentialLR([warmup, cosine], milestones=[warmup_iters])


_FACTORIES: dict[str, Callable[..., Schedule]] = {
    "step": StepLR,
    "multistep": MultiStepLR,
    "exponential": ExponentialLR,
    "cosine": CosineAnnealingLR,
    "warmup-cosine": warmup_cosine,
    "plateau": ReduceLROnPlateau,
    "none": FixedLR,
}
SCHEDULES: tuple[str, ...] = tuple(_FACTORIES)


def make_schedule(name: str, base_lr: float, **kwargs: Any) -> Schedule:
    """Build the schedule ``--schedule name`` picks; ``kwargs`` go to its constructor.

    Args:
        name: one of ``SCHEDULES``.
        base_lr: the optimizer's learning rate before scheduling.
        kwargs: the schedule's own arguments (``step_size``, ``milestones``, ``gamma``,
            ``T_max``, ``eta_min``, ``warmup_iters``, ``start_factor``, ``factor``,
            ``patience``, ...); one it does not take raises ``TypeError``.
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    return _FACTORIES[name](base_lr, **kwargs)
