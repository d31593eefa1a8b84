"""``convforge predict [MODEL] --checkpoint C IMAGE...``: the most probable classes of images.

C is one of two files, told apart by their metadata:

- a checkpoint of ``convforge train``. It records the zoo model and its arguments, the input
  shape and the normalisation fitted on the training split (``mean``, ``std``), so each image is
  prepared as the run's images were: decoded with Pillow, converted to grayscale or RGB for the
  model's channels, resized (bilinear) to the model's height and width, scaled to [0, 1], then
  normalised with the run's statistics. MODEL, when given, must be the checkpoint's (as in
  ``eval``). The model is compiled for inference with a batch of at most the run's.
- a model written by ``engine.save``. Its graph needs no zoo model, so MODEL must be left out:
  a given one is refused, not ignored, since nothing in the file could confirm it. Such a file
  records no normalisation, so its images go in scaled to [0, 1] only, the convention of every
  loader in ``engine.data``; it runs at the batch it was saved with.

Class names: a checkpoint records the run's data (``arguments["data"]``), not the names, so
they are derived as the loaders name them (``_data_classes``): digits and MNIST by digit,
Fashion-MNIST and CIFAR-10 by their published names, an image folder by its class sub-folders
(when it is still there). A saved model, an IDX folder, or names whose count differs from the
model's outputs give class indices instead.

Probabilities are the softmax of the model's outputs, the logits as the cross-entropy loss of
``convforge train`` reads them. Images are decoded before the model is compiled, so a missing
or unreadable one stops the command at once, naming the file.
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

import engine
import zoo
from engine.checkpoint import load_checkpoint
from engine.cli_training import UsageError
from engine.data import CIFAR10_CLASSES, DIGIT_CLASSES, FASHION_MNIST_CLASSES, Normalize
from engine.executable import Executable
from engine.train import load_weights

# Pillow's modes for the channel counts a model may take.
_MODES = {1: "L", 3: "RGB"}


def predict(args: argparse.Namespace) -> int:
    """``convforge predict``: check every input, compile, run in batches, print the top ``k``."""
    model, images = _split_model(args.inputs)
    if not images:
        raise UsageError("no images given: convforge predict [MODEL] --checkpoint C IMAGE...")
    if not Path(args.checkpoint).is_file():
        raise UsageError(f"checkpoint {args.checkpoint} does not exist")
    meta = load_checkpoint(args.checkpoint)[1]
    if "saved_model" in meta:
        if model is not None:
            raise UsageError(
                f"{args.checkpoint} is a saved model (engine.save), which holds its own graph; "
                f"leave the model {model} out"
            )
        exe, norm, classes = engine.load(args.checkpoint).eval(), None, None
        x = np.stack([_read_image(path, exe.input_shape[1:]) for path in images])
    else:
        shape, norm, classes = _training_run(args.checkpoint, meta, model)
        x = np.stack([_read_image(path, shape) for path in images])
        exe = _compile_run(args.checkpoint, meta, len(images))
    probabilities = _softmax(_run_all(exe, x if norm is None else norm(x)))
    if classes is not None and len(classes) != probabilities.shape[1]:
        classes = None
    top = [_top(row, args.top, classes) for row in probabilities]
    if args.json:
        predictions = [{"image": path, "top": t} for path, t in zip(images, top, strict=True)]
        report = {"checkpoint": args.checkpoint, "model": meta.get("model")}
        print(json.dumps({**report, "predictions": predictions}))
        return 0
    for path, rows in zip(images, top, strict=True):
        print(path)
        for row in rows:
            print(f"  {row['probability']:.4f}  {row['name'] or row['index']}")
    return 0


def _split_model(inputs: list[str]) -> tuple[str | None, list[str]]:
    """(MODEL, images): the first word is the model when it names one and no file has that
    name; argparse cannot tell an optional positional from the images that follow it."""
    first = inputs[0]
    if first in zoo.names() and not Path(first).exists():
        return first, inputs[1:]
    return None, inputs


def _training_run(
    path: str, meta: dict, model: str | None
) -> tuple[tuple[int, ...], Normalize, tuple[str, ...] | None]:
    """Input shape, normalisation and class names recorded by a ``convforge train`` run."""
    if not {"model", "model_args", "input_shape", "arguments", "mean", "std"} <= set(meta):
        raise UsageError(
            f"{path} is neither a checkpoint of convforge train nor a saved model (engine.save)"
        )
    if model is not None and model != meta["model"]:
        raise UsageError(
            f"model {model} contradicts the checkpoint {path}, which holds {meta['model']}; "
            "leave the model out to use the checkpoint's"
        )
    norm = Normalize(np.array(meta["mean"], np.float32), np.array(meta["std"], np.float32))
    return tuple(meta["input_shape"]), norm, _data_classes(meta["arguments"]["data"])


def _compile_run(path: str, meta: dict, count: int) -> Executable:
    """A training run's model compiled for inference on ``count`` images (at most the run's
    batch at once), holding the checkpoint's weights."""
    run = meta["arguments"]
    exe = engine.compile(
        zoo.get(meta["model"], **meta["model_args"]),
        meta["input_shape"],
        batch=min(count, run["batch"]),
        dtype=run["dtype"],
    )
    load_weights(path, exe)
    return exe


