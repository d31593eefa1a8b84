"""The command line as a new user meets it: augmentation, eval of any checkpoint, exact resume
without repeating flags, divergence, one-line errors with exit status 2, --version, help and
--json. Runs ``engine.cli.main`` in-process (one test runs the installed ``convforge``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import engine.train
from engine import cli
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.executable import Executable

LENET = ["lenet5", "--data", "digits", "--batch", "32", "--no-progress"]


def _main(*argv: str) -> int:
    """``cli.main`` with argparse's own exits turned into return codes."""
    try:
        return cli.main(list(argv))
    except SystemExit as exit_:
        return exit_.code


def _one_line_error(capsys, command: str, *argv: str) -> str:
    """Run a failing command: exit status 2, nothing on stdout, one line on stderr."""
    assert _main(*argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"convforge {command}: error: ") and "Traceback" not in err
    return err


def _weights(path) -> dict[str, np.ndarray]:
    return load_checkpoint(path)[0]


# **** --augment ****


def test_augment_reaches_the_training_batches(monkeypatch):
    seen: list[np.ndarray] = []
    real_step = Executable.train_step

    def recording_step(self, x, y):
        seen.append(x.copy())
        return real_step(self, x, y)

    monkeypatch.setattr(Executable, "train_step", recording_step)
    assert _main("train", *LENET, "--epochs", "1") == 0
    plain = list(seen)
    seen.clear()
    assert _main("train", *LENET, "--epochs", "1", "--augment", "crop=2,rotate=10") == 0
    assert len(seen) == len(plain) > 0
    # same data order (same seed), different pixels: every batch was augmented
    assert all(not np.array_equal(a, b) for a, b in zip(seen, plain, strict=True))


def test_bad_augment_values_are_refused_before_training(capsys):
    err = _one_line_error(capsys, "train", "train", *LENET, "--augment", "crop=2,spin=3")
    assert "spin" in err
    err = _one_line_error(capsys, "train", "train", *LENET, "--augment", "scale=0.9")
    assert "scale takes 2" in err


# **** eval and resume ****


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_eval_loads_the_weights_of_any_optimizer(tmp_path, capsys, optimizer):
    path = str(tmp_path / "run.ckpt")
    args = ["--optimizer", optimizer, "--lr", "0.002", "--epochs", "1", "--checkpoint", path]
    assert _main("train", *LENET, *args) == 0
    final = capsys.readouterr().out.rsplit("final test top-1 ", 1)[1].split("%")[0]
    assert _main("eval", "--checkpoint", path, "--json") == 0  # model and data from the file
    scores = json.loads(capsys.readouterr().out)
    assert scores["model"] == "lenet5" and f"{100 * scores['top1']:.2f}" == final


def test_resume_without_repeating_flags_is_bit_exact(tmp_path, monkeypatch):
    straight, first, resumed = (str(tmp_path / f"{n}.ckpt") for n in ("a", "b", "c"))
    run = [*LENET, "--seed", "7", "--augment", "flip", "--optimizer", "adam", "--lr", "0.002"]
    assert _main("train", *run, "--epochs", "3", "--checkpoint", straight) == 0
    real_save = engine.train.save_training_checkpoint

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C right after epoch 1 was saved

    monkeypatch.setattr(engine.train, "save_training_checkpoint", save_then_interrupt)
    assert _main("train", *run, "--epochs", "3", "--checkpoint", first) == 130
    monkeypatch.setattr(engine.train, "save_training_checkpoint", real_save)
    resume = ["--resume", first, "--checkpoint", resumed, "--no-progress"]
    assert _main("train", *resume) == 0  # no model, seed, data, optimizer or epochs given
    expected, got = _weights(straight), _weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.parametrize(
    "flag, value, saved",
    [("--batch", "16", "32"), ("--optimizer", "adam", "sgd"), ("--seed", "1", "0")],
)
def test_resume_refuses_arguments_that_contradict_the_checkpoint(
    tmp_path, capsys, flag, value, saved
):
    path = str(tmp_path / "run.ckpt")
    assert _main("train", *LENET, "--epochs", "1", "--checkpoint", path) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, "train", "train", "--resume", path, "--epochs", "2", flag, value)
    assert f"{flag} {value} contradicts" in err and f"{flag} {saved}" in err


def test_resume_refuses_another_model_and_a_finished_run(tmp_path, capsys):
    path = str(tmp_path / "run.ckpt")
    assert _main("train", *LENET, "--epochs", "1", "--checkpoint", path) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, "train", "train", "alexnet", "--resume", path, "--epochs", "2")
    assert "model alexnet contradicts" in err and "lenet5" in err
    err = _one_line_error(capsys, "train", "train", "--resume", path, "--epochs", "1")
    assert "already trained 1 epochs" in err


# **** divergence ****


