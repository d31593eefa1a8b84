"""Canonical Huffman coding of small-integer symbols (Deep Compression, section 4).

``code_lengths`` builds the optimal prefix code's lengths from symbol counts; the code itself is
canonical (codes assigned in order of (length, symbol)), so a file needs only one length byte
per symbol to rebuild it, as DEFLATE does. The encoder and the decoder are compiled (Numba) and
linear in the number of symbols: the encoder writes each code MSB-first through a 64-bit
accumulator; the decoder reads a bit at a time, comparing against the first code of each
length. The same functions store fixed-width fields: a code whose lengths are all ``b`` is plain
``b``-bit binary.
"""

from __future__ import annotations

import heapq

import numpy as np
from numba import njit

MAX_CODE_LENGTH = 57  # the encoder's accumulator holds 7 pending bits plus one code


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of each symbol (0 for a symbol that never occurs; a lone symbol
    gets length 1)."""
    counts = np.asarray(counts, np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, np.uint8)
    if used.size == 1:
        lengths[used] = 1
    if used.size <= 1:
        return lengths
    # heap of (count, tie-break, symbols under this subtree); merging deepens every symbol
    heap = [(int(counts[s]), int(s), [int(s)]) for s in used]
    heapq.heapify(heap)
    depth = np.zeros(counts.size, np.int64)
    while len(heap) > 1:
        c1, t1, s1 = heapq.heappop(heap)
        c2, t2, s2 = heapq.heappop(heap)
        depth[s1] += 1
        depth[s2] += 1
        heapq.heappush(heap, (c1 + c2, min(t1, t2), s1 + s2))
    if depth.max() > MAX_CODE_LENGTH:
        raise ValueError(f"Huffman code longer than {MAX_CODE_LENGTH} bits: {depth.max()}")
    lengths[used] = depth[used]
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code (uint64) of each symbol with a nonzero length."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(lengths.size, np.uint64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        previous = int(lengths[symbol])
        codes[symbol] = code
        code += 1
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """The bit stream (uint8, MSB first, zero-padded) of ``symbols`` and its length in bits.

    Raises:
        ValueError: a symbol has no code (length 0) or lies outside the table.
    """
    symbols = np.ascontiguousarray(symbols, np.int64)
    lengths = np.ascontiguousarray(lengths, np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= lengths.size):
        raise ValueError(f"symbol outside the code's {lengths.size} symbols")
    if symbols.size and np.any(lengths[symbols] == 0):
        raise ValueError("a symbol to encode has no Huffman code (its count was zero)")
    return _encode(symbols, canonical_codes(lengths), lengths)


def decode(data: np.ndarray, nbits: int, count: int, lengths: np.ndarray) -> np.ndarray:
    """``count`` symbols read from the first ``nbits`` bits of ``data``.

    Raises:
        ValueError: the stream ends early, holds a bit pattern that is no code, or has bits
            left over (what a corrupted stream gives).
    """
    lengths = np.ascontiguousarray(lengths, np.int64)
    if nbits > 8 * len(data):
        raise ValueError(f"Huffman stream of {nbits} bits in only {len(data)} bytes")
    order = np.array(sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)), np.int64)
    per_length = np.bincount(lengths[order], minlength=MAX_CODE_LENGTH + 2).astype(np.int64)
    out = np.empty(count, np.int64)
    status = _decode(np.ascontiguousarray(data, np.uint8), nbits, out, order, per_length)
    if status == -1:
        raise ValueError(f"Huffman stream ends after {nbits} bits, before symbol {count}")
    if status == -2:
        raise ValueError("Huffman stream holds a bit pattern that is no code")
    if status == -3:
        raise ValueError(f"Huffman stream has bits left after its {count} symbols")
    return out


@njit(cache=True)
def _encode(symbols, codes, lengths):
    total = 0
    for s in symbols:
        total += lengths[s]
    out = np.zeros((total + 7) // 8, np.uint8)
    accumulator, pending, position = np.uint64(0), 0, 0
    for s in symbols:
        accumulator = (accumulator << np.uint64(lengths[s])) | codes[s]
        pending += lengths[s]
        while pending >= 8:
            pending -= 8
            out[position] = np.uint8((accumulator >> np.uint64(pending)) & np.uint64(0xFF))
            position += 1
    if pending > 0:
        out[position] = np.uint8((accumulator << np.uint64(8 - pending)) & np.uint64(0xFF))
    return out, total


@njit(cache=True)
def _decode(data, nbits, out, order, per_length):
    """Canonical decoding: after reading ``length`` bits, ``code - first`` indexes the symbols
    of that length if it is below their count (``first`` = the first code of the length)."""
    bit = 0
    for i in range(out.size):
        code, first, index = 0, 0, 0
        length = 0
        while True:
            if bit >= nbits:
                return -1
            code = (code << 1) | ((data[bit >> 3] >> (7 - (bit & 7))) & 1)
            bit += 1
            length += 1
            if length >= per_length.size:
                return -2
            if code - first < per_length[length]:
                out[i] = order[index + code - first]
                break
            index += per_length[length]
            first = (first + per_length[length]) << 1
    if bit != nbits:
        return -3
    return 0
