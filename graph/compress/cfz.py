"""The ``.cfz`` compressed model format: pruned, shared weights in Deep Compression's sparse
form, Huffman-coded, beside the model's other tensors and what rebuilds the model.

Layout (little-endian)::

    b"CFZ\\0"  u32 version  u64 header bytes  u32 CRC-32 of the header  header  sections

The header is JSON, DEFLATE-compressed (zlib), as are the code-length tables below: both are
small, but at 40x a LeNet's whole file is some 30 KB, so their bytes show.

The header holds the caller's ``metadata`` (model name, constructor arguments, input shape,
normalisation: what ``engine.checkpoint`` metadata holds), one entry per compressed layer
(shape, bits, index bits, entry count) and per dense tensor (shape, dtype), and the size and
CRC-32 of every section, in file order (the sections follow each other without gaps).
A compressed layer has five sections: its codebook (float32, ``2**bits`` values, entry 0 =
0.0), the code lengths of its weight symbols and of its gap symbols (one byte per symbol: a
canonical code is rebuilt from them; zlib), and the two bit streams (each after its u64 bit count).
Dense tensors are raw bytes.

Sparse form (Deep Compression, section 2): a layer's kept weights in C order, each stored as
the gap from the previous kept position (``gap - 1`` in ``index_bits`` bits) and its codebook
index. A gap larger than ``2**index_bits`` gets filler entries: at the largest gap, with
codebook index 0 (the value 0.0), so the fillers cost entries, as in the paper.

``pack`` returns the bytes (the engine writes them atomically); ``unpack`` checks the magic,
version, the header's and every section's checksum and bounds before decoding, and raises
``ValueError`` naming the section and what is wrong.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from numba import njit

from graph.compress.huffman import code_lengths, decode, encode
from graph.compress.kmeans import SharedWeights

MAGIC = b"CFZ\0"
VERSION = 1
_PREAMBLE = struct.Struct("<4sIQI")  # magic, version, header bytes, header CRC-32
_LAYER_SECTIONS = ("codebook", "weight_lengths", "gap_lengths", "weights", "gaps")
_LAYER_INTS = ("bits", "index_bits", "entries", "kept")


@dataclass(frozen=True)
class LayerSize:
    """What one compressed layer costs in the file: its sections' bytes, by name."""

    name: str
    weights: int  # dense weight count
    kept: int
    entries: int  # kept weights plus fillers
    bits: int
    index_bits: int
    section_bytes: dict[str, int]

    @property
    def nbytes(self) -> int:
        return sum(self.section_bytes.values())


@dataclass(frozen=True)
class Unpacked:
    tensors: dict[str, np.ndarray]  # every tensor, the compressed layers decoded dense
    metadata: dict
    layers: list[LayerSize]
    header_bytes: int


# **** Sparse entries ****


@njit(cache=True)
def _sparse_entries(kept, labels, index_bits):
    """(gap symbols, weight symbols) of the kept positions, with fillers (see the module)."""
    widest = 1 << index_bits
    positions = np.flatnonzero(kept)
    count = 0
    previous = -1
    for p in positions:
        count += (p - previous - 1) // widest + 1
        previous = p
    gaps = np.empty(count, np.int64)
    symbols = np.empty(count, np.int64)
    previous, j = -1, 0
    for i in range(positions.size):
        gap = positions[i] - previous
        while gap > widest:
            gaps[j], symbols[j] = widest - 1, 0
            gap -= widest
            j += 1
        gaps[j], symbols[j] = gap - 1, labels[i]
        previous = positions[i]
        j += 1
    return gaps, symbols


@njit(cache=True)
def _scatter(gaps, symbols, codebook, out):
    """Dense weights from the entries; -1 if an entry lands past the end."""
    position = -1
    for j in range(gaps.size):
        position += gaps[j] + 1
        if position >= out.size:
            return -1
        out[position] = codebook[symbols[j]]
    return 0


# **** Pack ****