def test_divergence_stops_with_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    path = tmp_path / "run.ckpt"
    assert _main("train", *LENET, "--epochs", "1", "--checkpoint", str(path)) == 0
    good = path.read_bytes()
    capsys.readouterr()
    # a new run that diverges in its first epoch, writing to the same file
    status = _main("train", *LENET, "--lr", "1e30", "--epochs", "2", "--checkpoint", str(path))
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert "diverged at epoch 1, step" in err and "keeps the last good epoch" in err
    assert path.read_bytes() == good


# **** one-line errors ****


def test_user_mistakes_give_one_line_and_status_2(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x10\0\0\0\0\0\0\0not a checkpoint")
    not_dir = tmp_path / "file"
    not_dir.write_text("")
    cases = [
        ("train", ["train", "lenet6"], "unknown model 'lenet6'; did you mean lenet5"),
        ("train", ["train", *LENET, "--data", str(tmp_path / "nope")], "nope"),
        ("train", ["train", *LENET, "--epochs", "0"], "--epochs: must be >= 1"),
        ("train", ["train", *LENET, "--lr", "fast"], "expected float, but got 'fast'"),
        ("train", ["train", *LENET, "--checkpoint", f"{not_dir}/x.ckpt"], "does not exist"),
        ("train", ["train", *LENET, "--checkpoint", str(tmp_path)], "is a directory"),
        ("train", ["train", *LENET, "--resume", str(tmp_path / "none")], "does not exist"),
        ("train", ["train", *LENET, "--resume", str(corrupt)], "not a ConvForge checkpoint"),
        ("train", ["train"], "which model?"),
        ("eval", ["eval", "--checkpoint", str(corrupt)], "not a ConvForge checkpoint"),
        ("eval", ["eval", "lenet5"], "--checkpoint"),
        ("summary", ["summary", "lenet5", "--input", "1x4x4"], "features.3: conv2d"),
        ("summary", ["summary", "lenet5", "--input", "32x32"], "CxHxW"),
        ("memory", ["memory", "lenet5", "--recompute", "sqrt"], "--train"),
        ("memory", ["memory", "resnet"], "unknown model 'resnet'"),
        ("warmup", ["warmup", "--jobs", "-1"], "--jobs: must be >= 1"),
    ]
    for command, argv, expected in cases:
        err = _one_line_error(capsys, command, *argv)
        assert expected in err, (argv, err)


def test_unwritable_checkpoint_folder_is_found_before_training(tmp_path, capsys):
    # /sys refuses new files even to root (CI runs as root, who ignores permission bits)
    err = _one_line_error(capsys, "train", "train", *LENET, "--checkpoint", "/sys/run.ckpt")
    assert "cannot write in /sys (Permission denied)" in err


def test_installed_command_prints_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "train", "lenet5", "--data", "/no/such/dir"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "CONVFORGE_TRACEBACK"},
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# **** --version, help, --json ****


def test_version(capsys):
    assert _main("--version") == 0
    assert capsys.readouterr().out.startswith("convforge 0.")


def test_every_flag_has_help_and_shows_its_default():
    parser = cli.parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"convforge {name} {action.option_strings or action.dest}"
        text = sub.format_help()
        if name == "train":
            for default in ("(default: digits)", "(default: 64)", "(default: 0)", "(default: 5)"):
                assert default in " ".join(text.split()), default


def test_zoo_says_where_a_model_departs_from_torchvision(capsys, monkeypatch):
    import zoo

    shown = ["googlenet", "lenet5", "resnet18_cifar"]  # building all 44 takes a minute
    monkeypatch.setattr(zoo, "names", lambda: shown)
    assert _main("zoo", "--json") == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert list(models) == shown
    googlenet = models["googlenet"]
    assert googlenet["parameters"] == googlenet["torchvision_parameters"] == 13_004_888
    assert googlenet["departs"] is None
    assert models["resnet18_cifar"]["torchvision"] == "resnet18"
    assert "CIFAR" in models["resnet18_cifar"]["departs"]
    assert "not in torchvision" in models["lenet5"]["departs"]
    assert _main("zoo") == 0
    table = capsys.readouterr().out
    assert "= torchvision.models.googlenet()" in table and "CIFAR" in table


def test_train_json_is_one_object_on_stdout(capsys):
    assert _main("train", *LENET, "--epochs", "2", "--json") == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert [e["epoch"] for e in report["epochs"]] == [0, 1]
    assert report["arguments"]["batch"] == 32 and "epoch 2" in err


def test_checkpoint_without_run_arguments_cannot_be_resumed(tmp_path):
    """A checkpoint saved by hand, without the run's arguments, cannot be resumed exactly."""
    path = tmp_path / "hand.ckpt"
    save_checkpoint(path, {"w": np.zeros(2, np.float32)}, {"model": "lenet5"})
    assert _main("train", "--resume", str(path), "--epochs", "2") == 2
