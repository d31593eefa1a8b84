"""Anti-aliased downsampling (Zhang 2019, "Making Convolutional Networks Shift-Invariant Again").

``BlurPool2d`` low-pass filters each channel with a fixed binomial kernel (sizes 1 to 7: rows of
Pascal's triangle, normalised) after reflect padding, then subsamples with the stride. The
filter is a buffer, not a parameter, so anti-aliased models have exactly the parameters of the
originals. ResNets, VGG, AlexNet and MobileNet v2 take ``blur=k`` (the filter size):

- a max-pool of stride s becomes max-pool(stride 1) + BlurPool(stride s) (``antialiased_max_pool``);
- a strided conv becomes conv(stride 1) + ReLU + BlurPool (the activation already follows the
  conv in ResNet and MobileNet blocks, so the blur goes after it).
"""

from __future__ import annotations

from math import comb

import numpy as np

import graph.functional as F
from graph import nn


def binomial_filter(size: int) -> np.ndarray:
    """The normalised 2-D binomial kernel of ``size`` taps per axis (1..7)."""
    if not 1 <= size <= 7:
        raise ValueError(f"blur filter size must be between 1 and 7, but got {size}")
    row = np.array([comb(size - 1, k) for k in range(size)], np.float64)
    kernel = np.outer(row, row)
    return (kernel / kernel.sum()).astype(np.float32)


class BlurPool2d(nn.Module):
    """Depthwise binomial blur with reflect padding, then subsampling by ``stride``."""

    def __init__(self, channels: int, filt_size: int = 4, stride: int = 2) -> None:
        super().__init__()
        self.channels, self.filt_size, self.stride = channels, filt_size, stride
        total = filt_size - 1
        self.pads = (total // 2, total - total // 2, total // 2, total - total // 2)
        filt = np.broadcast_to(binomial_filter(filt_size), (channels, 1, filt_size, filt_size))
        self.register_buffer("filt", np.ascontiguousarray(filt))

    def forward(self, x):
        if any(self.pads):
            x = F.pad(x, self.pads, mode="reflect")
        return F.conv2d(x, self.filt, None, self.stride, 0, 1, self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, filt_size={self.filt_size}, stride={self.stride}"


def antialiased_max_pool(
    channels: int, kernel: int, stride: int, padding: int, blur: int
) -> nn.Sequential:
    """max-pool(kernel, stride 1) then BlurPool(stride): the same output size as the original
    max-pool whenever ``padding`` keeps the stride-1 map at the input size."""
    return nn.Sequential(nn.MaxPool2d(kernel, 1, padding), BlurPool2d(channels, blur, stride))
