"""Sliding-window index helpers shared by the convolution and pooling kernels.

For output index ``o`` along an axis, a window tap reads input index ``o*stride - pad + offset``
(``offset = tap * dilation``). ``valid_range`` gives the outputs whose read lands inside
[0, size), so inner loops run branch-free over exactly those.
"""

from __future__ import annotations

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
def max_into(dst, src):
    """dst = max(dst, src) elementwise, NaN winning as in torch's max pooling."""
    for j in range(dst.shape[0]):
        v = src[j]
        if v > dst[j] or v != v:
            dst[j] = v
