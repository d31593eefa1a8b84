"""Datasets for training: loaders, a small in-memory container, seeded batching and normalisation.

Every loader returns images as float32 NCHW in [0, 1] and labels as int64, the layout a compiled
model takes. Sources:

- ``load_digits``: scikit-learn's 8x8 digits (1,797 images, always available, no download).
- IDX files, the MNIST / Fashion-MNIST format (``read_idx``, ``load_idx_dataset``,
  ``load_fashion_mnist``), raw or gzip-compressed; Debian's ``dataset-fashion-mnist`` installs
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` under ``/usr/share/datasets/fashion-mnist``,
  and ``$CONVFORGE_FASHION_MNIST`` points elsewhere (``fashion_mnist_root``).
- CIFAR-10's "binary version" (``read_cifar10_batch``, ``load_cifar10``): ``data_batch_1.bin``
  .. ``data_batch_5.bin`` and ``test_batch.bin``, as extracted or inside ``cifar-10-batches-bin/``.
- Image folders (``load_image_folder``), one sub-folder per class as torchvision's
  ``ImageFolder``, read with Pillow.
- ``load_dataset`` picks one of these from a name, a ``name:DIR`` or a directory
  (``DATASET_FORMS``).

Images with a NaN or infinite value are refused when they are loaded (``Dataset`` checks every
array it holds), so a corrupt file fails at load time, naming its sample, not as a NaN loss
epochs later.

Randomness is a pure function of a seed: each use draws from its own stream,
``SeedSequence(seed, spawn_key=(purpose, ...))``, so the batch order of an epoch depends only on
(seed, epoch) and a resumed run replays it without replaying the epochs before.
"""

from __future__ import annotations

import gzip
import math
import os
import pathlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

DIGIT_CLASSES = tuple(str(d) for d in range(10))  # scikit-learn digits and MNIST
# Debian's dataset-fashion-mnist puts the IDX files here; the variable names another folder.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "CONVFORGE_FASHION_MNIST"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# batches.meta.txt lists these, one a line; used when the folder has no meta file.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
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


def _check_finite(x: np.ndarray, source: str) -> None:
    """Refuse images holding NaN or inf: one ``np.isfinite`` pass, free for integer pixels.

    A non-finite input makes every loss after the first batch that draws it NaN, far from the
    cause; here the error names the source and the first sample to look at.
    """
    if not np.issubdtype(x.dtype, np.inexact):
        return
    finite = np.isfinite(x)
    if finite.all():
        return
    bad = finite.size - np.count_nonzero(finite)
    nan = np.count_nonzero(np.isnan(x))
    first = int(np.argmin(finite.reshape(len(x), -1).all(axis=1)))
    raise ValueError(
        f"{source}: {bad} non-finite image values ({nan} NaN, {bad - nan} inf), "
        f"the first in sample {first} of {len(x)}"
    )


def _check_labels(labels: np.ndarray, num_classes: int, source: str) -> None:
    """Labels must index the class list: a loss reading past it would fail far from the file."""
    out = (labels < 0) | (labels >= num_classes)
    if out.any():
        first = int(np.argmax(out))
        raise ValueError(
            f"{source}: label {int(labels[first])} of record {first} is out of range "
            f"0..{num_classes - 1} ({np.count_nonzero(out)} of {len(labels)} labels out of range)"
        )


# **** The container ****


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images ``x`` (float32 [N, C, H, W]), labels ``y`` (int64 [N]) and the class names.

    Immutable by convention: ``subset``, ``split`` and ``normalized`` return new datasets, and
    ``batches`` yields fresh arrays, so a training step may overwrite a batch in place. A NaN or
    infinite image value is refused here, at load time (one ``np.isfinite`` pass).
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
        _check_finite(self.x, "Dataset x")

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


def _idx_pair(root: pathlib.Path, split: str, num_classes: int | None) -> Arrays:
    images_path = _find_idx(root, split, "images", 3)
    labels_path = _find_idx(root, split, "labels", 1)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{root}: {split} images must be [N, H, W] and labels [N], but got "
            f"{images_path.name} {images.shape} and {labels_path.name} {labels.shape}"
        )
    scale = np.float32(255.0 if images.dtype == np.uint8 else 1.0)
    with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf, refused next
        x = (images[:, None] / scale).astype(np.float32, copy=False)
    _check_finite(x, str(images_path))
    if num_classes is not None:
        _check_labels(labels, num_classes, str(labels_path))
    return x, labels.astype(np.int64)


def load_idx_dataset(
    root: str | pathlib.Path, num_classes: int | None = None
) -> tuple[Arrays, Arrays]:
    """((train_x, train_y), (test_x, test_y)) from a folder of MNIST-style IDX files.

    Images become float32 [N, 1, H, W] (uint8 pixels divided by 255), labels int64 [N]. With
    ``num_classes`` every label must lie in ``0..num_classes-1``; errors name the file.
    """
    root = pathlib.Path(root)
    return _idx_pair(root, "train", num_classes), _idx_pair(root, "t10k", num_classes)


