"""``convforge predict``: top classes of image files from a ``convforge train`` checkpoint (the
run's normalisation and class names) or an ``engine.save`` file, checked against ``exe.run``'s
softmax, and its one-line errors. One LeNet-5 is trained on digits for one epoch per module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

import engine
from engine import cli
from engine.checkpoint import load_checkpoint
from engine.cli_predict import _data_classes
from engine.data import CIFAR10_CLASSES, DIGIT_CLASSES, FASHION_MNIST_CLASSES, load_digits


def _main(*argv: str) -> int:
    try:
        return cli.main(list(argv))
    except SystemExit as exit_:
        return exit_.code


def _predict_json(capsys, *argv: str) -> dict:
    assert _main("predict", *argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _run_padded(exe, x: np.ndarray) -> np.ndarray:
    batch = np.zeros(exe.input_shape, exe.dtype)
    batch[: len(x)] = x
    return exe.run(batch)[: len(x)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A LeNet-5 checkpoint trained on digits (28x28 inputs, batch 32) for one epoch."""
    path = tmp_path_factory.mktemp("run") / "lenet.ckpt"
    argv = ["train", "lenet5", "--data", "digits", "--batch", "32", "--epochs", "1"]
    assert _main(*argv, "--no-progress", "--checkpoint", str(path)) == 0
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[list[str], np.ndarray]:
    """Four digits as 28x28 grayscale PNGs, and their pixels in [0, 1] as [4, 1, 28, 28]."""
    folder = tmp_path_factory.mktemp("images")
    x, _ = load_digits()
    pixels = scipy.ndimage.zoom(x[:4, 0], (1, 3.5, 3.5), order=1).clip(0, 1)
    pixels = np.round(pixels * 255).astype(np.uint8)
    paths = []
    for i, image in enumerate(pixels):
        paths.append(str(folder / f"digit{i}.png"))
        Image.fromarray(image, "L").save(paths[-1])
    return paths, (pixels[:, None] / np.float32(255.0)).astype(np.float32)


def _expected(run: Path, pixels: np.ndarray) -> np.ndarray:
    """The oracle: the checkpoint's model on the run's normalised pixels, through softmax."""
    meta = load_checkpoint(run)[1]
    shape = (1, -1, 1, 1)
    x = (pixels - np.reshape(meta["mean"], shape)) / np.reshape(meta["std"], shape)
    return _softmax(_run_padded(engine.load(run), x.astype(np.float32)).astype(np.float64))


def test_top5_are_the_softmax_of_the_model_sorted_and_named(run, digits, capsys):
    paths, pixels = digits
    report = _predict_json(capsys, "--checkpoint", str(run), *paths)
    assert report["model"] == "lenet5" and [p["image"] for p in report["predictions"]] == paths
    expected = _expected(run, pixels)
    for prediction, probabilities in zip(report["predictions"], expected, strict=True):
        top = prediction["top"]
        got = [row["probability"] for row in top]
        assert len(top) == 5 and got == sorted(got, reverse=True) and sum(got) <= 1 + 1e-9
        assert [row["index"] for row in top] == list(np.argsort(-probabilities)[:5])
        np.testing.assert_allclose(got, np.sort(probabilities)[::-1][:5], rtol=1e-5)
        assert [row["name"] for row in top] == [DIGIT_CLASSES[row["index"]] for row in top]


def test_model_may_come_first_and_top_k(run, digits, capsys):
    paths, _ = digits
    plain = _predict_json(capsys, "--checkpoint", str(run), *paths)
    named = _predict_json(capsys, "lenet5", "--checkpoint", str(run), *paths, "--top", "3")
    for full, short in zip(plain["predictions"], named["predictions"], strict=True):
        assert short["top"] == full["top"][:3]


