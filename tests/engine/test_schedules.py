"""Schedules against torch.optim.lr_scheduler: the same rate at every step, and exact resume.

Each case builds our schedule and torch's scheduler (over a one-parameter SGD) with the same
arguments, steps both side by side and compares the rate after every step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as tls

from engine import schedules as S

REL_TOL = 1e-12
BASE_LR = 0.37

TorchFactory = Callable[[torch.optim.Optimizer], object]


def _torch_lrs(make: TorchFactory, steps: int, metrics: list[float] | None = None) -> list[float]:
    """torch's rate after construction and after each of ``steps`` calls of ``step``."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=BASE_LR)
    scheduler = make(optimizer)
    lrs = [optimizer.param_groups[0]["lr"]]
    for i in range(steps):
        optimizer.step()  # torch warns when the scheduler steps before the optimizer
        scheduler.step(*([] if metrics is None else [metrics[i]]))
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def _our_lrs(schedule: S.Schedule, steps: int, metrics: list[float] | None = None) -> list[float]:
    lrs = [schedule.lr]
    for i in range(steps):
        schedule.step(None if metrics is None else metrics[i])
        assert schedule.get_lr() == schedule.lr
        lrs.append(schedule.lr)
    return lrs


def _assert_same_lrs(ours: list[float], theirs: list[float]) -> None:
    assert len(ours) == len(theirs)
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if not math.isclose(a, b, rel_tol=REL_TOL, abs_tol=0.0):
            raise AssertionError(f"step {step}: ours lr={a!r}, torch lr={b!r}")


# (id, our schedule, torch scheduler, steps)
CASES: list[tuple[str, Callable[[], S.Schedule], TorchFactory, int]] = [
    ("fixed", lambda: S.FixedLR(BASE_LR), lambda o: tls.LambdaLR(o, lambda e: 1.0), 20),
    ("step", lambda: S.StepLR(BASE_LR, 3), lambda o: tls.StepLR(o, 3), 40),
    (
        "step-half",
        lambda: S.StepLR(BASE_LR, step_size=7, gamma=0.5),
        lambda o: tls.StepLR(o, step_size=7, gamma=0.5),
        100,
    ),
    (
        "multistep",
        lambda: S.MultiStepLR(BASE_LR, [30, 5, 12, 12], gamma=0.3),
        lambda o: tls.MultiStepLR(o, [30, 5, 12, 12], gamma=0.3),
        50,
    ),
    (
        "exponential",
        lambda: S.ExponentialLR(BASE_LR, gamma=0.95),
        lambda o: tls.ExponentialLR(o, gamma=0.95),
        300,
    ),
    (
        "cosine",
        lambda: S.CosineAnnealingLR(BASE_LR, T_max=10),
        lambda o: tls.CosineAnnealingLR(o, T_max=10),
        30,
    ),
    (
        "cosine-eta-min",
        lambda: S.CosineAnnealingLR(BASE_LR, T_max=7, eta_min=1e-3),
        lambda o: tls.CosineAnnealingLR(o, T_max=7, eta_min=1e-3),
        70,
    ),
    (
        "cosine-long",
        lambda: S.CosineAnnealingLR(BASE_LR, T_max=90, eta_min=1e-5),
        lambda o: tls.CosineAnnealingLR(o, T_max=90, eta_min=1e-5),
        270,
    ),
    (
        "cosine-one",
        lambda: S.CosineAnnealingLR(BASE_LR, T_max=1),
        lambda o: tls.CosineAnnealingLR(o, T_max=1),
        6,
    ),
    (
        "linear",
        lambda: S.LinearLR(BASE_LR),
        lambda o: tls.LinearLR(o),
        12,
    ),
    (
        "linear-down",
        lambda: S.LinearLR(BASE_LR, start_factor=0.9, end_factor=0.05, total_iters=13),
        lambda o: tls.LinearLR(o, start_factor=0.9, end_factor=0.05, total_iters=13),
        30,
    ),
    (
        "warmup-cosine",
        lambda: S.make_schedule(
            "warmup-cosine", BASE_LR, warmup_iters=5, T_max=20, start_factor=0.1, eta_min=1e-4
        ),
        lambda o: tls.SequentialLR(
            o,
            [tls.LinearLR(o, 0.1, total_iters=5), tls.CosineAnnealingLR(o, 20, eta_min=1e-4)],
            milestones=[5],
        ),
        60,
    ),
    (
        "warmup-step-exponential",
        lambda: S.SequentialLR(
            [
                S.LinearLR(BASE_LR, start_factor=0.25, total_iters=4),
                S.StepLR(BASE_LR, step_size=3, gamma=0.5),
                S.ExponentialLR(BASE_LR, gamma=0.9),
            ],
            milestones=[3, 11],
        ),
        lambda o: tls.SequentialLR(
            o,
            [
                tls.LinearLR(o, start_factor=0.25, total_iters=4),
                tls.StepLR(o, step_size=3, gamma=0.5),
                tls.ExponentialLR(o, gamma=0.9),
            ],
            milestones=[3, 11],
        ),
        30,
    ),
    (
        "cosine-then-multistep",
        lambda: S.SequentialLR(
            [
                S.CosineAnnealingLR(BASE_LR, T_max=6, eta_min=0.01),
                S.MultiStepLR(BASE_LR, [2, 4]),
            ],
            milestones=[8],
        ),
        lambda o: tls.SequentialLR(
            o,
            [tls.CosineAnnealingLR(o, T_max=6, eta_min=0.01), tls.MultiStepLR(o, [2, 4])],
            milestones=[8],
        ),
        20,
    ),
]
CASE_IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("name", "ours", "theirs", "steps"), CASES, ids=CASE_IDS)
def test_matches_torch(name, ours, theirs, steps):
    expected = _torch_lrs(theirs, steps)
    got = _our_lrs(ours(), steps)
    _assert_same_lrs(got, expected)
    assert got == expected, "same formulas in the same order: equal to the last bit"


