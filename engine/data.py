"""Datasets for training: loaders, a small in-memory container, seeded batching and normalisation.

Every loader returns images as float32 NCHW in [0, 1] and labels as int64, the layout a compiled
model takes. Sources:

- ``load_digits``: scikit-learn's 8x8 digits (1,797 images, always available, no download).
- IDX files, the MNIST / Fashion-MNIST format (``read_idx``, ``load_idx_dataset``,
  ``load_fashion_mnist``), raw or gzip-compressed; Debian's ``dataset-fashion-mnist`` installs
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` under ``/usr/share/datasets/fashion-mnist``.
- Image folders (``load_image_folder``), one sub-folder per class as torchvision's
  ``ImageFolder``, read with Pillow.
- ``load_dataset`` picks one of these from a name or a directory.

Randomness is a pure function of a seed: each use draws from its own stream,
``SeedSequence(seed, spawn_key=(purpose, ...))``, so the batch order of an epoch depends only on
(seed, epoch) and a resumed run replays it without replaying the epochs before.
"""

from __future__ import annotations

import gzip
import math
import pathlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# File endings torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Purposes of the seeded streams (the first spawn_key word), so that one seed gives independent
# streams for shuffling, splitting and augmentation (engine.augment).
STREAM_SHUFFLE, STREAM_SPLIT, STREAM_AUGMENT = 1, 2, 3

Arrays = tuple[np.ndarray, np.ndarray]  # (images, labels)


def seeded_generator(seed: int, *key: int) -> np.random.Generator:
    """The generator for stream ``key`` (purpose, then indices such as epoch) under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# **** The container ****


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images ``x`` (float32 [N, C, H, W]), labels ``y`` (int64 [N]) and the class names.

    Immutable by convention: ``subset``, ``split`` and ``normalized`` return new datasets, and
    ``batches`` yields fresh arrays, so a training step may overwrite a batch in place.
    """

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(
                "Dataset needs x [N, C, H, W] and y [N], "
                f"but got x {self.x.shape}, y {self.y.shape}"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W): the ``input_shape`` to compile a model for."""
        return tuple(self.x.shape[1:])

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.x[indices], self.y[indices], self.classes)

    def split(self, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Hold out ``round(fraction * N)`` random samples: returns (train, validation)."""
        held = round(fraction * len(self))
        if not 0 < held < len(self):
            raise ValueError(
                f"split fraction must leave both parts non-empty, but got fraction={fraction} "
                f"of {len(self)} samples ({held} held out)"
            )
        order = seeded_generator(seed, STREAM_SPLIT).permutation(len(self))
        return self.subset(np.sort(order[held:])), self.subset(np.sort(order[:held]))

    def normalized(self, norm: Normalize) -> Dataset:
        return Dataset(norm(self.x), self.y, self.classes)

    def num_batches(self, batch_size: int, drop_last: bool = True) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        start: int = 0,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (x, y) batches of one epoch, in the order ``epoch_order(N, seed, epoch)``.

        ``drop_last`` (the default) keeps every batch at ``batch_size``, the batch a model is
        compiled for; otherwise the last batch may be smaller. ``start`` skips that many
        batches, to resume an epoch part way through.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, but got batch_size={batch_size}")
        order = epoch_order(len(self), seed, epoch) if shuffle else np.arange(len(self))
        for b in range(start, self.num_batches(batch_size, drop_last)):
            indices = order[b * batch_size : (b + 1) * batch_size]
            yield self.x[indices], self.y[indices]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a permutation of ``range(n)``, a function of (seed, epoch)."""
    return seeded_generator(seed, STREAM_SHUFFLE, epoch).permutation(n)


@dataclass(frozen=True, eq=False)
class Normalize:
    """Per-channel ``(x - mean) / std``, as torchvision's ``transforms.Normalize``.

    Fit it on the training split only and apply it to every split (and after augmentation,
    which expects images in [0, 1]); save ``mean`` and ``std`` with the model.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Normalize:
        """Mean and population std per channel over (N, H, W); a constant channel gets std 1."""
        mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
        std = x.std(axis=(0, 2, 3), dtype=np.float64)
        std[std == 0] = 1.0
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or x.shape[1] != len(self.mean):
            raise ValueError(
                f"Normalize has {len(self.mean)} channels, but got a batch of shape {x.shape}"
            )
        shape = (1, -1, 1, 1)
        return ((x - self.mean.reshape(shape)) / self.std.reshape(shape)).astype(np.float32)


# **** scikit-learn digits ****


def load_digits(normalize: bool = True) -> Arrays:
    """scikit-learn's digits: x float32 [1797, 1, 8, 8], y int64 [1797], 10 classes.

    The pixels are counts 0..16 (4x4 blocks of a 32x32 bitmap); ``normalize`` divides by 16
    to put them in [0, 1] like every other loader.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # slow import, used rarely

    bunch = sklearn_digits()
    x = bunch.images.astype(np.float32)[:, None]
    return (x / 16.0 if normalize else x), bunch.target.astype(np.int64)


# **** IDX files (MNIST, Fashion-MNIST) ****

# IDX header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32
# per dimension; the data follow, big-endian (LeCun's MNIST page).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: pathlib.Path) -> bytes:
    """The file's bytes, gunzipped when it starts with gzip's magic number (whatever its name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({error})") from error


def read_idx(path: str | pathlib.Path) -> np.ndarray:
    """Read one IDX file (raw or .gz) into an array of its own shape and native-endian dtype."""
    path = pathlib.Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file, the header must start 00 00 <type> <ndim> with type one "
            f"of {sorted(hex(t) for t in _IDX_DTYPES)}, but got {data[:4].hex(' ') or 'no bytes'}"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header, {ndim} dims need {header} bytes")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch, shape {shape} of {dtype.name} needs {expected} bytes "
            f"({header} header + data), but the file has {len(data)}"
            + (" (truncated)" if len(data) < expected else " (trailing bytes)")
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: pathlib.Path, split: str, kind: str, rank: int) -> pathlib.Path:
    """The file for (split, kind), under MNIST's standard names and the ``.idx`` variant."""
    names = [f"{split}-{kind}-idx{rank}-ubyte", f"{split}-{kind}.idx{rank}-ubyte"]
    candidates = [root / (name + ext) for name in names for ext in ("", ".gz")]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{root}: no {split} {kind} IDX file, tried {', '.join(p.name for p in candidates)}"
    )


