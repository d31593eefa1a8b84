"""``convforge train --log curves.csv`` and ``convforge plot``: rows as the --json report gives
them, kept across a resume, and a picture; bad files give one line and status 2."""

from __future__ import annotations

import shutil
import sys

import pytest

from engine.analysis.curves import COLUMNS, read_curves
from engine.checkpoint import load_checkpoint
from tests.analysis.conftest import assert_picture, main


def _as_row(epoch: dict) -> dict:
    return {**{key: epoch[key] for key in COLUMNS}, "epoch": epoch["epoch"] + 1}


def test_log_has_one_row_per_epoch_as_the_json_report(trained):
    rows = read_curves(trained.curves)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for row, epoch in zip(rows, trained.epochs, strict=True):
        assert row == pytest.approx(_as_row(epoch), rel=1e-15)
    # the checkpoint records the same history (for convforge report)
    history = load_checkpoint(trained.checkpoint)[1]["history"]
    assert history == pytest.approx(rows, rel=1e-15)


def test_resumed_run_logs_the_earlier_epochs_too(trained, tmp_path):
    checkpoint, curves = tmp_path / "run.ckpt", tmp_path / "resumed.csv"
    shutil.copy(trained.checkpoint, checkpoint)
    argv = ["--resume", str(checkpoint), "--epochs", "4", "--checkpoint", str(checkpoint)]
    assert main("train", *argv, "--log", str(curves), "--no-progress") == 0
    rows = read_curves(curves)
    assert rows[:3] == read_curves(trained.curves) and rows[3]["epoch"] == 4
    assert len(load_checkpoint(str(checkpoint))[1]["history"]) == 4


def test_plot_draws_the_curves(trained, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert main("plot", trained.curves, "--out", str(out)) == 0
    assert "3 epochs" in capsys.readouterr().out
    assert_picture(out, (800, 200))


def test_bad_curves_files_give_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,loss\n1,2\n")
    assert main("plot", str(bad), "--out", str(tmp_path / "x.png")) == 2
    assert "header must be epoch,train_loss" in capsys.readouterr().err
    bad.write_text(",".join(COLUMNS) + "\n1,0.5,nan?,1,1,0.1,2\n")
    assert main("plot", str(bad), "--out", str(tmp_path / "x.png")) == 2
    err = capsys.readouterr().err
    assert "line 2: expected 7 numbers" in err and len(err.strip().splitlines()) == 1
    assert main("plot", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x.png")) == 2
    assert main("plot", str(bad), "--out", str(tmp_path / "no" / "x.png")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_without_matplotlib_a_picture_command_says_how_to_get_it(
    trained, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    assert main("plot", trained.curves, "--out", str(tmp_path / "x.png")) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "convforge plot: error: pictures need matplotlib: pip install 'convforge[plot]' "
        "(or pip install matplotlib)"
    )
    assert not (tmp_path / "x.png").exists()


def test_unwritable_log_folder_is_found_before_training(trained, tmp_path, capsys):
    argv = ["train", "lenet5", "--data", trained.data, "--batch", "4", "--no-progress"]
    assert main(*argv, "--log", str(tmp_path / "gone" / "curves.csv")) == 2
    err = capsys.readouterr().err
    assert err.startswith("convforge train: error: --log ") and "does not exist" in err