def fashion_mnist_root() -> pathlib.Path:
    """``$CONVFORGE_FASHION_MNIST`` when set, else Debian's ``FASHION_MNIST_ROOT``.

    Read at each call, not at import, so a program (or a test) may set the variable late.
    """
    return pathlib.Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_ROOT)


def _fashion_mnist_folder() -> pathlib.Path:
    """``fashion_mnist_root()``, or an error saying how to provide the folder."""
    root = fashion_mnist_root()
    if root.is_dir():
        return root
    origin = f"from ${FASHION_MNIST_ENV}" if os.environ.get(FASHION_MNIST_ENV) else "the default"
    raise FileNotFoundError(
        f"Fashion-MNIST: no folder {root} ({origin}); set {FASHION_MNIST_ENV}=DIR (or use "
        f"'fashion-mnist:DIR') for a folder of its IDX files, or run "
        f"'apt-get install dataset-fashion-mnist', which installs them in {FASHION_MNIST_ROOT}"
    )


def load_fashion_mnist(root: str | pathlib.Path | None = None) -> tuple[Arrays, Arrays]:
    """Fashion-MNIST (60,000 train + 10,000 test 28x28 images, 10 classes) from IDX files.

    Without ``root`` the folder is ``fashion_mnist_root()``: ``$CONVFORGE_FASHION_MNIST``, else
    where ``apt-get install dataset-fashion-mnist`` puts the files.
    """
    folder = _fashion_mnist_folder() if root is None else root
    return load_idx_dataset(folder, len(FASHION_MNIST_CLASSES))


# **** CIFAR-10, binary version ****

# A record is one label byte, then the red, green and blue planes of 1,024 bytes each, rows top
# to bottom (Krizhevsky's CIFAR page): exactly CHW, so decoding a batch is one reshape.
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR10_FOLDER = "cifar-10-batches-bin"  # what cifar-10-binary.tar.gz extracts to
_CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR10_TEST = ("test_batch.bin",)


def read_cifar10_batch(path: str | pathlib.Path, num_classes: int = 10) -> Arrays:
    """One binary batch file: pixels uint8 [N, 3, 32, 32] as stored, labels int64 [N].

    Like ``read_idx`` this returns the stored values; ``load_cifar10`` scales them to [0, 1].
    """
    path = pathlib.Path(path)
    data = _read_bytes(path)
    records, extra = divmod(len(data), CIFAR10_RECORD_BYTES)
    if extra or not records:
        raise ValueError(
            f"{path}: truncated or not a CIFAR-10 binary batch, its size must be a non-zero "
            f"multiple of {CIFAR10_RECORD_BYTES} bytes (1 label + 3072 pixel bytes a record), "
            f"but got {len(data)} = {records} x {CIFAR10_RECORD_BYTES} + {extra}"
        )
    table = np.frombuffer(data, np.uint8).reshape(records, CIFAR10_RECORD_BYTES)
    labels = table[:, 0].astype(np.int64)
    _check_labels(labels, num_classes, str(path))
    return table[:, 1:].reshape(records, 3, 32, 32).copy(), labels


def _cifar10_folder(root: pathlib.Path) -> pathlib.Path:
    """``root`` or ``root/cifar-10-batches-bin``, whichever holds the batches, all of them."""
    names = (*_CIFAR10_TRAIN, *_CIFAR10_TEST)
    tried = (root, root / CIFAR10_FOLDER)
    for folder in tried:
        if any((folder / name).is_file() for name in names):
            missing = ", ".join(name for name in names if not (folder / name).is_file())
            if missing:
                raise FileNotFoundError(f"{folder}: incomplete CIFAR-10, missing {missing}")
            return folder
    hint = ""
    if any((folder / "data_batch_1").is_file() for folder in tried):
        hint = " (data_batch_1 without .bin is the Python version; get the binary one)"
    raise FileNotFoundError(
        f"no CIFAR-10 binary batches, tried {' and '.join(str(f / names[0]) for f in tried)}{hint}"
    )


def _cifar10_classes(folder: pathlib.Path) -> tuple[str, ...]:
    """Names from ``batches.meta.txt`` (one a line, blank lines ignored), else the standard ten."""
    meta = folder / "batches.meta.txt"
    if not meta.is_file():
        return CIFAR10_CLASSES
    names = tuple(line.strip() for line in meta.read_text("utf-8").splitlines() if line.strip())
    if not names:
        raise ValueError(f"{meta}: no class names, expected one a line")
    return names


