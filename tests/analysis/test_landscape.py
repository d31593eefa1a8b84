"""Loss landscapes: filter-normalised directions, the grid against losses computed here from
the same weights, the line between two checkpoints against each checkpoint's own loss, the
command's PNG and CSV."""

from __future__ import annotations

import numpy as np

from engine.analysis.landscape import (
    filter_normalized_direction,
    interpolate,
    landscape,
    landscape_csv,
    trainable,
)
from engine.analysis.run import load_run
from engine.checkpoint import load_checkpoint
from tests.analysis.conftest import assert_picture, main


def _loss(exe, data, norm) -> float:
    """Mean cross-entropy in float64, computed here from the logits."""
    x = norm(data.x)
    logits = np.concatenate([exe.run(x[i : i + 1]) for i in range(len(x))]).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(x)), data.y].mean())


def test_directions_are_filter_normalised_and_skip_1d_tensors():
    rng = np.random.default_rng(0)
    weights = {
        "conv.weight": rng.standard_normal((5, 3, 3, 3)) * np.arange(1, 6)[:, None, None, None],
        "fc.weight": rng.standard_normal((4, 7)),
        "bn.weight": rng.standard_normal(5),
    }
    direction = filter_normalized_direction(weights, rng)
    for name in ("conv.weight", "fc.weight"):
        w, d = weights[name], direction[name]
        axes = tuple(range(1, w.ndim))
        np.testing.assert_allclose(
            np.sqrt((d**2).sum(axis=axes)), np.sqrt((w**2).sum(axis=axes)), rtol=1e-12
        )
        assert not np.allclose(d / np.linalg.norm(d), w / np.linalg.norm(w))  # random, not w
    assert not direction["bn.weight"].any()


def test_grid_losses_are_those_of_the_moved_weights(trained):
    run = load_run(trained.checkpoint, batch=1, samples=5)
    exe, names = run.exe, trainable(run.exe)
    assert "features.0.weight" in names
    center = {name: exe.params[name].copy() for name in exe.params}
    result = landscape(exe, run.test, run.norm, grid=3, span=0.5, dims=2, seed=7, progress=False)
    assert result.loss.shape == result.accuracy.shape == (3, 3)
    for name, array in exe.params.items():  # the trained weights are back
        np.testing.assert_array_equal(array, center[name])
    assert abs(result.loss[1, 1] - _loss(exe, run.test, run.norm)) < 1e-5
    rng = np.random.default_rng(7)  # the same draws: direction 1, then 2
    trained_weights = {name: center[name] for name in names}
    d1 = filter_normalized_direction(trained_weights, rng)
    d2 = filter_normalized_direction(trained_weights, rng)
    exe.set_tensors({n: center[n] + 0.5 * d1[n] - 0.5 * d2[n] for n in names})
    assert abs(result.loss[2, 0] - _loss(exe, run.test, run.norm)) < 1e-5
    lines = landscape_csv(result).splitlines()
    assert lines[0] == "alpha,beta,loss,accuracy" and len(lines) == 10
    assert [float(v) for v in lines[7].split(",")[:3]] == [
        0.5,
        -0.5,
        float(f"{result.loss[2, 0]:.9g}"),
    ]


def test_one_dimensional_landscape_is_a_curve_through_the_trained_loss(trained):
    run = load_run(trained.checkpoint, batch=1, samples=5)
    result = landscape(run.exe, run.test, run.norm, grid=5, span=1.0, dims=1, progress=False)
    assert result.betas is None and result.loss.shape == (5,)
    assert abs(result.loss[2] - _loss(run.exe, run.test, run.norm)) < 1e-5
    lines = landscape_csv(result).splitlines()
    assert lines[0] == "alpha,loss,accuracy" and lines[1].startswith("-1,")


def test_interpolation_ends_at_each_checkpoints_own_loss(trained):
    run = load_run(trained.checkpoint, batch=1, samples=5)
    other = load_run(trained.other, batch=1, samples=5, with_data=False)
    start, end = load_checkpoint(trained.checkpoint)[0], other.exe.params
    result = interpolate(run.exe, run.test, run.norm, start, end, steps=5, progress=False)
    np.testing.assert_allclose(result.alphas, [-0.5, 0.0, 0.5, 1.0, 1.5])
    assert abs(result.loss[1] - _loss(run.exe, run.test, run.norm)) < 1e-5
    assert abs(result.loss[3] - _loss(other.exe, run.test, run.norm)) < 1e-5
    assert abs(result.loss[1] - result.loss[3]) > 1e-3  # two different models


def test_landscape_command_writes_png_and_csv(trained, tmp_path, capsys):
    out = tmp_path / "landscape.png"
    argv = ["--checkpoint", trained.checkpoint, "--grid", "3", "--samples", "5", "--no-progress"]
    assert main("landscape", *argv, "--out", str(out)) == 0
    assert "9 points on 5 images" in capsys.readouterr().out
    assert_picture(out, (600, 250))
    assert len((tmp_path / "landscape.csv").read_text().splitlines()) == 10
    line = tmp_path / "line.png"
    argv += ["--interpolate", trained.other, "--csv", str(tmp_path / "t.csv")]
    assert main("landscape", "lenet5", *argv, "--out", str(line)) == 0
    assert_picture(line)
    assert (tmp_path / "t.csv").read_text().startswith("t,loss,accuracy\n")


def test_landscape_mistakes_give_one_line(trained, tmp_path, capsys):
    argv = ["--checkpoint", trained.checkpoint, "--out", str(tmp_path / "x.png")]
    assert main("landscape", "resnet20_cifar", *argv) == 2
    assert "contradicts the checkpoint" in capsys.readouterr().err
    assert main("landscape", "--checkpoint", str(tmp_path / "none"), "--out", "x.png") == 2
    assert "does not exist" in capsys.readouterr().err
    assert main("landscape", *argv, "--grid", "1") == 2
    assert main("landscape", *argv[:2], "--out", str(tmp_path / "no" / "x.png")) == 2
