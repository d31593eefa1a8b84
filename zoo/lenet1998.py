"""LeNet-5 as LeCun, Bottou, Bengio & Haffner (1998) describe it: 60,000 trainable parameters.

- C1: 6 feature maps, 5x5 convs on the 32x32 input (156 parameters).
- S2: 2x2 subsampling: each map's 4-pixel sum times a trainable coefficient plus a trainable
  bias, then the squashing function (12). The sum is a 2x2 average pool (whose 1/4 folds into
  the coefficient) followed by a per-channel 1x1 depthwise conv: exactly C weights + C biases.
- C3: 16 maps, each reading only the S2 maps of Table I's connection table (1,516): six maps
  read 3 contiguous maps, six read 4 contiguous, three read 4 non-contiguous, one reads all 6.
  Each C3 map is its own conv over the concatenation of the maps it reads.
- S4: as S2 on 16 maps (32). C5: 120 5x5 convs over all S4 maps, a full connection (48,120).
- F6: 84 units (10,164). The squashing function is the paper's scaled tanh,
  f(a) = 1.7159 tanh(2a/3), applied after S2, C3, S4, C5 and F6 (written as tanh of a scaled
  input, then a scale).
- Output: Euclidean RBF units with FIXED centres (not trained, so not counted), one +-1 code of
  84 values per class (the paper drew 7x12 character bitmaps; here they are seeded random
  codes). -||x - c_j||^2 = 2 x.c_j - ||c_j||^2 - ||x||^2, and the last term is the same for every
  class, so the RBF layer is a fixed linear layer (weight 2c, bias -||c||^2) up to a per-sample
  constant that softmax and argmax ignore: its outputs serve directly as logits.
"""

from __future__ import annotations

import numpy as np

import graph.functional as F
from graph import nn
from zoo import register

# Table I of the paper: the S2 maps each C3 map reads.
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip
_A, _S = 1.7159, 2.0 / 3.0


def _squash(x):
    """The paper's f(a) = A tanh(S a)."""
    return F.scale(F.tanh(F.scale(x, _S)), _A)


class Subsampling(nn.Module):
    """S2/S4: 2x2 average pool, then a trainable coefficient and bias per map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.coefficient = nn.Conv2d(channels, channels, 1, groups=channels)

    def forward(self, x):
        return self.coefficient(F.avg_pool2d(x, 2))


class SparseC3(nn.Module):
    """C3: one 5x5 conv per output map over the S2 maps the connection table lists."""

    def __init__(self) -> None:
        super().__init__()
        self.maps = nn.ModuleList([nn.Conv2d(len(inputs), 1, 5) for inputs in C3_TABLE])

    def forward(self, x):
        planes = F.split(x, 1, dim=1)
        outputs = [
            conv(
                F.cat([planes[i] for i in inputs], dim=1) if len(inputs) > 1 else planes[inputs[0]]
            )
            for conv, inputs in zip(self.maps, C3_TABLE, strict=True)
        ]
        return F.cat(outputs, dim=1)


class LeNet5_1998(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 6, 5)
        self.s2 = Subsampling(6)
        self.c3 = SparseC3()
        self.s4 = Subsampling(16)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        codes = np.where(np.random.default_rng(seed).random((num_classes, 84)) < 0.5, -1.0, 1.0)
        self.register_buffer("rbf_weight", (2.0 * codes).astype(np.float32))
        self.register_buffer("rbf_bias", (-(codes**2).sum(axis=1)).astype(np.float32))

    def forward(self, x):
        x = _squash(self.s2(self.c1(x)))
        x = _squash(self.s4(_squash(self.c3(x))))
        x = _squash(F.flatten(self.c5(x), 1))
        x = _squash(self.f6(x))
        return F.linear(x, self.rbf_weight, self.rbf_bias)


@register("lenet5_1998", (1, 32, 32), 10, departs="not in torchvision (LeCun et al. 1998)")
def lenet5_1998(num_classes: int = 10, in_channels: int = 1) -> LeNet5_1998:
    return LeNet5_1998(num_classes, in_channels)
