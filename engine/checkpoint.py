"""Checkpoints: one safetensors file with JSON metadata, written atomically, checked on load.

Why not pickle: loading a pickle runs code from the file, and its contents depend on class
layouts that change. A checkpoint here is data only:

    [8-byte header length][safetensors JSON header][tensor bytes]

The header's ``__metadata__`` map (safetensors allows str -> str there) holds three strings:
``format`` (``"convforge-checkpoint/1"``), ``metadata`` (the caller's dict as JSON: model name and
arguments, input shape, optimizer scalars, schedule state, epoch, RNG state, ...) and ``sha256``,
a digest of that JSON and of every tensor's name, dtype, shape and bytes. ``load_checkpoint``
recomputes the digest, so a truncated, corrupted or foreign file raises ``ValueError`` naming
the file and the fault instead of loading wrong numbers.

Atomic: ``save_checkpoint`` writes a hidden temporary file beside ``path``, fsyncs it, then
``os.replace``-s it over ``path`` (atomic on POSIX within a file system) and fsyncs the
directory. A crash at any point leaves ``path`` holding the old checkpoint or the new one, never
a mix; a process killed mid-save may leave its ``.<name>.*.tmp`` file behind.

Metadata comes back as ``json.loads`` gives it: tuples become lists and dict keys strings.
``get_rng_state`` / ``set_rng_state`` turn a NumPy ``Generator``'s state (128-bit integers,
uint64 arrays) into JSON that any parser reads exactly, so a resumed run draws the same numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

FORMAT = "convforge-checkpoint/1"
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit

# **** Save ****


def save_checkpoint(
    path: str | os.PathLike[str], tensors: dict[str, np.ndarray], metadata: dict[str, Any]
) -> None:
    """Write ``tensors`` and JSON ``metadata`` to ``path`` atomically, replacing any old file.

    Args:
        path: the checkpoint file; its directory must exist.
        tensors: weights, optimizer slots, BN statistics, ... by name. Any layout or byte
            order is accepted; they are stored C-contiguous, little-endian.
        metadata: a JSON-serialisable dict (``TypeError`` otherwise).
    """
    path = Path(path)
    arrays = {name: _canonical(name, array) for name, array in tensors.items()}
    try:
        metadata_json = json.dumps(metadata)
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {error}") from error
    header = {
        "format": FORMAT,
        "metadata": metadata_json,
        "sha256": _digest(metadata_json, arrays),
    }
    try:
        blob = safetensors.numpy.save(arrays, metadata=header)
    except safetensors.SafetensorError as error:
        raise TypeError(f"cannot store these checkpoint tensors: {error}") from error
    write_atomically(path, blob)


def _canonical(name: str, array: np.ndarray) -> np.ndarray:
    # safetensors reads ``ctypes.data`` raw: a non-contiguous view would be stored scrambled
    if not isinstance(name, str) or not isinstance(array, np.ndarray):
        raise TypeError(
            f"checkpoint tensors must map str to numpy.ndarray, but got "
            f"{type(name).__name__} -> {type(array).__name__} for {name!r}"
        )
    if array.dtype.kind not in "biufc":
        raise TypeError(
            f"checkpoint tensor {name!r} has dtype {array.dtype}, which safetensors cannot store"
        )
    # astype, not ascontiguousarray, which turns a 0-d array into shape (1,)
    return array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)


def _digest(metadata_json: str, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the metadata JSON, then per tensor (by name) its description and bytes."""
    digest = hashlib.sha256(metadata_json.encode())
    for name in sorted(arrays):
        array = arrays[name]
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def write_atomically(path: Path, blob: bytes) -> None:
    """Write ``blob`` beside ``path``, flush it to disk, rename it over ``path``, flush the
    folder: a reader sees the old file or the whole new one, never a part."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never clobber another writer's file; mode 0o666 lets the umask decide, as open() does
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            _write_all(fd, memoryview(blob))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _fsync_directory(directory: Path) -> None:
    # makes the rename itself durable; some file systems refuse to fsync a directory
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# **** Load ****


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``; returns ``(tensors, metadata)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, corrupted, or not a ConvForge checkpoint; the message
            names the file and what is wrong.
    """
    path = Path(path)
    header = _read_header(path)
    try:
        tensors = safetensors.numpy.load_file(path)
    except (safetensors.SafetensorError, ValueError, TypeError) as error:
        raise ValueError(
            f"{path}: corrupted checkpoint, safetensors cannot read it: {error}"
        ) from error
    if _digest(header["metadata"], tensors) != header["sha256"]:
        raise ValueError(
            f"{path}: corrupted checkpoint, the SHA-256 of its tensors and metadata does not "
            "match the one stored at save time"
        )
    return tensors, json.loads(header["metadata"])


def _read_header(path: Path) -> dict[str, str]:
    """Check the framing and the format marker; return the ``__metadata__`` map."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        header_bytes = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < header_bytes <= min(size - 8, _MAX_HEADER_BYTES):
            raise ValueError(
                f"{path}: not a ConvForge checkpoint, or truncated: {size} bytes, and the first "
                f"8 do not give the length of a safetensors header that fits in the file"
            )
        raw = file.read(header_bytes)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path}: not a ConvForge checkpoint: header is not JSON ({error})"
        ) from error
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(
            f"{path}: not a ConvForge checkpoint: expected format {FORMAT!r} in the safetensors "
            f"metadata, but got {found!r}"
        )
    if not isinstance(meta.get("metadata"), str) or not isinstance(meta.get("sha256"), str):
        raise ValueError(f"{path}: corrupted checkpoint: its header lacks metadata or sha256")
    try:
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        described = max(ends, default=0)
    except (KeyError, TypeError, IndexError) as error:
        raise ValueError(f"{path}: corrupted checkpoint: malformed tensor entry") from error
    payload = size - 8 - header_bytes
    if described != payload:
        raise ValueError(
            f"{path}: truncated or corrupted checkpoint: the header describes {described!r} bytes "
            f"of tensors, but {payload} follow it"
        )
    return meta


# **** RNG state as JSON ****


def get_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """``rng``'s bit-generator state as strict JSON: big integers and arrays become strings.

    Python's ``json`` would keep 128-bit integers, but most other parsers round them to doubles,
    and MT19937/Philox/SFC64 states hold uint64 arrays that ``json`` rejects.
    """
    return _to_json(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore a ``get_rng_state`` result; ``rng`` must use the same bit generator (PCG64, ...)."""
    rng.bit_generator.state = _from_json(state)


def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return {"ndarray": value.dtype.str, "values": [str(item) for item in value.tolist()]}
    if isinstance(value, int) and abs(value) >= 2**53:  # beyond a double's exact integers
        return {"int": str(value)}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"int"}:
        return int(value["int"])
    if isinstance(value, dict) and set(value) == {"ndarray", "values"}:
        return np.array([int(item) for item in value["values"]], dtype=value["ndarray"])
    if isinstance(value, dict):
        return {key: _from_json(item) for key, item in value.items()}
    return value
