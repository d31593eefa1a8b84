"""Serve a saved model's predictions: ``python examples/serve.py MODEL [--top K] [IMAGE...]``.

Loads a model written by ``convforge.save`` once, then answers each image path, given as
arguments or read from stdin one a line, with one JSON line:
``{"image": PATH, "top": [{"index": 3, "probability": 0.91}, ...]}``, most probable first,
or ``{"image": PATH, "error": REASON}`` for a file it cannot read (a server keeps going).
Answers to stdin are flushed one by one, so another program can keep this one running as a
worker and talk to it through a pipe.

Images are prepared as ``convforge predict`` prepares them for a saved model, which records no
normalisation: converted to the model's channels (grayscale or RGB), resized to its height and
width, scaled to [0, 1]. Each runs alone, the rest of the batch zero-padded, so save the model
compiled with ``batch=1`` for the least work per image. Probabilities are the softmax of the
model's outputs (its logits).

It imports ``convforge`` and nothing else of ConvForge: that is what the example shows.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from PIL import Image

import convforge


def prepare(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """The image at ``path`` as float32 [C, H, W] in [0, 1] for an input of ``shape``."""
    channels, height, width = shape
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def answer(exe: convforge.Executable, path: str, top: int) -> dict:
    """One image's ``top`` classes, or the reason it could not be read."""
    try:
        pixels = prepare(path, exe.input_shape[1:])
    except OSError as error:
        return {"image": path, "error": error.strerror or str(error)}
    batch = np.zeros(exe.input_shape, exe.dtype)
    batch[0] = pixels
    logits = exe.run(batch)[0].astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:top]
    ranked = [{"index": int(i), "probability": float(probabilities[i])} for i in order]
    return {"image": path, "top": ranked}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a file written by convforge.save")
    parser.add_argument("images", nargs="*", help="image files (default: paths on stdin)")
    parser.add_argument("--top", type=int, default=5, help="classes per image")
    args = parser.parse_args()
    exe = convforge.load(args.model).eval()
    paths = args.images or (line.strip() for line in sys.stdin if line.strip())
    for path in paths:
        print(json.dumps(answer(exe, path, args.top)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