# **** ReduceLROnPlateau ****

# improvements; a stall cut at its third bad step (6); two cooldown steps; values inside the
# relative threshold of the best, so not improvements (cut at 11); then stalls down to min_lr
SCRIPTED_METRICS = [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.79995, 0.79995, 0.79995]
SCRIPTED_METRICS += [0.7] * 25 + [0.5, 0.6, 0.6, 0.6, 0.6]


def test_plateau_scripted_metrics_match_torch():
    kwargs = {"patience": 2, "cooldown": 2, "min_lr": 1e-4}
    steps = len(SCRIPTED_METRICS)
    expected = _torch_lrs(lambda o: tls.ReduceLROnPlateau(o, **kwargs), steps, SCRIPTED_METRICS)
    got = _our_lrs(S.ReduceLROnPlateau(BASE_LR, **kwargs), steps, SCRIPTED_METRICS)
    _assert_same_lrs(got, expected)
    assert got == expected
    # the script reaches every rule: cuts at 6 and 11, four cuts in all, the last clamped to
    # min_lr, and none after it (a cut below eps is skipped)
    assert got[5] == got[0] > got[6] == got[10] > got[11]
    assert len(set(got)) == 5 and got[-1] == 1e-4 and got.index(1e-4) < steps - 10


PLATEAU_CONFIGS = [
    {},
    {"patience": 0, "cooldown": 1, "factor": 0.3, "threshold_mode": "abs", "eps": 1e-3},
    {"mode": "max", "threshold_mode": "abs", "threshold": 0.05, "patience": 1, "factor": 0.5},
    {"mode": "max", "patience": 3, "cooldown": 4, "min_lr": 0.02, "factor": 0.5},
]


@pytest.mark.parametrize("kwargs", PLATEAU_CONFIGS, ids=lambda kw: ",".join(kw) or "defaults")
def test_plateau_random_metrics_match_torch(kwargs, rng):
    metrics = [float(m) for m in rng.integers(0, 6, size=300) / 4]  # many ties and stalls
    expected = _torch_lrs(lambda o: tls.ReduceLROnPlateau(o, **kwargs), 300, metrics)
    got = _our_lrs(S.ReduceLROnPlateau(BASE_LR, **kwargs), 300, metrics)
    _assert_same_lrs(got, expected)


def test_plateau_needs_a_metric():
    with pytest.raises(TypeError, match="needs the monitored metric"):
        S.ReduceLROnPlateau(BASE_LR).step()


# **** state_dict: JSON and exact resume ****

PLATEAU_CASE = (
    "plateau",
    lambda: S.ReduceLROnPlateau(BASE_LR, patience=2, cooldown=2, min_lr=1e-4),
    None,
    len(SCRIPTED_METRICS),
)


def _metrics_for(name: str, steps: int) -> list[float] | None:
    return SCRIPTED_METRICS[:steps] if name == "plateau" else None


@pytest.mark.parametrize(
    ("name", "ours", "theirs", "steps"), [*CASES, PLATEAU_CASE], ids=[*CASE_IDS, "plateau"]
)
def test_state_dict_resume_is_exact(name, ours, theirs, steps):
    metrics = _metrics_for(name, steps)
    uninterrupted = _our_lrs(ours(), steps, metrics)
    for stop in sorted({0, 1, steps // 3, steps // 2, steps - 1}):
        first = ours()
        _our_lrs(first, stop, metrics)
        state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
        resumed = ours()
        resumed.load_state_dict(state)
        rest = _our_lrs(resumed, steps - stop, None if metrics is None else metrics[stop:])
        assert uninterrupted[stop:] == rest, f"resumed after {stop} steps"


def test_load_state_dict_restores_hyperparameters_as_torch_does():
    saved = S.StepLR(BASE_LR, step_size=3, gamma=0.5)
    _our_lrs(saved, 4)
    other = S.StepLR(0.1, step_size=5)
    other.load_state_dict(saved.state_dict())
    assert _our_lrs(other, 10) == _our_lrs(saved, 10)


def test_numpy_arguments_give_json_state():
    schedules = [
        S.StepLR(np.float32(0.5), np.int64(3), gamma=np.float32(0.5)),
        S.MultiStepLR(BASE_LR, np.array([4, 2]), gamma=np.float64(0.1)),
        S.ReduceLROnPlateau(BASE_LR, patience=np.int32(2), min_lr=np.float32(1e-3)),
    ]
    for schedule in schedules:
        schedule.step(np.float32(1.0))
        json.dumps(schedule.state_dict(), allow_nan=False)


def test_state_dict_is_a_copy():
    schedule = S.MultiStepLR(BASE_LR, [2, 4])
    schedule.state_dict()["milestones"].append(1)
    assert schedule.milestones == [2, 4]


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"type": "ExponentialLR"}, "needs a StepLR state, but got 'ExponentialLR'"),
        ([], "needs a StepLR state, but got 'list'"),
        ({"type": "StepLR", "lr": 0.1}, "missing .*'base_lr'"),
    ],
)
def test_load_state_dict_rejects_other_states(state, match):
    with pytest.raises(ValueError, match=match):
        S.StepLR(BASE_LR, 3).load_state_dict(state)


