"""``convforge features``, ``memory --plot`` and ``report``: the pictures open and are not
blank, the feature maps are the captured activations, and the report is one self-contained
page that headless Chromium renders without errors."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from engine.analysis.features import activation_layers, activations
from engine.analysis.run import load_run
from engine.cli_predict import _read_image
from tests.analysis.conftest import assert_picture, main


def test_features_writes_filters_and_one_grid_per_activation(trained, tmp_path, capsys):
    image = f"{trained.data}/bright/0.png"
    out = tmp_path / "features"
    assert (
        main("features", "--checkpoint", trained.checkpoint, "--image", image, "--out", str(out))
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == ["01_features.1.png", "02_features.4.png", "filters.png"]
    for name in names:
        assert_picture(out / name, (150, 100))
    assert "wrote 3 pictures" in capsys.readouterr().out


def test_feature_maps_are_the_relu_outputs_of_the_image(trained):
    run = load_run(trained.checkpoint, with_data=False)
    image = run.norm(_read_image(f"{trained.data}/dark/1.png", (3, 28, 28))[None])[0]
    names = activation_layers(run.exe)
    maps = activations(run.exe, image, names)
    assert names == ["features.1", "features.4"]
    assert maps["features.1"].shape == (6, 28, 28) and maps["features.4"].shape == (16, 10, 10)
    # the first ReLU by hand: correlate with each filter (padding 2), add the bias, clip at 0
    weight, bias = run.exe.params["features.0.weight"], run.exe.params["features.0.bias"]
    padded = np.pad(image.astype(np.float64), ((0, 0), (2, 2), (2, 2)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(1, 2))
    conv = np.einsum("chwij,ocij->ohw", windows, weight) + bias[:, None, None]
    np.testing.assert_allclose(maps["features.1"], np.maximum(conv, 0), rtol=1e-4, atol=1e-5)


def test_features_names_the_capturable_values_for_a_bad_layer(trained, tmp_path, capsys):
    argv = ["--checkpoint", trained.checkpoint, "--image", f"{trained.data}/dark/0.png"]
    assert main("features", *argv, "--layers", "conv9", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "['conv9'] not computed" in err and "features.0, features.1" in err
    assert main("features", *argv, "--layers", "flatten", "--out", str(tmp_path)) == 2
    assert "feature maps need a [N, C, H, W] value" in capsys.readouterr().err


def test_memory_plot_draws_the_plan(tmp_path, capsys):
    out = tmp_path / "plan.png"
    assert main("memory", "lenet5", "--train", "--plot", str(out)) == 0
    assert "arena / lower bound" in capsys.readouterr().out
    assert_picture(out, (600, 300))
    assert main("memory", "lenet5", "--plot", str(tmp_path / "no" / "plan.png")) == 2


def _chromium(page: str, tmp_path) -> tuple[np.ndarray, str]:
    """Render ``page`` in headless Chromium: the screenshot's pixels and the browser's log."""
    shot = tmp_path / "shot.png"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--window-size=1200,2400", f"--screenshot={shot}",
    ]  # fmt: skip
    done = subprocess.run(
        ["chromium", *flags, f"file://{page}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(shot) as image:
        return np.asarray(image.convert("RGB")).astype(int), done.stderr


@pytest.mark.slow  # starts a browser: 2 s alone, 8 s on a busy machine
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)"
)
def test_report_is_self_contained_and_renders_in_chromium(trained, tmp_path, capsys):
    out = tmp_path / "report.html"
    argv = ["--checkpoint", trained.checkpoint, "--samples", "5", "--grid", "3"]
    assert main("report", *argv, "--out", str(out), "--no-progress") == 0
    page = out.read_text()
    for section in (
        "Summary",
        "Memory plan",
        "Training curves",
        "Loss landscape",
        "Shift-invariance",
        "Graph (inference plan)",
    ):
        assert f"<h2>{section}</h2>" in page
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:  # every inlined picture decodes and is not blank
        assert_picture(io.BytesIO(base64.b64decode(source.split(",", 1)[1])), (300, 150))
    assert "http" not in page and "<script" not in page
    pixels, log = _chromium(str(out), tmp_path)
    assert not re.findall(r":CONSOLE.*", log)
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 60  # the plots, not text
    assert colourful.mean() > 0.02, f"only {colourful.mean():.3%} of the screenshot is plots"


def test_report_of_a_model_alone(tmp_path):
    out = tmp_path / "report.html"
    assert main("report", "lenet5", "--out", str(out)) == 0
    page = out.read_text()
    assert "<h2>Memory plan</h2>" in page and "<h2>Loss landscape</h2>" not in page
    assert "conv2d" in page and page.count("data:image/png;base64,") == 1
    assert main("report", "--out", str(out)) == 2
    assert main("report", "lenet5", "--data", "digits", "--out", str(out)) == 2
