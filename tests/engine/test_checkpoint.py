"""Checkpoints: exact round trips, atomic replacement, and a clear ValueError for every bad file."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from engine import checkpoint as C

METADATA = {
    "model": {"name": "resnet18", "args": {"num_classes": 10, "zero_init_residual": True}},
    "input_shape": [3, 32, 32],
    "epoch": 7,
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"type": "CosineAnnealingLR", "lr": 0.0975528258147577, "best": "inf"},
    "big": 2**70,
    "tiny": 1e-300,
    "note": "résumé ✓",
    "none": None,
    "flags": [True, False],
}


def _tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    floats = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    floats.flat[:3] = [np.nan, np.inf, -0.0]  # bit patterns must survive too
    return {
        "conv1.weight": floats,
        "fc.weight": rng.standard_normal((10, 5)),
        "fc.weight.T": rng.standard_normal((5, 10)).T,  # a non-contiguous view
        "bn.num_batches_tracked": np.array(12345678901, dtype=np.int64),
        "labels": rng.integers(-(2**62), 2**62, size=17, dtype=np.int64),
        "empty": np.zeros((0, 4), np.float32),
        "mask": rng.random(6) < 0.5,
        "big_endian": np.arange(5, dtype=">f8"),
    }


def _assert_bit_exact(loaded: dict[str, np.ndarray], saved: dict[str, np.ndarray]) -> None:
    assert sorted(loaded) == sorted(saved)
    for name, array in saved.items():
        expected = array.astype(array.dtype.newbyteorder("<"), order="C")
        got = loaded[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert got.tobytes() == expected.tobytes(), name


def _saved(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "model.ckpt"
    tensors = _tensors(rng)
    C.save_checkpoint(path, tensors, METADATA)
    return path, tensors


# **** round trip ****


def test_round_trip_is_bit_exact(tmp_path, rng):
    path, tensors = _saved(tmp_path, rng)
    loaded, metadata = C.load_checkpoint(path)
    _assert_bit_exact(loaded, tensors)
    assert metadata == METADATA
    assert os.listdir(tmp_path) == ["model.ckpt"], "no temporary file left behind"


def test_file_is_plain_safetensors(tmp_path, rng):
    path, tensors = _saved(tmp_path, rng)
    _assert_bit_exact(safetensors.numpy.load_file(path), tensors)


def test_overwrite_replaces_the_old_checkpoint(tmp_path, rng):
    path, _ = _saved(tmp_path, rng)
    C.save_checkpoint(path, {"w": np.ones(3)}, {"epoch": 8})
    loaded, metadata = C.load_checkpoint(path)
    assert list(loaded) == ["w"] and metadata == {"epoch": 8}


def test_empty_checkpoint(tmp_path):
    C.save_checkpoint(tmp_path / "empty.ckpt", {}, {})
    assert C.load_checkpoint(tmp_path / "empty.ckpt") == ({}, {})


def test_bad_inputs_raise_type_error(tmp_path):
    with pytest.raises(TypeError, match="must be JSON-serialisable"):
        C.save_checkpoint(tmp_path / "a.ckpt", {}, {"epoch": np.int64(3)})
    with pytest.raises(TypeError, match="must map str to numpy.ndarray, but got str -> list"):
        C.save_checkpoint(tmp_path / "a.ckpt", {"w": [1.0]}, {})
    with pytest.raises(TypeError, match="tensor 'w' has dtype object, which safetensors cannot"):
        C.save_checkpoint(tmp_path / "a.ckpt", {"w": np.zeros(2, object)}, {})
    with pytest.raises(TypeError, match="cannot store these checkpoint tensors: .*complex128"):
        C.save_checkpoint(tmp_path / "a.ckpt", {"w": np.zeros(2, np.complex128)}, {})
    assert os.listdir(tmp_path) == []


# **** atomicity ****


def _write_half_then_fail(error: BaseException):
    def write_all(fd: int, data: memoryview) -> None:
        os.write(fd, data[: len(data) // 2])
        raise error

    return write_all


@pytest.mark.parametrize(
    "error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=repr
)
def test_failed_write_keeps_the_old_checkpoint(tmp_path, rng, monkeypatch, error):
    path, tensors = _saved(tmp_path, rng)
    before = path.read_bytes()
    monkeypatch.setattr(C, "_write_all", _write_half_then_fail(error))
    with pytest.raises(type(error)):
        C.save_checkpoint(path, {"w": np.ones(1000)}, {"epoch": 8})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.ckpt"], "the partial temporary file is removed"
    _assert_bit_exact(C.load_checkpoint(path)[0], tensors)


def test_failed_fsync_keeps_the_old_checkpoint(tmp_path, rng, monkeypatch):
    path, _ = _saved(tmp_path, rng)
    before = path.read_bytes()

    def fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="Input/output error"):
        C.save_checkpoint(path, {"w": np.ones(1000)}, {"epoch": 8})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.ckpt"]


_KILLED_MID_WRITE = """
import os, signal, sys
import numpy as np
from engine import checkpoint
checkpoint.save_checkpoint(sys.argv[1], {"w": np.zeros(1_000_000)}, {"step": 0})