def _idx_pair(root: pathlib.Path, split: str) -> Arrays:
    images_path = _find_idx(root, split, "images", 3)
    labels_path = _find_idx(root, split, "labels", 1)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{root}: {split} images must be [N, H, W] and labels [N], but got "
            f"{images_path.name} {images.shape} and {labels_path.name} {labels.shape}"
        )
    scale = np.float32(255.0 if images.dtype == np.uint8 else 1.0)
    x = (images[:, None] / scale).astype(np.float32, copy=False)
    return x, labels.astype(np.int64)


def load_idx_dataset(root: str | pathlib.Path) -> tuple[Arrays, Arrays]:
    """((train_x, train_y), (test_x, test_y)) from a folder of MNIST-style IDX files.

    Images become float32 [N, 1, H, W] (uint8 pixels divided by 255), labels int64 [N].
    """
    root = pathlib.Path(root)
    return _idx_pair(root, "train"), _idx_pair(root, "t10k")


def load_fashion_mnist(root: str | pathlib.Path = FASHION_MNIST_ROOT) -> tuple[Arrays, Arrays]:
    """Fashion-MNIST (60,000 train + 10,000 test 28x28 images, 10 classes) from IDX files.

    The default root is where ``apt-get install dataset-fashion-mnist`` puts them.
    """
    return load_idx_dataset(root)


# **** Image folders ****


def _read_image(path: pathlib.Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except OSError as error:
        raise ValueError(f"{path}: cannot read image ({error})") from error
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def load_image_folder(
    root: str | pathlib.Path, size: tuple[int, int] | None = None, channels: int = 3
) -> Dataset:
    """A dataset from ``root/<class>/<image>``: classes sorted by name give labels 0, 1, ...

    Images are converted to RGB (``channels=3``) or grayscale (1) and resized to ``size``
    (H, W) with bilinear filtering; without ``size`` every image must already share one size.
    """
    root = pathlib.Path(root)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, but got channels={channels}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise FileNotFoundError(f"{root}: no class sub-folders")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"{class_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        for path in files:
            image = _read_image(path, size, channels)
            if images and image.shape != images[0].shape:
                raise ValueError(
                    f"{path}: image shape {image.shape} differs from {images[0].shape}; "
                    "pass size=(H, W) to resize every image"
                )
            images.append(image)
            labels.append(label)
    x, y = np.stack(images), np.array(labels, dtype=np.int64)
    return Dataset(x, y, tuple(p.name for p in class_dirs))


# **** One entry point ****


def _is_idx_folder(root: pathlib.Path) -> bool:
    return any(p.is_file() and "idx" in p.name for p in root.iterdir())


def _split_folders(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path] | None:
    """(train, test) sub-folders of an ImageNet-style layout, or None."""
    test = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    return (root / "train", test) if (root / "train").is_dir() and test is not None else None


def load_dataset(
    name_or_path: str | pathlib.Path,
    *,
    size: tuple[int, int] | None = None,
    channels: int = 3,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """(train, test) datasets from ``"digits"``, ``"fashion-mnist"`` or a directory.

    A directory holds IDX files (``train-*`` and ``t10k-*``), ``train/`` and ``test/`` (or
    ``val/``) image folders, or one image folder. Sources without a test split (digits, a single
    image folder) hold out ``test_fraction`` of the samples, chosen by ``seed``. ``size`` and
    ``channels`` apply to image folders only.
    """
    if name_or_path == "digits":
        x, y = load_digits()
        return Dataset(x, y, tuple(str(d) for d in range(10))).split(test_fraction, seed)
    if name_or_path == "fashion-mnist":
        (tx, ty), (vx, vy) = load_fashion_mnist()
        return Dataset(tx, ty, FASHION_MNIST_CLASSES), Dataset(vx, vy, FASHION_MNIST_CLASSES)
    root = pathlib.Path(name_or_path)
    if not root.is_dir():
        raise ValueError(
            f"dataset must be 'digits', 'fashion-mnist' or a directory, but got {name_or_path!r}"
        )
    if _is_idx_folder(root):
        (tx, ty), (vx, vy) = load_idx_dataset(root)
        classes = tuple(str(c) for c in range(int(max(ty.max(), vy.max())) + 1))
        return Dataset(tx, ty, classes), Dataset(vx, vy, classes)
    folders = _split_folders(root)
    if folders is None:
        return load_image_folder(root, size, channels).split(test_fraction, seed)
    train, test = (load_image_folder(f, size, channels) for f in folders)
    if train.classes != test.classes:
        raise ValueError(f"{root}: train classes {train.classes} != test classes {test.classes}")
    return train, test
