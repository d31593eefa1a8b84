"""Augmentation kernels and the seeded pipeline (engine.augment).

Oracles: ``np.rot90`` and slicing of a zero-padded copy for exact moves; PyTorch's
``affine_grid`` + ``grid_sample`` (bilinear, zeros, align_corners=False) for warps; torchvision's
colour formulas, restated below in torch (torchvision itself is not a test dependency). The
first run compiles the Numba kernels (a few seconds); later runs load them from the disk cache.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import augment
from engine.augment import Augment

EVERYTHING = Augment(
    crop=2, flip=True, rotate=15, scale=(0.8, 1.2), translate=0.1, elastic=(6.0, 2.0),
    jitter=(0.3, 0.4, 0.5), seed=11,
)  # fmt: skip


def images(rng, n: int = 3, channels: int = 3, h: int = 7, w: int = 7) -> np.ndarray:
    return rng.random((n, channels, h, w), dtype=np.float32)


def torch_warp(batch: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """grid_sample at a grid [N, H, W, 2] of (x, y) pixel coordinates, in float64."""
    _, _, h, w = batch.shape
    normalized = (2 * grid + 1) / np.array([w, h]) - 1  # pixel centres, align_corners=False
    out = F.grid_sample(
        torch.from_numpy(batch.astype(np.float64)),
        torch.from_numpy(normalized),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out.numpy()


def pixel_grid(h: int, w: int) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w), indexing="ij")
    return np.stack([cols, rows], axis=-1)  # (x, y) per pixel


# **** Identities ****


def test_flip_twice_is_identity(rng):
    x = images(rng, w=6)
    mask = np.array([True, False, True])
    once = augment.flip(x, mask)
    np.testing.assert_array_equal(once[0], x[0, :, :, ::-1])
    np.testing.assert_array_equal(once[1], x[1])
    np.testing.assert_array_equal(augment.flip(once, mask), x)


@pytest.mark.parametrize(
    "transform",
    [
        lambda x: augment.rotate(x, 0.0),
        lambda x: augment.scale(x, 1.0),
        lambda x: augment.translate(x, (0.0, 0.0)),
        lambda x: augment.affine(x, np.eye(2, 3)),
        lambda x: augment.crop(x, 3, np.full((len(x), 2), 3)),
        lambda x: augment.elastic(x, np.zeros((len(x), 2, *x.shape[2:]))),
        lambda x: augment.color_jitter(x, np.ones(3)),
        Augment(elastic=(0.0, 3.0), jitter=(0.0, 0.0, 0.0), scale=(1.0, 1.0)),
        Augment(),
    ],
    ids=["rotate", "scale", "translate", "affine", "crop", "elastic", "jitter", "alpha0", "none"],
)
def test_neutral_parameters_are_identity(rng, transform):
    x = images(rng, h=6, w=9)
    out = transform(x)
    assert out is not x and out.dtype == np.float32
    np.testing.assert_allclose(out, x, rtol=0, atol=1e-6)


# **** Geometry against oracles ****


@pytest.mark.parametrize("size", [6, 7])
def test_rotation_by_right_angles_matches_rot90(rng, size):
    """Positive angles turn the content counter-clockwise as displayed, like np.rot90."""
    x = images(rng, h=size, w=size)
    for degrees, k in [(90, 1), (-90, -1), (180, 2), (270, 3)]:
        expected = np.rot90(x, k, axes=(2, 3))
        np.testing.assert_allclose(augment.rotate(x, float(degrees)), expected, atol=1e-6)


def test_affine_matches_grid_sample(rng):
    x = images(rng, n=4, channels=2, h=7, w=10)
    forward = np.concatenate([rng.uniform(0.6, 1.4, (4, 2, 2)), rng.normal(0, 2, (4, 2, 1))], 2)
    forward[:, 0, 1] *= rng.choice([-0.5, 0.5], 4)
    inverse = np.linalg.inv(np.concatenate([forward, np.tile([[[0, 0, 1]]], (4, 1, 1))], 1))
    centre = np.array([(10 - 1) / 2, (7 - 1) / 2])
    grid = (pixel_grid(7, 10) - centre) @ inverse[:, None, :2, :2].swapaxes(-1, -2)
    grid = grid + inverse[:, None, None, :2, 2] + centre
    np.testing.assert_allclose(augment.affine(x, forward), torch_warp(x, grid), atol=1e-5)


def test_translate_by_whole_pixels_moves_content(rng):
    x = images(rng, h=6, w=8)
    out = augment.translate(x, (2.0, -1.0))  # 2 right, 1 up
    expected = np.zeros_like(x)
    expected[:, :, :-1, 2:] = x[:, :, 1:, :-2]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_scale_and_rotation_compose_in_one_matrix(rng):
    x = images(rng, h=9, w=9)
    matrix = augment.affine_matrices(degrees=30.0, factors=1.5, shifts=(1.0, 2.0))
    theta = np.deg2rad(30)
    rotation = 1.5 * np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    np.testing.assert_allclose(matrix[0], np.concatenate([rotation, [[1.0], [2.0]]], 1))
    zoomed = augment.scale(x, 2.0)
    centre = zoomed[:, :, 4, 4]
    np.testing.assert_allclose(centre, x[:, :, 4, 4], atol=1e-6)  # the centre stays put
    np.testing.assert_allclose(zoomed[:, :, 4, 6], x[:, :, 4, 5], atol=1e-6)


def test_crop_matches_padded_slice(rng):
    x = images(rng, h=5, w=6)
    offsets = np.array([[0, 4], [2, 1], [4, 0]])
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    expected = np.stack([padded[i, :, r : r + 5, c : c + 6] for i, (r, c) in enumerate(offsets)])
    np.testing.assert_array_equal(augment.crop(x, 2, offsets), expected)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        augment.crop(x, 2, offsets + 1)


def test_random_crop_and_flip_stay_in_bounds(rng):
    """Every output is one window of the zero-padded source, mirrored or not."""
    x, padding = images(rng, n=8, h=5, w=5), 2
    out = Augment(crop=padding, flip=True, seed=4)(x, epoch=1, batch_index=2)
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = range(2 * padding + 1)
    for i in range(len(x)):
        candidates = [
            padded[i, :, r : r + 5, c : c + 5] for r, c in itertools.product(windows, windows)
        ]
        candidates += [window[:, :, ::-1] for window in candidates]
        assert any(np.array_equal(out[i], window) for window in candidates), i


def test_elastic_matches_grid_sample(rng):
    x = images(rng, n=2, channels=1, h=8, w=6)
    field = augment.elastic_displacement(np.random.default_rng(0), (2, 8, 6), alpha=3.0, sigma=1.5)
    assert field.shape == (2, 2, 8, 6) and np.abs(field).max() > 0.1
    grid = pixel_grid(8, 6) + np.moveaxis(field[:, ::-1], 1, -1)  # (dy, dx) -> (x, y) offsets
    np.testing.assert_allclose(augment.elastic(x, field), torch_warp(x, grid), atol=1e-5)


def test_elastic_field_scales_with_alpha_and_smooths_with_sigma():
    def field(alpha: float, sigma: float) -> np.ndarray:
        return augment.elastic_displacement(np.random.default_rng(1), (4, 16, 16), alpha, sigma)

    np.testing.assert_allclose(field(6.0, 2.0), 3 * field(2.0, 2.0))
    assert (
        np.abs(np.diff(field(1.0, 4.0), axis=-1)).mean()
        < np.abs(np.diff(field(1.0, 0.5), axis=-1)).mean()
    )


# **** Colour ****


def _blend(img: torch.Tensor, other: torch.Tensor, ratio: float) -> torch.Tensor:
    """torchvision.transforms.functional._blend for float images."""
    return (ratio * img + (1.0 - ratio) * other).clamp(0, 1.0)


def _grayscale(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def torchvision_jitter(img: torch.Tensor, factors, order) -> torch.Tensor:
    """adjust_brightness / adjust_contrast / adjust_saturation, in ``order`` (torchvision 0.2x)."""
    for op in order:
        f = float(factors[op])
        if op == augment.BRIGHTNESS:
            img = _blend(img, torch.zeros_like(img), f)
        elif op == augment.CONTRAST:
            gray = _grayscale(img) if img.shape[-3] == 3 else img
            img = _blend(img, gray.mean(dim=(-3, -2, -1), keepdim=True), f)
        elif img.shape[-3] == 3:
            img = _blend(img, _grayscale(img), f)
    return img


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_matches_torchvision_formulas(rng, channels):
    x = images(rng, n=6, channels=channels, h=5, w=4)
    factors = rng.uniform(0.3, 1.7, (6, 3))
    order = np.array(list(itertools.permutations(range(3))))
    out = augment.color_jitter(x, factors, order)
    for i in range(6):
        expected = torchvision_jitter(torch.from_numpy(x[i]).double(), factors[i], order[i])
        np.testing.assert_allclose(out[i], expected.numpy(), atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1


def test_jitter_strength_draws_factors_in_range(rng):
    x = np.full((64, 3, 2, 2), 0.5, np.float32)
    out = Augment(jitter=(0.25, 0.0, 0.0), seed=2)(x)  # brightness only: 0.5 * factor
    factors = out[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.75 - 1e-6 and factors.max() <= 1.25 + 1e-6
    assert factors.std() > 0.05


# **** The pipeline ****


def test_pipeline_deterministic_under_seed(rng):
    x = images(rng, n=4, h=12, w=12)
    original = x.copy()
    first = EVERYTHING(x, epoch=3, batch_index=5)
    assert first.shape == x.shape and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(first, EVERYTHING(x.copy(), epoch=3, batch_index=5))
    assert not np.array_equal(first, EVERYTHING(x, epoch=3, batch_index=6))
    assert not np.array_equal(first, EVERYTHING(x, epoch=4, batch_index=5))
    with_rng = EVERYTHING(x, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(with_rng, EVERYTHING(x, rng=np.random.default_rng(9)))
    np.testing.assert_array_equal(x, original)  # the input is never written


def test_pipeline_stages_change_images(rng):
    x = images(rng, n=4, channels=1, h=10, w=10)
    for spec in [dict(rotate=20), dict(scale=(1.2, 1.5)), dict(elastic=(8.0, 2.0))]:
        out = Augment(**spec, seed=1)(x)
        assert np.isfinite(out).all() and not np.allclose(out, x), spec


def test_invalid_arguments():
    with pytest.raises(ValueError, match="scale must be"):
        Augment(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="crop must be"):
        Augment(crop=-1)
    with pytest.raises(ValueError, match="jitter strengths"):
        Augment(jitter=(0.1, -0.1, 0.0))
    with pytest.raises(TypeError, match="float32"):
        augment.flip(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="NCHW"):
        augment.flip(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="invertible"):
        augment.affine(np.zeros((1, 1, 2, 2), np.float32), np.zeros((2, 3)))
