"""Optimizers against torch.optim, step by step, on the same network and batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine
import graph.functional as F
import graph.nn as nn
from engine.optim import SGD, Adam, AdamW
from tests.helpers import DTYPES, OP_TOLERANCE, rel_error

CONFIGS = {
    "sgd": (SGD, torch.optim.SGD, dict(lr=0.1)),
    "sgd_momentum": (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "sgd_dampening": (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3)),
    "sgd_nesterov_decay": (
        SGD,
        torch.optim.SGD,
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    ),
    "sgd_decay": (SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=5e-4)),
    "adam": (Adam, torch.optim.Adam, dict(lr=1e-2)),
    "adam_decay": (Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2)),
    "adamw": (AdamW, torch.optim.AdamW, dict(lr=1e-2)),
    "adamw_custom": (
        AdamW,
        torch.optim.AdamW,
        dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    ),
}


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(F.flatten(x, 1))


class TorchSmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(x.flatten(1))


# How far (relative to the largest) every conv pre-activation stays from zero, and every
# max-pool window's largest value from its second, in ``_kink_free_batch``: 100x the drift of
# float32 weights over six steps.
KINK_MARGIN = 1e-4


def _kink_free_batch(twin: TorchSmallNet, rng, dtype: str) -> np.ndarray:
    """A random batch on which SmallNet is smooth beyond float32 rounding: no conv output
    near ReLU's kink at zero, no max-pool window with two near-equal largest values. At a
    kink, the two engines, a rounding error apart, take different branches and route a whole
    gradient differently, and the optimizer turns that into a step of its own (Adam's
    normalised step most: about one float32 run in 250 ended 1e-4 to 7e-4 away from torch,
    at a step with a conv output 3e-5 from zero)."""
    while True:
        x = rng.standard_normal((4, 2, 8, 8)).astype(dtype)
        with torch.no_grad():
            z = twin.conv(torch.from_numpy(x))
        margin = KINK_MARGIN * z.abs().max()
        windows = torch.relu(z).unfold(2, 2, 2).unfold(3, 2, 2).reshape(*z.shape[:2], 4, 4, 4)
        top = windows.topk(2, dim=-1).values
        ties = (top[..., 0] - top[..., 1] < margin) & (top[..., 0] > 0)
        if z.abs().min() >= margin and not ties.any():
            return x


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_updates_match_torch_optim_step_by_step(config, dtype, rng):
    ours_cls, torch_cls, kwargs = CONFIGS[config]
    model = SmallNet()
    optimizer = ours_cls(**kwargs)
    exe = engine.compile(model, (2, 8, 8), batch=4, dtype=dtype, train=True, optimizer=optimizer)
    twin = TorchSmallNet().to(getattr(torch, dtype))
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    torch_optimizer = torch_cls(twin.parameters(), **kwargs)
    for step in range(6):
        if step == 3:  # a schedule changing the learning rate mid-run
            optimizer.lr = kwargs["lr"] / 2
            torch_optimizer.param_groups[0]["lr"] = kwargs["lr"] / 2
        x = _kink_free_batch(twin, rng, dtype)
        y = rng.integers(0, 5, 4)
        loss = exe.train_step(x, y)
        torch_optimizer.zero_grad()
        ref = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        ref.backward()
        torch_optimizer.step()
        assert rel_error([loss], [ref.item()]) < OP_TOLERANCE[dtype], (step, loss, ref.item())
    for name, value in twin.state_dict().items():
        err = rel_error(exe.params[name], value.numpy())
        assert err < 10 * OP_TOLERANCE[dtype], f"{name}: relative error {err:.2e}"
    assert optimizer.steps == 6


def test_invalid_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="nesterov"):
        SGD(lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        Adam(lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamW(betas=(1.5, 0.9))


def test_optimizer_state_dict_round_trip():
    optimizer = Adam(lr=0.01)
    optimizer.steps = 7
    restored = Adam(lr=0.5)
    restored.load_state_dict(optimizer.state_dict())
    assert (restored.lr, restored.steps) == (0.01, 7)
    with pytest.raises(ValueError, match="SGD"):
        SGD().load_state_dict(optimizer.state_dict())