def _cifar10_split(
    folder: pathlib.Path, names: tuple[str, ...], classes: tuple[str, ...]
) -> Dataset:
    batches = [read_cifar10_batch(folder / name, len(classes)) for name in names]
    pixels = np.concatenate([pixels for pixels, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return Dataset(pixels / np.float32(255.0), labels, classes)


def load_cifar10(root: str | pathlib.Path) -> tuple[Dataset, Dataset]:
    """(train, test) CIFAR-10: 50,000 + 10,000 RGB 32x32 images, float32 [N, 3, 32, 32].

    ``root`` holds the "CIFAR-10 binary version" files (``data_batch_1.bin`` ..
    ``data_batch_5.bin``, ``test_batch.bin``) or their ``cifar-10-batches-bin/`` folder. Class
    names come from ``batches.meta.txt`` when present, else ``CIFAR10_CLASSES``.
    """
    folder = _cifar10_folder(pathlib.Path(root))
    classes = _cifar10_classes(folder)
    return (
        _cifar10_split(folder, _CIFAR10_TRAIN, classes),
        _cifar10_split(folder, _CIFAR10_TEST, classes),
    )


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


def _idx_datasets(root: pathlib.Path, classes: tuple[str, ...]) -> tuple[Dataset, Dataset]:
    (tx, ty), (vx, vy) = load_idx_dataset(root, len(classes))
    return Dataset(tx, ty, classes), Dataset(vx, vy, classes)


# The ``name:DIR`` forms: a dataset with known classes, read from a folder the caller names.
_FOLDER_LOADERS: dict[str, Callable[[pathlib.Path], tuple[Dataset, Dataset]]] = {
    "mnist": lambda root: _idx_datasets(root, DIGIT_CLASSES),
    "fashion-mnist": lambda root: _idx_datasets(root, FASHION_MNIST_CLASSES),
    "cifar10": load_cifar10,
}
# What ``load_dataset`` accepts, for its errors and the command line's help.
DATASET_FORMS = (
    "digits",
    "fashion-mnist[:DIR]",
    "mnist:DIR",
    "cifar10:DIR",
    "a directory (IDX files, train/ and test/ image folders, or one image folder)",
)


def _named_folder(name_or_path: str | pathlib.Path) -> tuple[str, pathlib.Path] | None:
    """(name, folder) of a ``name:DIR`` form with a known name, else None (maybe a directory)."""
    if not isinstance(name_or_path, str):
        return None
    name, colon, folder = name_or_path.partition(":")
    if not colon or name not in _FOLDER_LOADERS:
        return None
    if not folder:
        raise ValueError(f"dataset {name_or_path!r} names no folder, the form is {name}:DIR")
    root = pathlib.Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {name_or_path!r}: no folder {root}")
    return name, root


def _unknown_dataset(name_or_path: str | pathlib.Path) -> ValueError:
    prefix, colon, _ = str(name_or_path).partition(":")
    named = colon and prefix.replace("-", "").replace("_", "").isalnum()
    reason = f"unknown dataset name {prefix!r}" if named else "no such name or directory"
    return ValueError(
        f"dataset must be one of {', '.join(DATASET_FORMS)}, but got {str(name_or_path)!r} "
        f"({reason})"
    )


def load_dataset(
    name_or_path: str | pathlib.Path,
    *,
    size: tuple[int, int] | None = None,
    channels: int = 3,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """(train, test) datasets from a name, a ``name:DIR`` or a directory (``DATASET_FORMS``).

    - ``"digits"``: scikit-learn's digits.
    - ``"fashion-mnist"``: its IDX files in ``$CONVFORGE_FASHION_MNIST``, else in Debian's
      ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
    - ``"fashion-mnist:DIR"``, ``"mnist:DIR"``: the IDX files in DIR, with their class names.
    - ``"cifar10:DIR"``: CIFAR-10's binary version in DIR or ``DIR/cifar-10-batches-bin``.
    - A directory: IDX files (``train-*`` and ``t10k-*``, classes named by number),
      ``train/`` and ``test/`` (or ``val/``) image folders, or one image folder.

    Sources without a test split (digits, a single image folder) hold out ``test_fraction`` of
    the samples, chosen by ``seed``. ``size`` and ``channels`` apply to image folders only.
    A name is tried before a directory, so a folder called ``mnist:x`` needs a ``./`` prefix.
    """
    if name_or_path == "digits":
        x, y = load_digits()
        return Dataset(x, y, DIGIT_CLASSES).split(test_fraction, seed)
    if name_or_path == "fashion-mnist":
        return _idx_datasets(_fashion_mnist_folder(), FASHION_MNIST_CLASSES)
    named = _named_folder(name_or_path)
    if named is not None:
        name, root = named
        return _FOLDER_LOADERS[name](root)
    root = pathlib.Path(name_or_path)
    if not root.is_dir():
        raise _unknown_dataset(name_or_path)
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