def pack(
    shared: dict[str, SharedWeights],
    dense: dict[str, np.ndarray],
    metadata: dict,
    index_bits: dict[str, int],
    huffman: bool = True,
) -> tuple[bytes, list[LayerSize]]:
    """The ``.cfz`` bytes of ``shared`` layers, ``dense`` tensors and ``metadata`` (JSON), and
    each compressed layer's size. ``huffman=False`` stores fixed-width fields instead."""
    sections: list[tuple[str, bytes]] = []
    layers, sizes = [], []
    for name, layer in shared.items():
        bits = index_bits[name]
        if not 1 <= bits <= 16:
            raise ValueError(f"{name}: index bits must be 1 to 16, but got {bits}")
        gaps, symbols = _sparse_entries(layer.mask.ravel(), layer.labels.astype(np.int64), bits)
        blobs = {"codebook": layer.codebook.astype("<f4").tobytes()}
        for field, values, alphabet in (("weight", symbols, 2**layer.bits), ("gap", gaps, 2**bits)):
            lengths = _lengths(values, alphabet, layer.bits if field == "weight" else bits, huffman)
            stream, nbits = encode(values, lengths)
            blobs[f"{field}_lengths"] = zlib.compress(lengths.tobytes(), 9)
            blobs[f"{field}s"] = struct.pack("<Q", nbits) + stream.tobytes()
        sections += [(f"{name}/{key}", blobs[key]) for key in _LAYER_SECTIONS]
        layers.append(
            {
                "name": name,
                "shape": list(layer.shape),
                "bits": layer.bits,
                "index_bits": bits,
                "entries": int(gaps.size),
                "kept": int(layer.mask.sum()),
            }
        )
        sizes.append(
            LayerSize(
                name,
                int(np.prod(layer.shape)),
                int(layer.mask.sum()),
                int(gaps.size),
                layer.bits,
                bits,
                {k: len(blobs[k]) for k in _LAYER_SECTIONS},
            )
        )
    tensors = []
    for name, array in dense.items():
        array = np.asarray(array, order="C")  # (ascontiguousarray makes a 0-d array 1-d)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        sections.append((name, little.tobytes()))
        tensors.append({"name": name, "shape": list(array.shape), "dtype": little.dtype.str})
    table = [[len(blob), zlib.crc32(blob)] for _, blob in sections]  # in file order
    header = json.dumps(
        {"metadata": metadata, "layers": layers, "dense": tensors, "sections": table},
        separators=(",", ":"),
    ).encode()
    header = zlib.compress(header, 9)
    preamble = _PREAMBLE.pack(MAGIC, VERSION, len(header), zlib.crc32(header))
    return preamble + header + b"".join(blob for _, blob in sections), sizes


def _lengths(values: np.ndarray, alphabet: int, bits: int, huffman: bool) -> np.ndarray:
    if huffman:
        return code_lengths(np.bincount(values, minlength=alphabet))
    return np.full(alphabet, bits, np.uint8)


# **** Unpack ****


