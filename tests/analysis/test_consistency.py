"""Shift-invariance consistency: exactly 1 for a network that only sums its input (global
average pooling) when every shift keeps the content in frame, below 1 for one that reads pixel
positions; the command's numbers, JSON and picture."""

from __future__ import annotations

import json

import numpy as np

import engine
from engine.analysis.consistency import _crop, consistency, default_pad
from engine.data import Dataset
from graph import nn
from tests.analysis.conftest import assert_picture, main


class _Pooled(nn.Module):
    """Global average pooling, then a linear layer: blind to where the content is."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(x)))


class _Positional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(3 * 16 * 16, 4)

    def forward(self, x):
        return self.fc(self.flatten(x))


def _framed_images(count: int, pad: int) -> Dataset:
    """Random 16x16 images whose border of ``pad`` pixels is zero."""
    rng = np.random.default_rng(0)
    x = np.zeros((count, 3, 16, 16), np.float32)
    x[:, :, pad:-pad, pad:-pad] = rng.random((count, 3, 16 - 2 * pad, 16 - 2 * pad))
    return Dataset(x, rng.integers(0, 4, count), tuple("abcd"))


def test_crop_at_the_pad_is_the_image():
    data = _framed_images(3, 2)
    padded = np.pad(data.x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    np.testing.assert_array_equal(_crop(padded, np.full((3, 2), 2), data.x.shape), data.x)
    shifted = _crop(padded, np.array([[3, 1]] * 3), data.x.shape)  # down-left shift by one
    np.testing.assert_array_equal(shifted[:, :, :-1, 1:], data.x[:, :, 1:, :-1])
    assert default_pad(32) == 4 and default_pad(8) == 1


def test_pooling_network_is_perfectly_consistent_and_a_positional_one_is_not():
    data = _framed_images(40, 2)
    nn.manual_seed(0)
    pooled = engine.compile(_Pooled(), (3, 16, 16), batch=8)
    result = consistency(pooled, data, pad=2, seed=1)
    assert result.consistency == 1.0 and result.pairs == 40
    assert len(set(result.shift_accuracy)) == 1 and result.shifts == [-2, -1, 0, 1, 2]
    predictions = np.argmax(
        np.concatenate([pooled.run(data.x[i : i + 8]) for i in range(0, 40, 8)]), 1
    )
    assert result.accuracy == (predictions == data.y).mean()
    positional = engine.compile(_Positional(), (3, 16, 16), batch=8)
    assert consistency(positional, data, pad=2, seed=1).consistency < 0.95


def test_consistency_command_prints_json_and_plots(trained, tmp_path, capsys):
    plot = tmp_path / "shift.png"
    argv = ["--checkpoint", trained.checkpoint, "--samples", "5", "--plot", str(plot)]
    assert main("consistency", *argv, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pad"] == 3 and report["pairs"] == 5 and report["model"] == "lenet5"
    assert 0.0 <= report["consistency"] <= 1.0
    assert report["accuracy"] == report["shift_accuracy"][report["shifts"].index(0)]
    assert_picture(plot)
    assert main("consistency", *argv[:2], "--pad", "1") == 0
    assert "shifts up to 1 px: consistency" in capsys.readouterr().out
