"""The course notes' Inception bottleneck example as MAC counts of ``graph.analysis``: a
28x28x256 input to 128 1x1, 192 3x3 and 96 5x5 filters ("same" padding, outputs
concatenated) costs about 854M multiply-accumulates; 1x1 reductions to 128 channels before
the 3x3 and to 64 before the 5x5 bring it to about 358M. The exact figures come from the
output-size formula, counted here by hand: H*W*C_in*C_out*K*K per conv."""

from __future__ import annotations

from graph import functional as F
from graph import nn
from graph.analysis import analyze
from graph.trace import trace

SIZE, IN = 28, 256


class _Module(nn.Module):
    """The three conv branches, each optionally behind a 1x1 reduction, concatenated."""

    def __init__(self, reduce3: int | None, reduce5: int | None) -> None:
        super().__init__()
        self.branch1 = nn.Conv2d(IN, 128, 1, bias=False)
        self.branch3 = self._branch(reduce3, 192, 3)
        self.branch5 = self._branch(reduce5, 96, 5)

    @staticmethod
    def _branch(reduce: int | None, out: int, k: int) -> nn.Module:
        if reduce is None:
            return nn.Conv2d(IN, out, k, padding=k // 2, bias=False)
        return nn.Sequential(
            nn.Conv2d(IN, reduce, 1, bias=False),
            nn.Conv2d(reduce, out, k, padding=k // 2, bias=False),
        )

    def forward(self, x):
        return F.cat([self.branch1(x), self.branch3(x), self.branch5(x)], dim=1)


def _macs(module: nn.Module) -> int:
    graph = trace(module, (IN, SIZE, SIZE), batch=1)
    assert graph.outputs[0].shape == (1, 128 + 192 + 96, SIZE, SIZE)
    return analyze(graph).macs


def _conv(c_in: int, c_out: int, k: int) -> int:
    return SIZE * SIZE * c_in * c_out * k * k


def test_naive_inception_module_costs_about_854m_macs():
    macs = _macs(_Module(None, None))
    assert macs == _conv(IN, 128, 1) + _conv(IN, 192, 3) + _conv(IN, 96, 5)
    assert round(macs / 1e6) == 854


def test_1x1_reductions_bring_it_to_about_358m_macs():
    macs = _macs(_Module(128, 64))
    expected = _conv(IN, 128, 1) + _conv(IN, 128, 1) + _conv(128, 192, 3)
    expected += _conv(IN, 64, 1) + _conv(64, 96, 5)
    assert macs == expected
    assert round(macs / 1e6) == 358
    assert macs < 0.42 * _macs(_Module(None, None))