def _data_classes(data: str) -> tuple[str, ...] | None:
    """The class names ``engine.data.load_dataset(data)`` gives, found without loading it;
    None where the loader numbers the classes or the folder is gone. CIFAR-10's are the
    published ten (a folder's ``batches.meta.txt`` may rename them; the count still holds)."""
    name, colon, _ = data.partition(":")
    if data == "digits" or (colon and name == "mnist"):
        return DIGIT_CLASSES
    if name == "fashion-mnist":
        return FASHION_MNIST_CLASSES
    if colon and name == "cifar10":
        return CIFAR10_CLASSES
    root = Path(data)
    if (root / "train").is_dir() and any((root / s).is_dir() for s in ("test", "val")):
        root = root / "train"  # train/ and test/ (or val/) image folders share their classes
    if not root.is_dir() or any(p.is_file() and "idx" in p.name for p in root.iterdir()):
        return None  # gone, or IDX files, whose classes the loader numbers
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    return tuple(folders) or None


def _read_image(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """``path`` as float32 [C, H, W] in [0, 1] for a model input of ``shape`` (C, H, W)."""
    channels, height, width = shape
    if channels not in _MODES:
        raise UsageError(
            f"the model takes {channels} channels, but predict reads grayscale (1) or RGB (3) "
            "images only"
        )
    try:
        with Image.open(path) as image:
            image = image.convert(_MODES[channels])
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    except UnidentifiedImageError:
        raise UsageError(f"cannot read image {path}: not an image format Pillow knows") from None
    except OSError as error:  # missing, a folder, unreadable, truncated
        reason = error.strerror or str(error)
        close = difflib.get_close_matches(path, zoo.names(), n=1, cutoff=0.75)
        hint = f"; did you mean the model {close[0]}?" if close and not Path(path).exists() else ""
        raise UsageError(f"cannot read image {path}: {reason}{hint}") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _run_all(exe: Executable, x: np.ndarray) -> np.ndarray:
    """Outputs for every image: batches of the compiled size, the last one padded with zeros
    (eval mode treats each image alone, so padding changes no result)."""
    batch = exe.input_shape[0]
    outputs = []
    for start in range(0, len(x), batch):
        chunk = np.zeros(exe.input_shape, exe.dtype)
        part = x[start : start + batch]
        chunk[: len(part)] = part
        outputs.append(exe.run(chunk)[: len(part)])
    return np.concatenate(outputs).reshape(len(x), -1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _top(probabilities: np.ndarray, k: int, classes: tuple[str, ...] | None) -> list[dict]:
    """The ``k`` most probable classes, most probable first (ties: the lower index first)."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        {
            "index": int(i),
            "name": classes[i] if classes else None,
            "probability": float(probabilities[i]),
        }
        for i in order
    ]
