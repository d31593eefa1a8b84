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
