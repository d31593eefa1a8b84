"""The training loop: learning on real data, exact resume, checkpoints, the CLI, bad batches."""

from __future__ import annotations

import numpy as np
import pytest

import engine
import graph.functional as F
import graph.nn as nn
from engine import cli
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.data import Dataset, Normalize, load_dataset
from engine.optim import SGD, Adam
from engine.schedules import make_schedule
from engine.train import (
    TrainingDiverged,
    evaluate,
    fit,
    load_training_checkpoint,
    load_weights,
)


class DigitsNet(nn.Module):
    """A small CNN for 8x8 digits (fast enough to train in a test), with dropout so resume
    must restore the dropout stream too."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        return self.classifier(self.dropout(F.flatten(self.features(x), 1)))


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset, Normalize]:
    train, test = load_dataset("digits")
    return train, test, Normalize.fit(train.x)


def _run(digits, epochs, start_epoch=0, checkpoint=None, resume=None, seed=3):
    train, test, norm = digits
    nn.manual_seed(0)
    exe = engine.compile(
        DigitsNet(),
        (1, 8, 8),
        batch=32,
        train=True,
        optimizer=SGD(lr=0.1, momentum=0.9, weight_decay=5e-4),
    )
    schedule = make_schedule("cosine", 0.1, T_max=4)
    if resume is not None:
        start_epoch = load_training_checkpoint(resume, exe, schedule)["next_epoch"]
    fit(
        exe,
        train,
        test,
        epochs,
        schedule,
        preprocess=norm,
        seed=seed,
        start_epoch=start_epoch,
        checkpoint=checkpoint,
        progress=False,
        log=lambda _: None,
    )
    return exe


def test_training_on_digits_learns(digits):
    exe = _run(digits, epochs=4)
    scores = evaluate(exe, digits[1], digits[2])
    assert scores["top1"] > 0.9 and scores["top5"] >= scores["top1"]


def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(digits, tmp_path):
    straight = _run(digits, epochs=4)
    path = str(tmp_path / "run.ckpt")
    _run(digits, epochs=2, checkpoint=path)
    resumed = _run(digits, epochs=4, resume=path)
    for name, value in straight.params.items():
        np.testing.assert_array_equal(resumed.params[name], value, err_msg=name)
    for name, value in straight.optimizer_state.items():
        np.testing.assert_array_equal(resumed.optimizer_state[name], value, err_msg=name)
    assert resumed.optimizer.steps == straight.optimizer.steps


def test_corrupt_checkpoint_is_a_clear_error(digits, tmp_path):
    path = tmp_path / "run.ckpt"
    _run(digits, epochs=1, checkpoint=str(path))
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    exe = engine.compile(DigitsNet(), (1, 8, 8), batch=32, train=True, optimizer=SGD())
    with pytest.raises(ValueError, match="run.ckpt"):
        load_training_checkpoint(str(path), exe)
    path.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(ValueError, match="run.ckpt"):
        load_training_checkpoint(str(path), exe)


def test_bad_batches_are_refused():
    exe = engine.compile(DigitsNet(), (1, 8, 8), batch=4, train=True, optimizer=SGD())
    x = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        exe.train_step(x, np.array([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="target of shape"):
        exe.train_step(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="class indices"):
        exe.train_step(x, np.array([0.5, 1, 2, 3]))
    inference = engine.compile(DigitsNet(), (1, 8, 8), batch=4)
    with pytest.raises(RuntimeError, match="train=True"):
        inference.forward_backward(x, np.zeros(4, np.int64))
    no_optimizer = engine.compile(DigitsNet(), (1, 8, 8), batch=4, train=True)
    with pytest.raises(RuntimeError, match="optimizer"):
        no_optimizer.train_step(x, np.zeros(4, np.int64))


def test_cli_trains_saves_and_evaluates(tmp_path, capsys):
    path = str(tmp_path / "lenet.ckpt")
    args = ["lenet5", "--data", "digits", "--batch", "32"]
    assert cli.main(["train", *args, "--epochs", "2", "--checkpoint", path, "--no-progress"]) == 0
    trained = capsys.readouterr().out
    assert "epoch 2" in trained and "top-1" in trained
    assert cli.main(["eval", *args, "--checkpoint", path]) == 0
    final = trained.rsplit("final test top-1 ", 1)[1].split("%")[0]
    assert f"top-1 {final}%" in capsys.readouterr().out


def test_dropout_masks_change_between_steps_and_vanish_in_eval(rng):
    exe = engine.compile(DigitsNet(), (1, 8, 8), batch=8, train=True, optimizer=SGD())
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    exe.train()
    first, second = exe.run(x), exe.run(x)
    assert not np.array_equal(first, second)
    exe.eval()
    np.testing.assert_array_equal(exe.run(x), exe.run(x))


# **** Loading is all or nothing ****


def _snapshot(exe) -> dict[str, np.ndarray]:
    live = {**exe.params, **exe.extra_state, **exe.optimizer_state, **exe.rng_state}
    return {name: array.copy() for name, array in live.items()}


def _refused(path, exe, schedule, match: str) -> None:
    """Loading ``path`` fails with ``match`` and changes nothing in ``exe`` or ``schedule``."""
    before, schedule_before = _snapshot(exe), schedule.state_dict()
    steps_before = exe.optimizer.steps
    with pytest.raises(ValueError, match=match):
        load_training_checkpoint(str(path), exe, schedule)
    for name, array in _snapshot(exe).items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)
    assert schedule.state_dict() == schedule_before and exe.optimizer.steps == steps_before


def test_checkpoint_loading_is_all_or_nothing(digits, tmp_path):
    good = tmp_path / "good.ckpt"
    _run(digits, epochs=1, checkpoint=str(good))
    tensors, meta = load_checkpoint(str(good))
    exe = engine.compile(
        DigitsNet(), (1, 8, 8), batch=32, train=True, optimizer=SGD(lr=0.1, momentum=0.9)
    )
    schedule = make_schedule("cosine", 0.1, T_max=4)
    # tensors are checked in sorted order, so the broken one comes after others that would fit
    bad = tmp_path / "bad.ckpt"
    name = "features.3.weight"
    save_checkpoint(bad, {k: v for k, v in tensors.items() if k != name}, meta)
    _refused(bad, exe, schedule, f"missing {name}")
    save_checkpoint(bad, {**tensors, name: tensors[name][:, :4]}, meta)
    _refused(bad, exe, schedule, rf"{name} has shape \[16, 4, 3, 3\] .* needs \[16, 8, 3, 3\]")
    save_checkpoint(bad, {**tensors, name: tensors[name].astype(np.float64)}, meta)
    _refused(bad, exe, schedule, f"{name} is float64 in the checkpoint, but .* float32")
    save_checkpoint(bad, {**tensors, "extra.weight": tensors[name]}, meta)
    _refused(bad, exe, schedule, "unexpected extra.weight")
    save_checkpoint(bad, tensors, {**meta, "schedule": {"type": "StepLR"}})
    _refused(bad, exe, schedule, "schedule StepLR, but this run uses CosineAnnealingLR")
    adam = engine.compile(DigitsNet(), (1, 8, 8), batch=32, train=True, optimizer=Adam())
    with pytest.raises(ValueError, match="optimizer SGD, but this run uses Adam"):
        load_training_checkpoint(str(good), adam)
    load_training_checkpoint(str(good), exe, schedule)  # the good file still loads
    np.testing.assert_array_equal(exe.params[name], tensors[name])


def test_load_weights_ignores_the_optimizer(digits, tmp_path):
    path = tmp_path / "adam.ckpt"
    train, _, norm = digits
    exe = engine.compile(DigitsNet(), (1, 8, 8), batch=32, train=True, optimizer=Adam())
    fit(exe, train, epochs=1, preprocess=norm, checkpoint=str(path), progress=False, log=print)
    inference = engine.compile(DigitsNet(), (1, 8, 8), batch=32)
    load_weights(str(path), inference)
    for name, array in exe.params.items():
        np.testing.assert_array_equal(inference.params[name], array, err_msg=name)


def test_fit_stops_at_the_first_non_finite_loss(digits, tmp_path):
    train, test, norm = digits
    path = tmp_path / "run.ckpt"
    nn.manual_seed(0)
    exe = engine.compile(DigitsNet(), (1, 8, 8), batch=32, train=True, optimizer=SGD(lr=0.05))
    fit(exe, train, test, 1, preprocess=norm, checkpoint=str(path), progress=False, log=print)
    good = path.read_bytes()
    exe.optimizer.lr = 1e30
    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 2, step \d+: the training loss"):
        fit(exe, train, test, 2, preprocess=norm, start_epoch=1, checkpoint=str(path),
            progress=False, log=print)  # fmt: skip
    assert path.read_bytes() == good