def unpack(blob: bytes, source: str = "the file") -> Unpacked:
    """Decode ``.cfz`` bytes (``source`` names them in errors) to exactly the tensors packed."""
    if len(blob) < _PREAMBLE.size:
        raise ValueError(f"{source}: truncated: {len(blob)} bytes, shorter than a .cfz preamble")
    magic, version, header_bytes, header_crc = _PREAMBLE.unpack_from(blob)
    if magic != MAGIC:
        raise ValueError(f"{source}: not a .cfz file: it starts with {magic!r}, not {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"{source}: .cfz version {version}; this convforge reads {VERSION}")
    start = _PREAMBLE.size + header_bytes
    if start > len(blob):
        raise ValueError(
            f"{source}: truncated: the header needs {header_bytes} bytes, {len(blob) - 16} follow"
        )
    header = blob[_PREAMBLE.size : start]
    if zlib.crc32(header) != header_crc:
        raise ValueError(f"{source}: corrupted: the header's CRC-32 does not match")
    info = _parse_header(header, source)
    sections = _sections(info, memoryview(blob)[start:], source)
    tensors, sizes = {}, []
    for layer in info["layers"]:
        tensors[layer["name"]], size = _decode_layer(layer, sections, source)
        sizes.append(size)
    for entry in info["dense"]:
        array = np.frombuffer(sections[entry["name"]], np.dtype(entry["dtype"]))
        tensors[entry["name"]] = array.reshape(entry["shape"]).astype(array.dtype.newbyteorder("="))
    return Unpacked(tensors, info["metadata"], sizes, len(header) + _PREAMBLE.size)


def _parse_header(header: bytes, source: str) -> dict:
    """The header's JSON, checked to have the fields and types ``pack`` writes."""
    try:
        info = json.loads(zlib.decompress(header))
        layers, dense, table = info["layers"], info["dense"], info["sections"]
        fields_ok = (
            isinstance(info["metadata"], dict)
            and all(isinstance(layer[k], int) for layer in layers for k in _LAYER_INTS)
            and all(isinstance(layer["name"], str) for layer in layers + dense)
            and all(isinstance(entry["dtype"], str) for entry in dense)
            and all(isinstance(x, list) for x in [layer["shape"] for layer in layers + dense])
            and all(len(e) == 2 and all(isinstance(v, int) and v >= 0 for v in e) for e in table)
        )
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{source}: corrupted: malformed .cfz header ({error!r})") from None
    if not fields_ok:
        raise ValueError(f"{source}: corrupted: a .cfz header field has the wrong type")
    return info


def _sections(info: dict, payload: memoryview, source: str) -> dict[str, bytes]:
    """Each section's bytes by name, after checking its bounds and CRC-32."""
    names = [f"{layer['name']}/{key}" for layer in info["layers"] for key in _LAYER_SECTIONS]
    names += [entry["name"] for entry in info["dense"]]
    if len(names) != len(info["sections"]):
        raise ValueError(
            f"{source}: corrupted: the header lists {len(info['sections'])} "
            f"sections for {len(names)} parts"
        )
    sections, offset = {}, 0
    for name, (size, crc) in zip(names, info["sections"], strict=True):
        if offset + size > len(payload):
            raise ValueError(
                f"{source}: truncated: section {name} ends at byte {offset + size} of the "
                f"payload, which has {len(payload)}"
            )
        sections[name] = bytes(payload[offset : offset + size])
        if zlib.crc32(sections[name]) != crc:
            raise ValueError(f"{source}: corrupted: section {name} fails its CRC-32")
        offset += size
    if offset != len(payload):
        raise ValueError(f"{source}: corrupted: bytes follow the last section")
    return sections


def _decode_layer(layer: dict, sections: dict[str, bytes], source: str):
    name, count = layer["name"], layer["entries"]
    part = {key: sections[f"{name}/{key}"] for key in _LAYER_SECTIONS}
    codebook = np.frombuffer(part["codebook"], "<f4").astype(np.float32)
    streams = {}
    for field in ("weight", "gap"):
        try:
            lengths = np.frombuffer(zlib.decompress(part[f"{field}_lengths"]), np.uint8)
        except zlib.error as error:
            raise ValueError(f"{source}: layer {name}, {field} code lengths: {error}") from None
        raw = part[f"{field}s"]
        nbits = struct.unpack_from("<Q", raw)[0]
        try:
            streams[field] = decode(np.frombuffer(raw[8:], np.uint8), nbits, count, lengths)
        except ValueError as error:
            raise ValueError(f"{source}: layer {name}, {field} stream: {error}") from None
    if streams["weight"].size and streams["weight"].max() >= codebook.size:
        raise ValueError(f"{source}: layer {name}: a weight index lies outside its codebook")
    dense = np.zeros(int(np.prod(layer["shape"])), np.float32)
    if _scatter(streams["gap"], streams["weight"], codebook, dense) != 0:
        raise ValueError(f"{source}: layer {name}: its entries run past its {dense.size} weights")
    size = LayerSize(
        name,
        dense.size,
        layer["kept"],
        count,
        layer["bits"],
        layer["index_bits"],
        {k: len(v) for k, v in part.items()},
    )
    return dense.reshape(layer["shape"]), size