def test_text_output_lists_each_image_and_its_classes(run, digits, capsys):
    paths, _ = digits
    assert _main("predict", "--checkpoint", str(run), paths[0], "--top", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == paths[0] and len(lines) == 3
    probability, name = lines[1].split()
    assert 0 < float(probability) <= 1 and name in DIGIT_CLASSES


def test_rgb_images_of_other_sizes_are_converted_and_resized(run, tmp_path, capsys):
    """A constant grey image stays that grey through RGB -> L and any bilinear resize."""
    rgb, gray = str(tmp_path / "rgb.png"), str(tmp_path / "gray.png")
    Image.new("RGB", (50, 37), (90, 90, 90)).save(rgb)
    Image.new("L", (28, 28), 90).save(gray)
    report = _predict_json(capsys, "--checkpoint", str(run), rgb, gray)
    first, second = (p["top"] for p in report["predictions"])
    assert [r["index"] for r in first] == [r["index"] for r in second]
    np.testing.assert_allclose(
        [r["probability"] for r in first], [r["probability"] for r in second], rtol=1e-6
    )


def test_a_saved_model_predicts_from_unnormalised_pixels(run, digits, tmp_path, capsys):
    paths, pixels = digits
    exe = engine.load(run)
    saved = str(tmp_path / "lenet.cf")
    engine.save(exe, saved)
    report = _predict_json(capsys, "--checkpoint", saved, *paths)
    expected = _softmax(_run_padded(exe, pixels).astype(np.float64))
    assert report["model"] is None
    for prediction, probabilities in zip(report["predictions"], expected, strict=True):
        assert [row["name"] for row in prediction["top"]] == [None] * 5  # indices only
        assert [row["index"] for row in prediction["top"]] == list(np.argsort(-probabilities)[:5])
        got = [row["probability"] for row in prediction["top"]]
        np.testing.assert_allclose(got, np.sort(probabilities)[::-1][:5], rtol=1e-5)


def test_class_names_of_an_image_folder_run(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name, level in (("cat", 40), ("dog", 200)):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(5):
            noise = rng.integers(-30, 30, (12, 12, 3))
            image = np.clip(level + noise, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / "data" / name / f"{i}.png")
    path = str(tmp_path / "run.ckpt")
    argv = ["--data", str(tmp_path / "data"), "--batch", "4", "--epochs", "1", "--no-progress"]
    assert _main("train", "lenet5", *argv, "--checkpoint", path) == 0
    capsys.readouterr()
    report = _predict_json(capsys, "--checkpoint", path, str(tmp_path / "data" / "dog" / "0.png"))
    top = report["predictions"][0]["top"]
    assert sorted(row["name"] for row in top) == ["cat", "dog"]  # two classes: two rows


def test_class_names_follow_the_loaders(tmp_path):
    (tmp_path / "flat" / "b").mkdir(parents=True)
    (tmp_path / "flat" / "a").mkdir()
    (tmp_path / "split" / "train" / "x").mkdir(parents=True)
    (tmp_path / "split" / "val").mkdir()
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "train-images-idx3-ubyte").write_bytes(b"")
    assert _data_classes("digits") == _data_classes("mnist:/m") == DIGIT_CLASSES
    assert _data_classes("fashion-mnist") == _data_classes("fashion-mnist:/f")
    assert _data_classes("fashion-mnist") == FASHION_MNIST_CLASSES
    assert _data_classes("cifar10:/c") == CIFAR10_CLASSES
    assert _data_classes(str(tmp_path / "flat")) == ("a", "b")
    assert _data_classes(str(tmp_path / "split")) == ("x",)
    assert _data_classes(str(tmp_path / "idx")) is None
    assert _data_classes(str(tmp_path / "gone")) is None


def test_mistakes_give_one_line_and_status_2(run, digits, tmp_path, capsys):
    paths, _ = digits
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x10\0\0\0\0\0\0\0not a checkpoint")
    saved = str(tmp_path / "lenet.cf")
    engine.save(engine.load(run), saved)
    missing = str(tmp_path / "missing.png")
    ckpt = ["--checkpoint", str(run)]
    cases = [
        ([*ckpt, paths[0], missing], f"cannot read image {missing}: No such file or directory"),
        ([*ckpt, str(not_image)], f"cannot read image {not_image}: not an image format"),
        ([*ckpt, str(tmp_path)], f"cannot read image {tmp_path}: Is a directory"),
        ([*ckpt, "lenet", paths[0]], "did you mean the model lenet5?"),
        (["resnet18", *ckpt, paths[0]], "model resnet18 contradicts the checkpoint"),
        (["lenet5", *ckpt], "no images given"),
        (["--checkpoint", str(tmp_path / "none.ckpt"), paths[0]], "none.ckpt does not exist"),
        (["--checkpoint", str(corrupt), paths[0]], "not a ConvForge checkpoint"),
        (["lenet5", "--checkpoint", saved, paths[0]], "leave the model lenet5 out"),
        ([*ckpt, paths[0], "--top", "0"], "--top: must be >= 1"),
    ]
    for argv, expected in cases:
        assert _main("predict", *argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1, (argv, err)
        assert err.startswith("convforge predict: error: ") and expected in err, (argv, err)
