"""Data augmentation on float32 NCHW batches: Numba kernels plus a seeded pipeline.

Each public function applies a transform with explicit per-image parameters and returns a new
batch; ``Augment`` draws those parameters from a seeded numpy Generator in Python and calls
them, so a batch's augmentation is a pure function of (seed, epoch, batch index). The kernels
are ``@njit(parallel=True, cache=True)``, parallel over images (or image planes).

Geometry. Pixel centres sit at integer coordinates; matrices act on (x, y) = (column, row)
measured from the image centre ((W - 1) / 2, (H - 1) / 2), with y pointing down, as the image is
displayed. A matrix is the forward map, source point -> output point (the content moves by it,
as in torchvision's ``affine``); the kernels sample the source at the inverse image of each
output pixel, bilinearly, reading zeros outside the image (``grid_sample`` with
``padding_mode="zeros"``, ``align_corners=False``). A positive angle turns the content
counter-clockwise as displayed, as torchvision's ``rotate`` and ``np.rot90`` do: rotating a
square image by 90 degrees equals ``np.rot90(batch, 1, axes=(2, 3))``.

Colour. ``color_jitter`` follows torchvision's ``adjust_brightness``, ``adjust_contrast`` and
``adjust_saturation`` on [0, 1] images: blend with black, with the mean of the grayscale image,
or with the grayscale image (0.2989 R + 0.587 G + 0.114 B), clamping to [0, 1] after each step.
So augment before normalising.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from scipy.ndimage import gaussian_filter

from backends.cpu.numba_setup import ensure_thread_pool
from engine.data import STREAM_AUGMENT, seeded_generator

# Colour-jitter operations, in the column order of ``color_jitter``'s factors.
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma)

# **** Kernels ****


@njit(inline="always", cache=True)
def _bilinear(x, i, ch, sy, sx):
    """Plane (i, ch) of ``x`` sampled at (row sy, column sx); taps outside it read zero.

    Indexes ``x`` directly and has one exit: a plane view or an early return made the kernels
    2-3x slower here (numba 0.68).
    """
    h, w = x.shape[2], x.shape[3]
    value = 0.0
    if -1.0 < sy < h and -1.0 < sx < w:
        y0, x0 = int(sy + 1.0) - 1, int(sx + 1.0) - 1  # floor, as sy, sx > -1
        fy, fx = sy - y0, sx - x0
        if y0 >= 0:
            if x0 >= 0:
                value += (1.0 - fy) * (1.0 - fx) * x[i, ch, y0, x0]
            if x0 + 1 < w:
                value += (1.0 - fy) * fx * x[i, ch, y0, x0 + 1]
        if y0 + 1 < h:
            if x0 >= 0:
                value += fy * (1.0 - fx) * x[i, ch, y0 + 1, x0]
            if x0 + 1 < w:
                value += fy * fx * x[i, ch, y0 + 1, x0 + 1]
    return value


@njit(parallel=True, cache=True)
def _shift_flip_kernel(x, out, shifts, flips):
    """out[r, c] = x[r + dy, c' + dx], c' = W - 1 - c if flipped else c; zero outside."""
    n, channels, h, w = x.shape
    for p in prange(n * channels):
        i, ch = p // channels, p % channels
        dy, dx, flip = shifts[i, 0], shifts[i, 1], flips[i]
        for r in range(h):
            sr = r + dy
            for c in range(w):
                sc = (w - 1 - c if flip else c) + dx
                inside = 0 <= sr < h and 0 <= sc < w
                out[i, ch, r, c] = x[i, ch, sr, sc] if inside else 0.0


@njit(parallel=True, cache=True)
def _affine_kernel(x, out, inverse):
    """out at centred (u, v) = x sampled at inverse[i] @ (u, v, 1), re-centred."""
    n, channels, h, w = x.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    for p in prange(n * channels):
        i, ch = p // channels, p % channels
        # Scalars, not a view of ``inverse``: LLVM then keeps them in registers.
        m00, m01, m02 = inverse[i, 0, 0], inverse[i, 0, 1], inverse[i, 0, 2] + cx
        m10, m11, m12 = inverse[i, 1, 0], inverse[i, 1, 1], inverse[i, 1, 2] + cy
        for r in range(h):
            v = r - cy
            for c in range(w):
                u = c - cx
                sy, sx = m10 * u + m11 * v + m12, m00 * u + m01 * v + m02
                out[i, ch, r, c] = _bilinear(x, i, ch, sy, sx)


@njit(parallel=True, cache=True)
def _displace_kernel(x, out, displacement):
    """out[r, c] = x sampled at (r + displacement[0, r, c], c + displacement[1, r, c])."""
    n, channels, h, w = x.shape
    for p in prange(n * channels):
        i, ch = p // channels, p % channels
        for r in range(h):
            for c in range(w):
                sy, sx = r + displacement[i, 0, r, c], c + displacement[i, 1, r, c]
                out[i, ch, r, c] = _bilinear(x, i, ch, sy, sx)


@njit(inline="always", cache=True)
def _gray(img, r, c):
    return _GRAY[0] * img[0, r, c] + _GRAY[1] * img[1, r, c] + _GRAY[2] * img[2, r, c]


@njit(parallel=True, cache=True)
def _jitter_kernel(out, factors, order):
    """In place: per image, the three blends in ``order``; a factor of exactly 1 is skipped."""
    n, channels, h, w = out.shape
    for i in prange(n):
        img = out[i]
        for k in range(3):
            op = order[i, k]
            f = factors[i, op]
            if f == 1.0 or (op == SATURATION and channels != 3):
                continue
            mean = 0.0
            if op == CONTRAST:
                total = 0.0
                for r in range(h):
                    for c in range(w):
                        if channels == 3:
                            total += _gray(img, r, c)
                        else:
                            for ch in range(channels):
                                total += img[ch, r, c]
                mean = total / (h * w * (1 if channels == 3 else channels))
            for r in range(h):
                for c in range(w):
                    if op == BRIGHTNESS:
                        base = 0.0
                    elif op == CONTRAST:
                        base = mean
                    else:
                        base = _gray(img, r, c)
                    for ch in range(channels):
                        value = f * img[ch, r, c] + (1.0 - f) * base
                        img[ch, r, c] = min(max(value, 0.0), 1.0)


# **** Transforms with explicit parameters ****


def _checked(batch: np.ndarray) -> np.ndarray:
    """The batch as contiguous float32 NCHW; the thread pool is up before any kernel runs."""
    if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
        raise TypeError(
            f"augmentation needs a float32 array, but got {getattr(batch, 'dtype', type(batch))}"
        )
    if batch.ndim != 4:
        raise ValueError(f"augmentation needs an NCHW batch, but got shape {batch.shape}")
    ensure_thread_pool()
    return np.ascontiguousarray(batch)


def _per_image(values: np.ndarray | float, n: int, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Broadcast one parameter (or one per image) to ``(n, *shape)`` float64."""
    values = np.asarray(values, np.float64)
    if values.shape not in (shape, (n, *shape)):
        raise ValueError(f"{name} must have shape {shape} or {(n, *shape)}, but got {values.shape}")
    return _kernel_array(values, (n, *shape), np.float64)


def _kernel_array(values: np.ndarray, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A fresh writable C-contiguous copy: Numba compiles (and caches) a separate kernel for
    read-only arrays such as ``np.broadcast_to`` views, so kernels only ever see this kind."""
    return np.broadcast_to(values, shape).astype(dtype, order="C")


def _shift_flip(batch: np.ndarray, shifts: np.ndarray, flips: np.ndarray) -> np.ndarray:
    batch = _checked(batch)
    out = np.empty_like(batch)
    shifts = _kernel_array(shifts, (len(batch), 2), np.int64)
    flips = _kernel_array(flips, (len(batch),), np.bool_)
    _shift_flip_kernel(batch, out, shifts, flips)
    return out


def crop(batch: np.ndarray, padding: int, offsets: np.ndarray) -> np.ndarray:
    """Zero-pad each image by ``padding`` and take the HxW window at ``offsets`` [N, 2] (row,
    column), each in [0, 2 * padding]: torchvision's ``RandomCrop(size, padding)``."""
    offsets = np.asarray(offsets, np.int64)
    if offsets.size and (offsets.min() < 0 or offsets.max() > 2 * padding):
        raise ValueError(f"crop offsets must lie in [0, {2 * padding}], but got {offsets}")
    return _shift_flip(batch, offsets - padding, np.zeros(len(batch), np.bool_))


def flip(batch: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mirror left-right the images where ``mask`` [N] is true (all of them without a mask)."""
    mask = np.ones(len(batch), np.bool_) if mask is None else mask
    return _shift_flip(batch, np.zeros(2, np.int64), mask)


def affine(batch: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Warp each image by its forward affine map (2x3, or [N, 2, 3]) in centred pixel units."""
    batch = _checked(batch)
    forward = np.zeros((len(batch), 3, 3))
    forward[:, :2] = _per_image(matrices, len(batch), (2, 3), "affine matrices")
    forward[:, 2, 2] = 1.0
    if np.any(np.abs(np.linalg.det(forward)) < 1e-12):
        raise ValueError("affine matrices must be invertible, but got a singular one")
    out = np.empty_like(batch)
    _affine_kernel(
        batch, out, _kernel_array(np.linalg.inv(forward)[:, :2], (len(batch), 2, 3), np.float64)
    )
    return out


def affine_matrices(
    degrees: np.ndarray | float = 0.0,
    factors: np.ndarray | float = 1.0,
    shifts: np.ndarray | tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Forward maps [N, 2, 3]: scale by ``factors``, rotate by ``degrees`` (counter-clockwise as
    displayed), then translate by ``shifts`` [N, 2] (dx right, dy down, pixels)."""
    degrees, factors = np.atleast_1d(degrees), np.atleast_1d(factors)
    shifts = np.atleast_2d(np.asarray(shifts, np.float64))
    n = max(len(degrees), len(factors), len(shifts))
    theta = np.deg2rad(np.broadcast_to(degrees, n))
    factors = np.broadcast_to(factors, n)
    cos, sin = np.cos(theta) * factors, np.sin(theta) * factors
    matrices = np.empty((n, 2, 3))
    matrices[:, 0, 0], matrices[:, 0, 1] = cos, sin
    matrices[:, 1, 0], matrices[:, 1, 1] = -sin, cos
    matrices[:, :, 2] = np.broadcast_to(shifts, (n, 2))
    return matrices


def rotate(batch: np.ndarray, degrees: np.ndarray | float) -> np.ndarray:
    """Turn the content about the centre, counter-clockwise as displayed for positive angles."""
    return affine(batch, affine_matrices(degrees=_per_image(degrees, len(batch), (), "degrees")))


def scale(batch: np.ndarray, factors: np.ndarray | float) -> np.ndarray:
    """Zoom about the centre: a factor above 1 enlarges the content."""
    return affine(batch, affine_matrices(factors=_per_image(factors, len(batch), (), "factors")))


def translate(batch: np.ndarray, shifts: np.ndarray | tuple[float, float]) -> np.ndarray:
    """Move the content by ``shifts`` (dx right, dy down) pixels, one pair or one per image."""
    return affine(batch, affine_matrices(shifts=_per_image(shifts, len(batch), (2,), "shifts")))


def elastic_displacement(
    rng: np.random.Generator, shape: tuple[int, int, int], alpha: float, sigma: float
) -> np.ndarray:
    """Simard et al. 2003 displacement fields [N, 2, H, W] for ``shape`` (N, H, W): uniform
    noise in [-1, 1] per pixel and axis, smoothed by a Gaussian of std ``sigma`` pixels (zero
    outside the image), scaled by ``alpha`` pixels (MNIST in the paper: alpha 34, sigma 4)."""
    n, h, w = shape
    noise = rng.uniform(-1.0, 1.0, size=(n, 2, h, w))
    return alpha * gaussian_filter(noise, sigma=(0, 0, sigma, sigma), mode="constant")


def elastic(batch: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Resample each output pixel (r, c) at (r + dy, c + dx), ``displacement`` [N, 2, H, W]
    holding (dy, dx) in pixels; bilinear, zeros outside."""
    batch = _checked(batch)
    n, _, h, w = batch.shape
    out = np.empty_like(batch)
    _displace_kernel(batch, out, _per_image(displacement, n, (2, h, w), "displacement"))
    return out


def color_jitter(
    batch: np.ndarray, factors: np.ndarray, order: np.ndarray | None = None
) -> np.ndarray:
    """Scale brightness, contrast and saturation by ``factors`` [N, 3] (1 leaves one alone),
    applied in ``order`` [N, 3] (a permutation of BRIGHTNESS, CONTRAST, SATURATION per image;
    that order by default). Saturation changes 3-channel images only."""
    batch = _checked(batch)
    n = len(batch)
    order = np.arange(3) if order is None else np.asarray(order)
    order = _kernel_array(order, (n, 3), np.int64)
    if np.any(np.sort(order, axis=1) != np.arange(3)):
        raise ValueError(f"jitter order must hold a permutation of 0, 1, 2 per image: {order}")
    out = batch.copy()
    _jitter_kernel(out, _per_image(factors, n, (3,), "jitter factors"), order)
    return out


# **** The seeded pipeline ****


@dataclass(frozen=True)
class Augment:
    """A random augmentation pipeline, torchvision's transforms drawn per image from a seed.

    Args:
        crop: zero padding of ``RandomCrop`` (0: off).
        flip: mirror left-right with probability 1/2.
        rotate: angle drawn from [-rotate, rotate] degrees.
        scale: zoom factor drawn from [low, high].
        translate: shift drawn from [-translate, translate] x (W, H), rounded to whole pixels
            as ``RandomAffine`` does.
        elastic: (alpha, sigma) of Simard's elastic deformation (None: off).
        jitter: (brightness, contrast, saturation) strengths b; each factor is drawn from
            [max(0, 1 - b), 1 + b] and the three are applied in a random order per image, as
            ``ColorJitter``; a strength of 0 leaves that property alone.
        seed: the root of every random draw.

    Stages run in a fixed order: one affine warp for rotate/scale/translate (one resampling,
    not three), elastic, crop and flip (exact, no resampling), colour jitter.
    """

    crop: int = 0
    flip: bool = False
    rotate: float = 0.0
    scale: tuple[float, float] | None = None
    translate: float = 0.0
    elastic: tuple[float, float] | None = None
    jitter: tuple[float, float, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        low, high = self.scale if self.scale is not None else (1.0, 1.0)
        alpha, sigma = self.elastic if self.elastic is not None else (0.0, 1.0)
        jitter = self.jitter if self.jitter is not None else (0.0, 0.0, 0.0)
        checks = {
            "crop must be a non-negative int": isinstance(self.crop, int) and self.crop >= 0,
            "rotate must be non-negative": self.rotate >= 0,
            "scale must be (low, high) with 0 < low <= high": 0 < low <= high,
            "translate must lie in [0, 1)": 0 <= self.translate < 1,
            "elastic must be (alpha >= 0, sigma > 0)": alpha >= 0 and sigma > 0,
            "jitter strengths must be 3 non-negative numbers": len(jitter) == 3
            and min(jitter) >= 0,
        }
        for rule, ok in checks.items():
            if not ok:
                raise ValueError(f"Augment: {rule}, but got {self}")

    def __call__(
        self,
        batch: np.ndarray,
        epoch: int = 0,
        batch_index: int = 0,
        *,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """The augmented batch; random draws come from ``rng`` if given, else from the stream
        (seed, epoch, batch_index), so a resumed run reproduces every batch."""
        rng = (
            seeded_generator(self.seed, STREAM_AUGMENT, epoch, batch_index) if rng is None else rng
        )
        out = _checked(batch)
        n, _, h, w = out.shape
        if self.rotate or self.scale is not None or self.translate:
            degrees = rng.uniform(-self.rotate, self.rotate, n)
            factors = rng.uniform(*(self.scale or (1.0, 1.0)), n)
            limits = self.translate * np.array([w, h])
            shifts = np.round(rng.uniform(-limits, limits, (n, 2)))
            out = affine(out, affine_matrices(degrees, factors, shifts))
        if self.elastic is not None:
            out = elastic(out, elastic_displacement(rng, (n, h, w), *self.elastic))
        if self.crop or self.flip:
            offsets = rng.integers(0, 2 * self.crop + 1, (n, 2))
            flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, np.bool_)
            out = _shift_flip(out, offsets - self.crop, flips)
        if self.jitter is not None and any(self.jitter):
            strength = np.array(self.jitter)
            factors = rng.uniform(np.maximum(0.0, 1.0 - strength), 1.0 + strength, (n, 3))
            factors[:, strength == 0] = 1.0
            order = rng.permuted(np.tile(np.arange(3), (n, 1)), axis=1)
            out = color_jitter(out, factors, order)
        return out.copy() if out is batch else out
