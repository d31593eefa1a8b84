"""Single-op speed against PyTorch (NCHW and channels_last), batch 1 and 32, float32.

Run: ``python bench/ops.py`` and, for the native BLAS kernels,
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/ops.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import environment_line, median_time, print_table  # noqa: E402

import engine  # noqa: E402
import graph.nn as nn  # noqa: E402

CASES = [
    # (label, layer factory, (C, H, W), MACs per image or None)
    ("conv3x3 64->64 56x56", lambda: nn.Conv2d(64, 64, 3, padding=1), (64, 56, 56)),
    ("conv3x3 256->256 14x14", lambda: nn.Conv2d(256, 256, 3, padding=1), (256, 14, 14)),
    (
        "depthwise3x3 32ch 112x112",
        lambda: nn.Conv2d(32, 32, 3, padding=1, groups=32),
        (32, 112, 112),
    ),
    ("conv1x1 256->64 56x56", lambda: nn.Conv2d(256, 64, 1), (256, 56, 56)),
    ("maxpool3x3/2 64ch 112x112", lambda: nn.MaxPool2d(3, 2, padding=1), (64, 112, 112)),
]


def _torch_layer(layer: nn.Module) -> torch.nn.Module:
    """The torch twin of one graph.nn layer, same weights."""
    if isinstance(layer, nn.Conv2d):
        twin = torch.nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            groups=layer.groups,
        )
        twin.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
        return twin.eval()
    return torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)


def _macs(exe: engine.Executable) -> int:
    from graph.ops import get_op

    node = exe.graph.nodes[0]
    return get_op(node.op).count_macs(
        [v.type for v in node.inputs], [v.type for v in node.outputs], node.attrs
    )


def main() -> None:
    rows = []
    torch.set_grad_enabled(False)
    for label, make, shape in CASES:
        for batch in (1, 32):
            layer = make()
            exe = engine.compile(layer, shape, batch=batch)
            x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
            twin = _torch_layer(layer)
            tx = torch.from_numpy(x)
            tx_cl = tx.contiguous(memory_format=torch.channels_last)
            twin_cl = twin.to(memory_format=torch.channels_last)
            repeat = 7 if batch == 32 else 25
            ours = median_time(lambda exe=exe, x=x: exe.run(x), repeat)
            t_nchw = median_time(lambda twin=twin, tx=tx: twin(tx), repeat)
            t_cl = median_time(lambda twin=twin_cl, tx=tx_cl: twin(tx), repeat)
            macs = _macs(exe)
            gflops = lambda t, macs=macs: f"{2 * macs / t / 1e9:.0f}" if macs else "-"  # noqa: E731
            rows.append(
                [
                    label,
                    batch,
                    f"{ours * 1e3:.3f}",
                    gflops(ours),
                    f"{t_nchw * 1e3:.3f}",
                    gflops(t_nchw),
                    f"{t_cl * 1e3:.3f}",
                    gflops(t_cl),
                    f"{t_nchw / ours:.2f}x",
                ]
            )
    print(environment_line())
    print_table(
        [
            "op",
            "batch",
            "convforge ms",
            "GFLOP/s",
            "torch NCHW ms",
            "GFLOP/s",
            "torch CL ms",
            "GFLOP/s",
            "vs NCHW",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
