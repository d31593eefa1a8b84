"""Dataset loaders, the IDX and CIFAR-10 readers, seeded batching, splits and normalisation.

IDX files and CIFAR-10 batches are written here byte by byte from the formats' definitions (not
by engine code), so a round trip checks the readers against the spec. Only the last Fashion-MNIST
test reads the real files, from Debian's ``dataset-fashion-mnist`` package, which CI installs;
every other test generates its data in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import pathlib
import struct

import numpy as np
import pytest
from PIL import Image

from engine import data
from engine.data import Dataset, Normalize

IDX_CODES = {
    np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
    np.float64: 0x0E,
}  # fmt: skip


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: 00 00 <type> <ndim>, big-endian uint32 dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype.type], array.ndim)
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def indexed_dataset(n: int, channels: int = 1, size: int = 2) -> Dataset:
    """Sample i is filled with i and labelled i, so batches show which samples they hold."""
    x = np.broadcast_to(
        np.arange(n, dtype=np.float32)[:, None, None, None], (n, channels, size, size)
    )
    return Dataset(x.copy(), np.arange(n, dtype=np.int64), tuple(str(i) for i in range(n)))


# **** scikit-learn digits ****


def test_digits_shapes_dtypes_range():
    x, y = data.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    raw, _ = data.load_digits(normalize=False)
    np.testing.assert_array_equal(raw / 16, x)


# **** IDX files ****


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32])
def test_idx_round_trip(tmp_path, rng, suffix, dtype):
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3-ubyte{suffix}", array)
    read = data.read_idx(path)
    assert read.dtype == np.dtype(dtype) and read.dtype.isnative
    np.testing.assert_array_equal(read, array)


def test_idx_one_dimensional_labels(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "l", labels)), labels)


@pytest.mark.parametrize(
    "name, corrupt, message",
    [
        ("short", lambda raw: raw[:-3], "truncated"),
        ("long", lambda raw: raw + b"\0", "trailing bytes"),
        ("header", lambda raw: raw[:9], "truncated IDX header"),
        ("magic", lambda raw: b"\x01" + raw[1:], "not an IDX file"),
        ("type", lambda raw: raw[:2] + b"\x07" + raw[3:], "not an IDX file"),
        ("empty", lambda raw: b"", "not an IDX file"),
        ("gz-cut.gz", lambda raw: gzip.compress(raw)[:-10], "gzip"),
        ("gz-bits.gz", lambda raw: gzip.compress(raw)[:12] + b"\xff" * 20, "gzip"),
    ],
)
def test_idx_corrupt_names_file(tmp_path, name, corrupt, message):
    path = tmp_path / name
    path.write_bytes(corrupt(idx_bytes(np.zeros((2, 3, 3), np.uint8))))
    with pytest.raises(ValueError, match=message) as error:
        data.read_idx(path)
    assert str(path) in str(error.value)


def write_idx_split(root: pathlib.Path, split: str, n: int, rng, gz: bool, dot: bool = False):
    sep, ext = ("." if dot else "-"), (".gz" if gz else "")
    images = rng.integers(0, 256, (n, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, n, dtype=np.uint8)
    write_idx(root / f"{split}-images{sep}idx3-ubyte{ext}", images)
    write_idx(root / f"{split}-labels{sep}idx1-ubyte{ext}", labels)
    return images, labels


@pytest.mark.parametrize("gz, dot", [(True, False), (False, False), (False, True)])
def test_load_idx_dataset(tmp_path, rng, gz, dot):
    train = write_idx_split(tmp_path, "train", 6, rng, gz, dot)
    test = write_idx_split(tmp_path, "t10k", 4, rng, gz, dot)
    for (x, y), (images, labels) in zip(
        data.load_idx_dataset(tmp_path), (train, test), strict=True
    ):
        assert x.dtype == np.float32 and x.shape == (len(images), 1, 5, 4)
        assert y.dtype == np.int64
        np.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, labels)


def test_load_idx_dataset_missing_and_mismatched(tmp_path, rng):
    write_idx_split(tmp_path, "train", 6, rng, gz=True)
    with pytest.raises(FileNotFoundError, match="t10k images.*t10k-images-idx3-ubyte.gz"):
        data.load_idx_dataset(tmp_path)
    write_idx_split(tmp_path, "t10k", 4, rng, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="t10k images must be"):
        data.load_idx_dataset(tmp_path)


@pytest.mark.skipif(
    not data.fashion_mnist_root().is_dir(),
    reason=f"Fashion-MNIST not installed at {data.fashion_mnist_root()} "
    "(apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist():
    (train_x, train_y), (test_x, test_y) = data.load_fashion_mnist()
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert train_x.dtype == test_x.dtype == np.float32
    assert train_y.dtype == test_y.dtype == np.int64
    assert train_x.min() == 0.0 and train_x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(train_y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test_y), [1000] * 10)
    assert len(data.FASHION_MNIST_CLASSES) == 10


def test_idx_labels_checked_against_classes(tmp_path, rng):
    write_idx_split(tmp_path, "train", 6, rng, gz=False)
    write_idx_split(tmp_path, "t10k", 4, rng, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 7, 7], np.uint8))
    data.load_idx_dataset(tmp_path)  # without num_classes any label goes
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: label 7 of record 2 .* 0\.\.4"):
        data.load_idx_dataset(tmp_path, num_classes=5)


def fashion_folder(root: pathlib.Path, rng) -> pathlib.Path:
    """A small Fashion-MNIST lookalike: gzipped IDX files under the Debian names."""
    root.mkdir(parents=True, exist_ok=True)
    write_idx_split(root, "train", 6, rng, gz=True)
    write_idx_split(root, "t10k", 4, rng, gz=True)
    return root


def test_fashion_mnist_folder_from_environment(tmp_path, rng, monkeypatch):
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(fashion_folder(tmp_path / "fm", rng)))
    assert data.fashion_mnist_root() == tmp_path / "fm"
    train, test = data.load_dataset("fashion-mnist")
    assert (len(train), len(test), train.sample_shape) == (6, 4, (1, 5, 4))
    assert train.classes == test.classes == data.FASHION_MNIST_CLASSES
    (train_x, _), _ = data.load_fashion_mnist()
    np.testing.assert_array_equal(train_x, train.x)


def test_fashion_mnist_default_folder(monkeypatch):
    monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)
    assert data.fashion_mnist_root() == pathlib.Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setenv(data.FASHION_MNIST_ENV, "")  # set but empty: the default too
    assert data.fashion_mnist_root() == pathlib.Path(data.FASHION_MNIST_ROOT)


@pytest.mark.parametrize("from_env", [True, False])
def test_fashion_mnist_missing_folder_says_how_to_get_it(tmp_path, monkeypatch, from_env):
    missing = tmp_path / "absent"
    if from_env:
        monkeypatch.setenv(data.FASHION_MNIST_ENV, str(missing))
    else:
        monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)
        monkeypatch.setattr(data, "FASHION_MNIST_ROOT", str(missing))
    for load in (lambda: data.load_dataset("fashion-mnist"), data.load_fashion_mnist):
        with pytest.raises(FileNotFoundError) as error:
            load()
        message = str(error.value)
        assert str(missing) in message and ("from $" if from_env else "the default") in message
        assert f"set {data.FASHION_MNIST_ENV}=DIR" in message
        assert "apt-get install dataset-fashion-mnist" in message


# **** Image folders ****

COLOURS = {"cat": (255, 0, 128), "dog": (10, 200, 30)}


def write_folder(root: pathlib.Path, sizes: list[tuple[int, int]]) -> None:
    """Solid-colour PNGs, one class per colour, ``sizes`` as (W, H) per image."""
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for k, size in enumerate(sizes):
            Image.new("RGB", size, colour).save(root / name / f"{k}.png")
        (root / name / "notes.txt").write_text("not an image")


def test_image_folder_rgb_resized(tmp_path):
    write_folder(tmp_path, [(6, 4), (3, 5)])
    dataset = data.load_image_folder(tmp_path, size=(4, 5), channels=3)
    assert dataset.classes == ("cat", "dog")
    assert dataset.x.shape == (4, 3, 4, 5) and dataset.x.dtype == np.float32
    np.testing.assert_array_equal(dataset.y, [0, 0, 1, 1])
    for image, label in zip(dataset.x, dataset.y, strict=True):
        colour = np.array(COLOURS[dataset.classes[label]]) / 255.0
        np.testing.assert_allclose(image, np.broadcast_to(colour[:, None, None], image.shape))


def test_image_folder_grayscale(tmp_path):
    write_folder(tmp_path, [(5, 5)])
    dataset = data.load_image_folder(tmp_path, channels=1)
    assert dataset.x.shape == (2, 1, 5, 5)
    r, g, b = COLOURS["cat"]  # Pillow's "L": ITU-R 601-2 luma, rounded to a byte
    assert dataset.x[0, 0, 0, 0] == np.float32(round((r * 299 + g * 587 + b * 114) / 1000) / 255)


def test_image_folder_errors(tmp_path):
    write_folder(tmp_path / "mixed", [(4, 4), (5, 4)])
    with pytest.raises(ValueError, match=r"1\.png: image shape .* pass size=\(H, W\)"):
        data.load_image_folder(tmp_path / "mixed")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="a: no images"):
        data.load_image_folder(tmp_path / "empty")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="x.png: cannot read image"):
        data.load_image_folder(tmp_path / "bad")


# **** CIFAR-10, binary version ****

CIFAR_BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def cifar_record(label: int, pixel) -> bytes:
    """One record from the spec: the label byte, then 1024 R, 1024 G and 1024 B bytes, each
    plane's rows top to bottom and each row left to right; ``pixel(c, row, col)`` gives a byte."""
    planes = [pixel(c, r, col) for c in range(3) for r in range(32) for col in range(32)]
    return bytes([label, *planes])