def write_half_then_die(fd, data):
    os.write(fd, data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

checkpoint._write_all = write_half_then_die
checkpoint.save_checkpoint(sys.argv[1], {"w": np.ones(1_000_000)}, {"step": 1})
"""

_SAVE_FOREVER = """
import sys
import numpy as np
from engine.checkpoint import save_checkpoint
weights = np.empty(8_000_000)  # 64 MB: much of the time goes into writing it
for step in range(1_000_000):
    weights.fill(step)
    save_checkpoint(sys.argv[1], {"w": weights}, {"step": step})
"""


def _python(script: str, path: Path) -> subprocess.Popen:
    root = Path(C.__file__).resolve().parents[1]
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(path)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def test_process_killed_mid_write_leaves_the_old_checkpoint(tmp_path):
    path = tmp_path / "model.ckpt"
    process = _python(_KILLED_MID_WRITE, path)
    assert process.wait(timeout=120) == -signal.SIGKILL
    tensors, metadata = C.load_checkpoint(path)
    assert metadata == {"step": 0} and not tensors["w"].any()
    leftovers = [name for name in os.listdir(tmp_path) if name != "model.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.ckpt.")
    with pytest.raises(ValueError, match="truncated"):
        C.load_checkpoint(tmp_path / leftovers[0])


def test_kill_at_a_random_moment_leaves_a_whole_checkpoint(tmp_path):
    """SIGKILL a process that saves in a loop: ``path`` holds one whole checkpoint, never a mix."""
    path = tmp_path / "model.ckpt"
    process = _python(_SAVE_FOREVER, path)
    try:
        deadline = time.monotonic() + 60
        while not path.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert path.exists(), "the saving process never wrote a checkpoint"
        time.sleep(0.3)  # a few saves in
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    tensors, metadata = C.load_checkpoint(path)
    assert np.all(tensors["w"] == metadata["step"]), "weights and metadata from one save"


# **** corrupted and foreign files ****


def _payload_start(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_truncated_file_raises_value_error_naming_it(tmp_path, rng):
    path, _ = _saved(tmp_path, rng)
    data = path.read_bytes()
    start = _payload_start(path)
    for length in (
        0,
        5,
        8,
        20,
        start - 1,
        start,
        start + 1,
        (start + len(data)) // 2,
        len(data) - 1,
    ):
        path.write_bytes(data[:length])
        with pytest.raises(ValueError, match=re.escape(str(path))) as error:
            C.load_checkpoint(path)
        assert "truncated" in str(error.value) or "not a ConvForge checkpoint" in str(error.value)


def test_flipped_payload_byte_fails_the_checksum(tmp_path, rng):
    path, _ = _saved(tmp_path, rng)
    data = path.read_bytes()
    for position in (_payload_start(path), (_payload_start(path) + len(data)) // 2, len(data) - 1):
        corrupted = bytearray(data)
        corrupted[position] ^= 0x10
        path.write_bytes(corrupted)
        with pytest.raises(ValueError, match=f"{re.escape(str(path))}: corrupted .*SHA-256"):
            C.load_checkpoint(path)


def test_every_flipped_header_byte_is_caught(tmp_path):
    """No single-bit change in the framing or header loads silently, nor raises another error."""
    path = tmp_path / "small.ckpt"
    C.save_checkpoint(path, {"b": np.arange(3.0), "a": np.ones(2, np.int64)}, {"epoch": 3})
    data = path.read_bytes()
    for position in range(_payload_start(path)):
        for bit in (0x01, 0x80):
            corrupted = bytearray(data)
            corrupted[position] ^= bit
            path.write_bytes(corrupted)
            with pytest.raises(ValueError, match=re.escape(str(path))):
                C.load_checkpoint(path)


def test_foreign_files_raise_value_error(tmp_path, rng):
    foreign = {
        "random.bin": rng.bytes(4096),
        "pickle.pkl": pickle.dumps({"w": np.ones(3)}),
        "text.json": json.dumps({"w": [1, 2, 3]}).encode(),
        "empty": b"",
        "plain.safetensors": safetensors.numpy.save({"w": np.ones(3)}, metadata={"k": "v"}),
    }
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"w": torch.ones(3)}, tmp_path / "torch.pt")
    for name in [*foreign, "torch.pt"]:
        path = tmp_path / name
        with pytest.raises(ValueError, match=f"{re.escape(str(path))}: not a ConvForge"):
            C.load_checkpoint(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.load_checkpoint(tmp_path / "nope.ckpt")


# **** RNG state ****


def _json_integers(value: object) -> list[int]:
    if isinstance(value, dict):
        return [i for item in value.values() for i in _json_integers(item)]
    if isinstance(value, list):
        return [i for item in value for i in _json_integers(item)]
    return [value] if isinstance(value, int) else []


@pytest.mark.parametrize(
    "bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64]
)
def test_rng_state_json_continues_the_stream(bit_generator):
    rng = np.random.Generator(bit_generator(20240611))
    rng.standard_normal(11)
    rng.integers(0, 10, size=3, dtype=np.uint32)  # leaves a buffered 32-bit half (has_uint32)
    text = json.dumps(C.get_rng_state(rng), allow_nan=False)
    assert all(abs(i) < 2**53 for i in _json_integers(json.loads(text))), "exact in any parser"
    resumed = np.random.Generator(bit_generator())
    C.set_rng_state(resumed, json.loads(text))
    for draw in (
        lambda g: g.integers(0, 1000, size=7, dtype=np.uint32),
        lambda g: g.standard_normal(100),
        lambda g: g.random(33),
        lambda g: g.permutation(50),
    ):
        np.testing.assert_array_equal(draw(resumed), draw(rng))


def test_rng_state_through_a_checkpoint(tmp_path):
    rng = np.random.default_rng(7)
    rng.random(5)
    C.save_checkpoint(tmp_path / "r.ckpt", {}, {"rng": C.get_rng_state(rng)})
    resumed = np.random.default_rng()
    C.set_rng_state(resumed, C.load_checkpoint(tmp_path / "r.ckpt")[1]["rng"])
    np.testing.assert_array_equal(resumed.random(1000), rng.random(1000))


def test_rng_state_for_another_bit_generator_is_refused():
    state = C.get_rng_state(np.random.Generator(np.random.MT19937(1)))
    with pytest.raises(ValueError):
        C.set_rng_state(np.random.default_rng(), state)