def test_sequential_load_needs_as_many_schedules():
    two = S.make_schedule("warmup-cosine", BASE_LR, warmup_iters=2, T_max=5)
    one = S.SequentialLR([S.FixedLR(BASE_LR)], [])
    with pytest.raises(ValueError, match="chains 2 schedules, this one 1"):
        one.load_state_dict(two.state_dict())


# **** construction errors and the factory ****


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: S.StepLR(BASE_LR, 0), "step_size must be an integer >= 1, but got step_size=0"),
        (lambda: S.StepLR(-0.1, 2), "base_lr must be a finite number >= 0"),
        (lambda: S.ExponentialLR(math.nan, 0.9), "base_lr must be a finite number >= 0"),
        (lambda: S.MultiStepLR(BASE_LR, [3, 0]), "milestone must be an integer >= 1"),
        (lambda: S.CosineAnnealingLR(BASE_LR, T_max=0), "T_max must be an integer >= 1"),
        (lambda: S.LinearLR(BASE_LR, start_factor=0.0), r"start_factor must be in \(0, 1\]"),
        (lambda: S.LinearLR(BASE_LR, end_factor=1.5), r"end_factor must be in \[0, 1\]"),
        (lambda: S.LinearLR(BASE_LR, total_iters=0), "total_iters must be an integer >= 1"),
        (lambda: S.ReduceLROnPlateau(BASE_LR, mode="avg"), "mode must be 'min' or 'max'"),
        (lambda: S.ReduceLROnPlateau(BASE_LR, factor=1.0), r"factor must be in \[0, 1\)"),
        (lambda: S.ReduceLROnPlateau(BASE_LR, threshold_mode="x"), "threshold_mode must be"),
        (lambda: S.ReduceLROnPlateau(BASE_LR, patience=-1), "patience must be an integer >= 0"),
        (lambda: S.SequentialLR([], []), "at least one schedule"),
        (
            lambda: S.SequentialLR([S.FixedLR(BASE_LR), S.FixedLR(BASE_LR)], []),
            "one milestone fewer than schedules",
        ),
        (
            lambda: S.SequentialLR([S.FixedLR(BASE_LR), S.FixedLR(BASE_LR)], [0]),
            "milestone must be an integer >= 1",
        ),
        (
            lambda: S.SequentialLR([S.FixedLR(BASE_LR)] * 3, [5, 5]),
            "milestones must increase strictly",
        ),
        (
            lambda: S.SequentialLR([S.FixedLR(BASE_LR), S.ReduceLROnPlateau(BASE_LR)], [3]),
            "cannot chain ReduceLROnPlateau",
        ),
        (
            lambda: S.SequentialLR([S.FixedLR(BASE_LR), S.FixedLR(0.1)], [3]),
            "must be fresh and share one base_lr",
        ),
    ],
)
def test_bad_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_sequential_rejects_a_stepped_schedule():
    stepped = S.ExponentialLR(BASE_LR, 0.5)
    stepped.step()
    with pytest.raises(ValueError, match="must be fresh"):
        S.SequentialLR([S.FixedLR(BASE_LR), stepped], [3])


FACTORY_KWARGS = {
    "step": {"step_size": 2},
    "multistep": {"milestones": [2, 4]},
    "exponential": {"gamma": 0.9},
    "cosine": {"T_max": 5},
    "warmup-cosine": {"warmup_iters": 2, "T_max": 5},
    "plateau": {"patience": 1},
    "none": {},
}


def test_make_schedule_builds_every_choice():
    assert set(FACTORY_KWARGS) == set(S.SCHEDULES)
    for name in S.SCHEDULES:
        schedule = S.make_schedule(name, BASE_LR, **FACTORY_KWARGS[name])
        for _ in range(6):
            schedule.step(1.0)
        assert 0 <= schedule.lr <= BASE_LR, name


def test_make_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule 'poly'; expected one of step, "):
        S.make_schedule("poly", BASE_LR)
    with pytest.raises(TypeError, match="T_max"):
        S.make_schedule("step", BASE_LR, step_size=2, T_max=3)
