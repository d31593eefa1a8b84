"""Shift-invariance (Zhang 2019, "Making Convolutional Networks Shift-Invariant Again").

Zhang's protocol takes two random 224x224 crops of a 256x256 image and asks how often the
network gives both the same top-1 class ("consistency"). Adapted to any input size here: each
image (in [0, 1], before normalisation) is zero-padded by ``pad`` pixels on every side and
cropped back to its size at two random offsets in [0, 2 * pad] per axis; the unshifted image is
the crop at (pad, pad). ``accuracy`` is top-1 on the unshifted images. The accuracy-versus-
shift curve crops at (pad + s, pad + s) for each diagonal shift s in [-pad, pad].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.data import Dataset
from engine.executable import Executable


@dataclass(frozen=True)
class Consistency:
    """``consistency`` and ``accuracy`` in [0, 1]; ``shifts`` and ``shift_accuracy`` the
    diagonal curve; ``pairs`` the number of shifted pairs compared."""

    consistency: float
    accuracy: float
    pad: int
    pairs: int
    shifts: list[int]
    shift_accuracy: list[float]

    def as_dict(self) -> dict[str, object]:
        return dict(vars(self))


def default_pad(height: int) -> int:
    """An eighth of the input (4 pixels for 32x32, as Zhang's 32 of 256), at least one."""
    return max(1, height // 8)


def consistency(
    exe: Executable,
    data: Dataset,
    preprocess: Callable | None = None,
    pad: int | None = None,
    seed: int = 0,
) -> Consistency:
    """Consistency, accuracy and the diagonal-shift curve of ``exe`` on ``data`` (raw images in
    [0, 1]; ``preprocess`` normalises each crop)."""
    height = data.x.shape[2]
    pad = default_pad(height) if pad is None else pad
    if pad < 1:
        raise ValueError(f"consistency needs a shift of at least 1 pixel, but got pad={pad}")
    rng = np.random.default_rng(seed)
    padded = np.pad(data.x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    offsets = rng.integers(0, 2 * pad + 1, size=(2, len(data), 2))
    first = _predict(exe, _crop(padded, offsets[0], data.x.shape), preprocess)
    second = _predict(exe, _crop(padded, offsets[1], data.x.shape), preprocess)
    shifts = list(range(-pad, pad + 1))
    curve = []
    for s in shifts:
        at = np.full((len(data), 2), pad + s)
        curve.append(
            float((_predict(exe, _crop(padded, at, data.x.shape), preprocess) == data.y).mean())
        )
    return Consistency(
        consistency=float((first == second).mean()),
        accuracy=curve[pad],
        pad=pad,
        pairs=len(data),
        shifts=shifts,
        shift_accuracy=curve,
    )


def _crop(padded: np.ndarray, offsets: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each image's crop of ``shape[2:]`` at its (row, column) offset."""
    h, w = shape[2:]
    return np.stack(
        [img[:, r : r + h, c : c + w] for img, (r, c) in zip(padded, offsets, strict=True)]
    )


def _predict(exe: Executable, x: np.ndarray, preprocess: Callable | None) -> np.ndarray:
    """Top-1 class of every image, in batches of the compiled size (the last one padded)."""
    batch, classes = exe.input_shape[0], []
    for start in range(0, len(x), batch):
        part = x[start : start + batch]
        chunk = np.zeros(exe.input_shape, exe.dtype)
        chunk[: len(part)] = preprocess(part) if preprocess is not None else part
        classes.append(np.argmax(exe.run(chunk)[: len(part)], axis=1))
    return np.concatenate(classes)