def write_cifar(folder: pathlib.Path, rng, per_batch: int = 3) -> dict[str, tuple]:
    """Every batch file with ``per_batch`` random records: {file name: (pixels, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in CIFAR_BATCHES:
        pixels = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        records = [
            cifar_record(int(label), lambda c, r, col, p=p: int(p[c, r, col]))
            for p, label in zip(pixels, labels, strict=True)
        ]
        (folder / name).write_bytes(b"".join(records))
        written[name] = (pixels, labels)
    return written


def test_cifar10_record_layout(tmp_path):
    # Two records pin every pixel's place: one stores (channel, row), the other (channel, col).
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(
        cifar_record(7, lambda c, r, col: 100 * c + r)
        + cifar_record(2, lambda c, r, col: 100 * c + col)
    )
    pixels, labels = data.read_cifar10_batch(path)
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [7, 2]
    c, r, col = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    np.testing.assert_array_equal(pixels[0], 100 * c + r)
    np.testing.assert_array_equal(pixels[1], 100 * c + col)


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
def test_load_cifar10(tmp_path, rng, subfolder):
    written = write_cifar(tmp_path / subfolder, rng)
    train, test = data.load_dataset(f"cifar10:{tmp_path}")
    assert train.x.shape == (15, 3, 32, 32) and test.x.shape == (3, 3, 32, 32)
    assert train.x.dtype == test.x.dtype == np.float32 and train.y.dtype == np.int64
    assert 0 <= train.x.min() and train.x.max() <= 1
    assert train.classes == test.classes == data.CIFAR10_CLASSES
    assert data.CIFAR10_CLASSES[:3] == ("airplane", "automobile", "bird")
    for dataset, names in ((train, CIFAR_BATCHES[:5]), (test, CIFAR_BATCHES[5:])):
        pixels = np.concatenate([written[n][0] for n in names])
        np.testing.assert_allclose(dataset.x, pixels / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(dataset.y, np.concatenate([written[n][1] for n in names]))


def test_cifar10_class_names_from_meta(tmp_path, rng):
    write_cifar(tmp_path, rng)
    names = [f"class {i}" for i in range(10)]
    (tmp_path / "batches.meta.txt").write_text("\n".join(names) + "\n\n\n")  # as shipped
    train, test = data.load_cifar10(tmp_path)
    assert train.classes == test.classes == tuple(names)
    (tmp_path / "batches.meta.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="batches.meta.txt: no class names"):
        data.load_cifar10(tmp_path)


def test_cifar10_bad_batches_name_the_file(tmp_path, rng):
    write_cifar(tmp_path, rng)
    batch = tmp_path / "data_batch_3.bin"
    good = batch.read_bytes()
    batch.write_bytes(good[:-5])
    with pytest.raises(ValueError, match=r"data_batch_3.bin: truncated .* multiple of 3073") as e:
        data.load_dataset(f"cifar10:{tmp_path}")
    assert f"{3 * 3073 - 5} = 2 x 3073 + 3068" in str(e.value)
    batch.write_bytes(b"")
    with pytest.raises(ValueError, match=r"data_batch_3.bin: truncated .* but got 0 ="):
        data.load_cifar10(tmp_path)
    batch.write_bytes(good[:3073] + bytes([10]) + good[3074:])  # record 1 labelled 10
    with pytest.raises(ValueError, match=r"data_batch_3.bin: label 10 of record 1 .* 0\.\.9"):
        data.load_cifar10(tmp_path)
    # With three class names in the meta file, labels must be 0..2.
    batch.write_bytes(cifar_record(2, lambda *_: 0) + cifar_record(5, lambda *_: 0))
    (tmp_path / "batches.meta.txt").write_text("a\nb\nc\n")
    for name in CIFAR_BATCHES:
        if name != batch.name:
            (tmp_path / name).write_bytes(cifar_record(0, lambda *_: 0))
    with pytest.raises(ValueError, match=r"data_batch_3.bin: label 5 of record 1 .* 0\.\.2"):
        data.load_cifar10(tmp_path)


def test_cifar10_missing_files(tmp_path, rng):
    with pytest.raises(FileNotFoundError) as error:
        data.load_cifar10(tmp_path)
    assert str(tmp_path / "data_batch_1.bin") in str(error.value)
    assert str(tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin") in str(error.value)
    (tmp_path / "data_batch_1").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match="Python version"):
        data.load_cifar10(tmp_path)
    write_cifar(tmp_path / "cifar-10-batches-bin", rng)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").unlink()
    with pytest.raises(
        FileNotFoundError, match="cifar-10-batches-bin: incomplete CIFAR-10, missing data_batch_4"
    ) as error:
        data.load_dataset(f"cifar10:{tmp_path}")
    assert "test_batch.bin" in str(error.value)


# **** load_dataset ****


def test_load_dataset_digits():
    train, test = data.load_dataset("digits", test_fraction=0.25, seed=3)
    assert len(train) + len(test) == 1797 and len(test) == round(0.25 * 1797)
    assert train.classes == tuple("0123456789") and train.sample_shape == (1, 8, 8)


def test_load_dataset_directories(tmp_path, rng):
    (tmp_path / "idx").mkdir()
    write_idx_split(tmp_path / "idx", "train", 6, rng, gz=True)
    write_idx_split(tmp_path / "idx", "t10k", 4, rng, gz=True)
    train, test = data.load_dataset(tmp_path / "idx")
    assert (len(train), len(test)) == (6, 4) and train.sample_shape == (1, 5, 4)

    write_folder(tmp_path / "layout" / "train", [(4, 4)] * 3)
    write_folder(tmp_path / "layout" / "val", [(4, 4)])
    train, test = data.load_dataset(tmp_path / "layout", size=(2, 2), channels=1)
    assert (len(train), len(test), train.sample_shape) == (6, 2, (1, 2, 2))

    write_folder(tmp_path / "single", [(4, 4)] * 5)
    train, test = data.load_dataset(tmp_path / "single", test_fraction=0.3)
    assert (len(train), len(test)) == (7, 3) and train.classes == ("cat", "dog")

    with pytest.raises(ValueError, match="'nope'"):
        data.load_dataset("nope")


@pytest.mark.parametrize(
    "name, classes", [("mnist", data.DIGIT_CLASSES), ("fashion-mnist", data.FASHION_MNIST_CLASSES)]
)
def test_load_dataset_idx_by_name(tmp_path, rng, name, classes):
    images, labels = write_idx_split(tmp_path, "train", 6, rng, gz=False)
    write_idx_split(tmp_path, "t10k", 4, rng, gz=True)
    train, test = data.load_dataset(f"{name}:{tmp_path}")
    assert (len(train), len(test), train.sample_shape) == (6, 4, (1, 5, 4))
    assert train.classes == test.classes == classes and len(classes) == 10
    np.testing.assert_allclose(train.x[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(train.y, labels)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(6, 10, np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: label 10 of record 0"):
        data.load_dataset(f"{name}:{tmp_path}")


def test_load_dataset_named_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"'mnist:{tmp_path}/absent': no folder"):
        data.load_dataset(f"mnist:{tmp_path}/absent")
    with pytest.raises(ValueError, match="names no folder, the form is cifar10:DIR"):
        data.load_dataset("cifar10:")
    with pytest.raises(FileNotFoundError, match="no train images IDX file"):
        data.load_dataset(f"fashion-mnist:{tmp_path}")


@pytest.mark.parametrize(
    "form, reason",
    [
        ("svhn:/data/svhn", "unknown dataset name 'svhn'"),
        ("cifar100", "no such name or directory"),
        ("/no/such/dir", "no such name or directory"),
    ],
)
def test_load_dataset_unknown_form_lists_the_accepted_ones(form, reason):
    with pytest.raises(ValueError) as error:
        data.load_dataset(form)
    message = str(error.value)
    assert repr(form) in message and reason in message
    for accepted in ("digits", "fashion-mnist[:DIR]", "mnist:DIR", "cifar10:DIR", "a directory"):
        assert accepted in message


def test_load_dataset_directory_with_a_colon(tmp_path, rng):
    folder = tmp_path / "runs:1"  # not a name:DIR form, since "/...runs" is no dataset name
    folder.mkdir()
    write_idx_split(folder, "train", 6, rng, gz=False)
    write_idx_split(folder, "t10k", 4, rng, gz=False)
    train, test = data.load_dataset(str(folder))
    assert (len(train), len(test)) == (6, 4)


# **** Non-finite inputs ****


def test_dataset_refuses_non_finite_images():
    x = np.zeros((8, 1, 2, 2), np.float32)
    x[5, 0, 1, 1] = np.inf
    x[3, 0, 0, 1] = np.nan
    x[3, 0, 1, 0] = -np.inf
    with pytest.raises(
        ValueError, match=r"Dataset x: 3 non-finite .* \(1 NaN, 2 inf\), .* sample 3 "
    ):
        Dataset(x, np.zeros(8, np.int64), ("a",))
    Dataset(x[:3], np.zeros(3, np.int64), ("a",))  # the samples before are fine
    Dataset(np.zeros((2, 1, 2, 2), np.uint8), np.zeros(2, np.int64), ("a",))  # integers always are


@pytest.mark.parametrize("dtype, bad", [(np.float32, np.nan), (np.float64, 1e300)])
def test_idx_non_finite_images_name_the_file(tmp_path, rng, dtype, bad):
    """NaN in float IDX images, or a float64 too large for float32, fails at load time."""
    write_idx_split(tmp_path, "train", 6, rng, gz=False)
    write_idx_split(tmp_path, "t10k", 4, rng, gz=False)
    images = rng.random((4, 5, 4)).astype(dtype)
    images[2, 1, 1] = bad
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: 1 non-finite .* sample 2 of 4"):
        data.load_dataset(tmp_path)


# **** Batching, splits, normalisation ****


@pytest.mark.parametrize("drop_last", [True, False])
def test_batches_cover_each_sample_once(drop_last):
    dataset, batch = indexed_dataset(23), 5
    seen = []
    for x, y in dataset.batches(batch, seed=1, epoch=2, drop_last=drop_last):
        assert x.shape[1:] == (1, 2, 2) and len(x) == len(y)
        assert len(y) == batch or not drop_last
        np.testing.assert_array_equal(x[:, 0, 0, 0], y)  # images travel with their labels
        seen.extend(y.tolist())
    assert len(seen) == dataset.num_batches(batch, drop_last) * batch - (0 if drop_last else 2)
    assert len(set(seen)) == len(seen)
    if not drop_last:
        assert sorted(seen) == list(range(23))


def test_batches_pure_function_of_seed_and_epoch():
    dataset = indexed_dataset(40)

    def order(seed: int, epoch: int, **kwargs) -> list[int]:
        return [int(v) for _, y in dataset.batches(8, seed=seed, epoch=epoch, **kwargs) for v in y]

    assert order(0, 3) == order(0, 3) == data.epoch_order(40, 0, 3).tolist()
    assert order(0, 3) != order(0, 4) and order(0, 3) != order(1, 3)
    assert order(0, 3, start=2) == order(0, 3)[16:]  # resuming mid-epoch
    assert order(0, 3, shuffle=False) == list(range(40))


def test_batch_size_checked():
    with pytest.raises(ValueError, match="batch_size=0"):
        next(indexed_dataset(4).batches(0))


def test_split_sizes_disjoint_seeded():
    dataset = indexed_dataset(50)
    train, val = dataset.split(0.2, seed=5)
    assert (len(train), len(val)) == (40, 10)
    assert sorted(np.concatenate([train.y, val.y]).tolist()) == list(range(50))
    np.testing.assert_array_equal(dataset.split(0.2, seed=5)[1].y, val.y)
    assert not np.array_equal(dataset.split(0.2, seed=6)[1].y, val.y)
    for fraction in (0.0, 1.0, 0.001):
        with pytest.raises(ValueError, match="non-empty"):
            dataset.split(fraction)


def test_normalize_fit_on_train_applies_to_any_split(rng):
    x = rng.random((30, 3, 4, 4), dtype=np.float32) * np.float32([1, 5, 0.1])[:, None, None] + 2
    dataset = Dataset(x, np.zeros(30, np.int64), ("a",))
    train, val = dataset.split(0.3, seed=0)
    norm = Normalize.fit(train.x)
    normed = train.normalized(norm).x
    assert normed.dtype == np.float32
    np.testing.assert_allclose(normed.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(normed.std(axis=(0, 2, 3)), 1, rtol=1e-5)
    fit = train.x.astype(np.float64)
    expected = (val.x - fit.mean(axis=(0, 2, 3), keepdims=True)) / fit.std(
        axis=(0, 2, 3), keepdims=True
    )
    # channel 2 is 2 + 0.1 * U(0, 1): one float32 ulp of x (2.4e-7) is 8e-6 of its std (0.029)
    np.testing.assert_allclose(val.normalized(norm).x, expected, rtol=1e-4, atol=5e-5)
    constant = Normalize.fit(np.ones((2, 1, 2, 2), np.float32))
    np.testing.assert_array_equal(constant(np.ones((1, 1, 2, 2), np.float32)), 0)
    with pytest.raises(ValueError, match="3 channels"):
        norm(np.zeros((1, 1, 2, 2), np.float32))
