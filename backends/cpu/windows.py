"""Sliding-window index helpers shared by the convolution and pooling kernels.

For output index ``o`` along an axis, a window tap reads input index ``o*stride - pad + offset``
(``offset = tap * dilation``). ``valid_range`` gives the outputs whose read lands inside
[0, size), so inner loops run branch-free over exactly those.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always", cache=True)
def valid_range(out_size, size, stride, pad, offset):
    """[lo, hi) of outputs o with 0 <= o*stride - pad + offset < size."""
    first = pad - offset
    lo = 0 if first <= 0 else (first + stride - 1) // stride
    last = size - 1 + pad - offset
    hi = 0 if last < 0 else min(out_size, last // stride + 1)
    return lo, max(lo, hi)


# The row helpers below take slice views and loop over range(len): an index that LLVM can prove
# non-negative drops Numba's negative-index wraparound branch, which otherwise blocks
# vectorisation (measured 10x on a depthwise tap row). Callers pass a contiguous source view
# when the stride is 1 and a strided view otherwise, so each compiles to its best loop.


@njit(inline="always", cache=True)
def axpy(dst, src, scale):
    """dst += scale * src, elementwise over equal-length views."""
    for j in range(dst.shape[0]):
        dst[j] += scale * src[j]


@njit(inline="always", cache=True)
def axpy3(dst, src, at0, at1, at2, w0, w1, w2):
    """dst += w0 * src[at0:] + w1 * src[at1:] + w2 * src[at2:], added in that order (the same
    rounding as three ``axpy`` calls) in one pass over dst: three taps per load and store of
    the accumulator (1.6x faster than one tap a pass on a depthwise 3x3). Unsigned indices:
    no wraparound branch."""
    for j in range(dst.shape[0]):
        value = dst[j] + w0 * src[np.uint64(at0 + j)]
        value += w1 * src[np.uint64(at1 + j)]
        dst[j] = value + w2 * src[np.uint64(at2 + j)]


@njit(inline="always", cache=True)
def max_into(dst, src):
    """dst = max(dst, src) elementwise, NaN winning as in torch's max pooling."""
    for j in range(dst.shape[0]):
        v = src[j]
        if v > dst[j] or v != v:
            dst[j] = v
