"""Lottery tickets: per-round masks at p% (output layer p/2%), survivors reset to the start or
rewound weights, the random control on the same mask; and the engine's rewinding point."""

from __future__ import annotations

import numpy as np
import pytest

from engine.compress import TicketTrainer, compile_masked, rewound_weights
from engine.data import Dataset
from engine.optim import SGD
from graph import nn
from graph.compress.lottery import find_tickets, masked_start, round_rates


def _weights(rng, scale=1.0):
    return {
        "fc1.weight": scale * rng.standard_normal((30, 20)),
        "fc1.bias": scale * rng.standard_normal(30),
        "out.weight": scale * rng.standard_normal((10, 30)),
    }


def test_rounds_prune_the_survivors_and_reset_them(rng):
    start, random_start, trained = _weights(rng), _weights(rng), _weights(rng)
    calls = []

    def train(weights, masks):
        calls.append((weights, masks))
        moved = {n: w + 1.0 for n, w in weights.items()}  # "training" moves every weight
        return moved, float(len(calls))

    prunable = ["fc1.weight", "out.weight"]
    rounds = find_tickets(start, random_start, trained, prunable, train, 3, 0.2, "out.weight")
    assert len(rounds) == 3 and len(calls) == 6
    kept_fc, kept_out = 600, 300
    for i, result in enumerate(rounds):
        ticket, ticket_masks = calls[2 * i]
        control, control_masks = calls[2 * i + 1]
        kept_fc -= round(0.2 * kept_fc)
        kept_out -= round(0.1 * kept_out)  # the output layer at half the rate
        assert result.masks["fc1.weight"].sum() == kept_fc
        assert result.masks["out.weight"].sum() == kept_out
        assert ticket_masks is control_masks is result.masks
        for name in prunable:  # survivors reset to the start, the rest zero
            mask = result.masks[name]
            np.testing.assert_array_equal(ticket[name][mask], start[name][mask])
            np.testing.assert_array_equal(control[name][mask], random_start[name][mask])
            assert np.all(ticket[name][~mask] == 0) and np.all(control[name][~mask] == 0)
        np.testing.assert_array_equal(ticket["fc1.bias"], start["fc1.bias"])
        assert result.ticket == 2 * i + 1 and result.random == 2 * i + 2
        assert result.remaining == pytest.approx((kept_fc + kept_out) / 900)
        if i:  # each round prunes by the magnitudes the previous ticket trained to
            previous = {n: calls[2 * i - 2][0][n] + 1.0 for n in prunable}
            survivors = np.abs(previous["fc1.weight"])[rounds[i - 1].masks["fc1.weight"]]
            dropped = rounds[i - 1].masks["fc1.weight"] & ~result.masks["fc1.weight"]
            assert (
                np.abs(previous["fc1.weight"][dropped]).max()
                <= np.sort(survivors)[round(0.2 * survivors.size)]
            )


def test_rates_and_masked_start_errors(rng):
    assert round_rates(["a", "b"], 0.4, "b") == {"a": 0.4, "b": 0.2}
    with pytest.raises(ValueError, match=r"rate must be in \(0, 1\)"):
        round_rates(["a"], 1.0, "a")
    with pytest.raises(ValueError, match="output layer c is not among"):
        round_rates(["a"], 0.2, "c")
    w = _weights(rng)
    mask = {"fc1.weight": np.zeros((30, 20), bool)}
    assert np.all(masked_start(w, mask)["fc1.weight"] == 0)
    assert masked_start(w, mask)["out.weight"] is w["out.weight"]


def _tiny(rng):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    data = Dataset(
        rng.random((40, 1, 3, 4)).astype(np.float32), rng.integers(0, 3, 40), ("a", "b", "c")
    )
    masks = {n: np.ones(t.shape, bool) for n, t, _ in model.named_tensors() if "weight" in n}
    return model, data, masks


def test_rewinding_point_is_the_dense_run_after_k_steps(rng):
    model, data, masks = _tiny(rng)
    exe = compile_masked(model, masks, SGD(lr=0.1, momentum=0.9), (1, 3, 4), batch=8)
    initial = {n: np.array(v) for n, v in exe.state_dict().items()}
    rewound = rewound_weights(exe, data, 7)  # crosses an epoch (5 batches each)
    exe.set_tensors(initial)
    exe.set_tensors({n: np.zeros_like(v) for n, v in exe.optimizer_state.items()})
    exe.optimizer.steps = 0
    steps = [b for e in range(2) for b in data.batches(8, seed=0, epoch=e)][:7]
    for x, y in steps:
        exe.train_step(x, y)
    for name, value in exe.state_dict().items():
        np.testing.assert_array_equal(rewound[name], value)
    assert any(not np.array_equal(initial[n], rewound[n]) for n in masks)


def test_ticket_trainer_restarts_from_the_given_weights(rng):
    model, data, masks = _tiny(rng)
    exe = compile_masked(model, masks, SGD(lr=0.1, momentum=0.9), (1, 3, 4), batch=8)
    start = {n: np.array(v) for n, v in exe.state_dict().items()}
    trainer = TicketTrainer(exe, data, data, epochs=1)
    half = {n: np.arange(m.size).reshape(m.shape) % 2 == 0 for n, m in masks.items()}
    first, top1 = trainer(masked_start(start, half), half)
    second, _ = trainer(masked_start(start, half), half)
    for name in first:  # same start, fresh optimizer state: the same run twice
        np.testing.assert_array_equal(first[name], second[name])
    for name, mask in half.items():
        assert np.all(first[name][~mask] == 0) and np.any(first[name][mask] != start[name][mask])
    assert 0.0 <= top1 <= 1.0
