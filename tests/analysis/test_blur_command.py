"""``convforge train --blur K``: an anti-aliased model trained from the shell, and every command
that reads its checkpoint rebuilds the same (blurred) architecture."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from engine.checkpoint import load_checkpoint, save_checkpoint
from tests.analysis.conftest import main


@pytest.fixture(scope="module")
def blurred(trained, tmp_path_factory) -> tuple[str, dict]:
    """ResNet-20 with 3x3 BlurPool, one epoch on the shared tiny image folder: its checkpoint
    and the --json report of its training."""
    checkpoint = str(tmp_path_factory.mktemp("blur") / "blur.ckpt")
    argv = ["train", "resnet20_cifar", "--data", trained.data, "--batch", "4", "--epochs", "1"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert (
            main(*argv, "--blur", "3", "--no-progress", "--checkpoint", checkpoint, "--json") == 0
        )
    return checkpoint, json.loads(out.getvalue().splitlines()[-1])


def test_train_blur_records_it_and_eval_rebuilds_the_blurred_model(blurred, capsys):
    checkpoint, trained_report = blurred
    assert load_checkpoint(checkpoint)[1]["model_args"]["blur"] == 3
    assert main("eval", "--checkpoint", checkpoint, "--json") == 0
    evaluated = json.loads(capsys.readouterr().out)
    # the same model and weights on the same test split: the validation loss of training
    # (a model without the blur layers would give another loss from the same weights)
    final = trained_report["epochs"][-1]
    np.testing.assert_allclose(evaluated["loss"], final["val_loss"], rtol=1e-6)
    assert main("consistency", "--checkpoint", checkpoint, "--samples", "4", "--json") == 0
    assert json.loads(capsys.readouterr().out)["model"] == "resnet20_cifar"
    tensors = load_checkpoint(checkpoint)[0]
    assert tensors["bn1.num_batches_tracked"].shape == ()  # as torch's state_dict has it
    # a BatchNorm model's checkpoint resumes (the blur comes from the checkpoint)
    resumed = ["train", "--resume", checkpoint, "--epochs", "2", "--checkpoint", checkpoint]
    assert main(*resumed, "--no-progress") == 0
    assert load_checkpoint(checkpoint)[1]["next_epoch"] == 2


def test_blur_errors_name_the_flag(blurred, trained, capsys):
    checkpoint, _ = blurred
    lenet = ["train", "lenet5", "--data", trained.data, "--batch", "4", "--epochs", "1"]
    assert main(*lenet, "--blur", "3", "--no-progress") == 2
    error = capsys.readouterr().err
    assert "--blur: lenet5 has no anti-aliased form" in error and "resnet20_cifar" in error
    resumed = ["train", "--resume", checkpoint, "--epochs", "2", "--blur", "2"]
    assert main(*resumed, "--no-progress") == 2
    assert "--blur 2 contradicts the checkpoint" in capsys.readouterr().err
    assert main("train", "lenet5", "--blur", "0") == 2  # argparse: must be >= 1


def test_checkpoints_with_counters_of_shape_1_still_load(blurred, tmp_path, capsys):
    """Checkpoints written before 2026-12 stored num_batches_tracked as [1], not []."""
    checkpoint, _ = blurred
    tensors, meta = load_checkpoint(checkpoint)
    old = tmp_path / "old.ckpt"
    counters = {k: v.reshape(1) for k, v in tensors.items() if k.endswith("num_batches_tracked")}
    save_checkpoint(str(old), {**tensors, **counters}, meta)
    assert load_checkpoint(str(old))[0]["bn1.num_batches_tracked"].shape == (1,)
    assert main("eval", "--checkpoint", str(old), "--json") == 0
    assert json.loads(capsys.readouterr().out)["images"] > 0
