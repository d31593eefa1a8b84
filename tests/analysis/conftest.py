"""A tiny trained run shared by the analysis tests: two classes of 12x12 RGB images in an image
folder (dark and bright, with noise), LeNet-5 trained 3 epochs with ``--log``, ``--checkpoint``
and ``--json``, and a second run (another seed, 1 epoch) to interpolate to."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import cli


def main(*argv: str) -> int:
    """``cli.main`` with argparse's own exits turned into return codes."""
    try:
        return cli.main(list(argv))
    except SystemExit as exit_:
        return exit_.code


@dataclass(frozen=True)
class Run:
    root: Path
    data: str
    checkpoint: str
    other: str
    curves: str
    epochs: list[dict]  # the epochs of the --json report


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    for name, level in (("dark", 40), ("bright", 200)):
        (root / "data" / name).mkdir(parents=True)
        for i in range(12):
            noise = rng.integers(-60, 60, (12, 12, 3))
            image = np.clip(level + noise, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "data" / name / f"{i}.png")
    data, checkpoint = str(root / "data"), str(root / "run.ckpt")
    curves, other = str(root / "curves.csv"), str(root / "other.ckpt")
    argv = ["train", "lenet5", "--data", data, "--batch", "4", "--no-progress"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        logged = ["--checkpoint", checkpoint, "--log", curves, "--json"]
        assert main(*argv, "--epochs", "3", *logged) == 0
        assert main(*argv, "--epochs", "1", "--seed", "1", "--checkpoint", other) == 0
    epochs = json.loads(out.getvalue().splitlines()[0])["epochs"]
    return Run(root, data, checkpoint, other, curves, epochs)


def assert_picture(path: str | Path, min_size: tuple[int, int] = (200, 150)) -> np.ndarray:
    """A PNG that opens, is at least ``min_size`` and is not blank (some pixels far from the
    background colour); returns its pixels."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.shape[1] >= min_size[0] and pixels.shape[0] >= min_size[1], pixels.shape
    background = np.median(pixels.reshape(-1, 3), axis=0)
    assert (np.abs(pixels - background).sum(axis=2) > 100).mean() > 0.01, f"{path} is blank"
    return pixels
