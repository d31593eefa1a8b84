"""Training-step speed against PyTorch eager, same networks, weights and batches, float32.

- LeNet-5 (1x28x28) at batch 64.
- ResNet-18, CIFAR variant (3x32x32, 3x3 stem, no max-pool), at batch 32.
Both with SGD (momentum 0.9, weight decay 5e-4) and cross-entropy; medians of one run, the
two engines timed in alternating blocks so that the machine's drifting load hits both alike.
The "in-place off" column (``compile(..., inplace=False)``) guards the in-place kernel variants:
it should match the first column (their slow path was 30x slower).

Run: ``python bench/train.py`` (and with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``).
``--fashion-mnist`` also trains LeNet-5 on Fashion-MNIST for 5 epochs and reports accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import environment_line, interleaved_medians, print_table  # noqa: E402

import engine  # noqa: E402
import zoo  # noqa: E402
from engine.optim import SGD  # noqa: E402
from tests.torch_twins import TorchResNet18  # noqa: E402

CASES = [("lenet5", 64, 20), ("resnet18_cifar", 32, 2)]


def _torch_twin(name: str, model) -> torch.nn.Module:
    """The same architecture written in torch, loaded with ``model``'s weights."""
    T = torch.nn
    if name == "lenet5":
        twin = T.Sequential()
        twin.features = T.Sequential(
            T.Conv2d(1, 6, 5, padding=2),
            T.ReLU(),
            T.MaxPool2d(2),
            T.Conv2d(6, 16, 5),
            T.ReLU(),
            T.MaxPool2d(2),
        )
        twin.flatten = T.Flatten()
        twin.classifier = T.Sequential(
            T.Linear(400, 120), T.ReLU(), T.Linear(120, 84), T.ReLU(), T.Linear(84, 10)
        )
    else:
        twin = TorchResNet18(num_classes=10, cifar_stem=True)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return twin.train()


def _step_times(name: str, batch: int, block: int) -> list[str]:
    model = zoo.get(name)
    shape = zoo.spec(name).input_shape
    exe, no_inplace = (
        engine.compile(
            model,
            shape,
            batch=batch,
            train=True,
            optimizer=SGD(lr=0.01, momentum=0.9, weight_decay=5e-4),
            inplace=inplace,
        )
        for inplace in (True, False)
    )
    twin = _torch_twin(name, model)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(twin(tx), ty).backward()
        optimizer.step()

    steps = [lambda: exe.train_step(x, y), lambda: no_inplace.train_step(x, y), torch_step]
    ours, plain, theirs = interleaved_medians(steps, block=block)
    times = (f"{t * 1e3:.2f}" for t in (ours, plain, theirs))
    return [f"{name} b{batch}", *times, f"{theirs / ours:.2f}x"]


def _fashion_mnist() -> None:
    from engine import cli

    start = time.perf_counter()
    cli.main(
        [
            "train",
            "lenet5",
            "--data",
            "fashion-mnist",
            "--epochs",
            "5",
            "--batch",
            "64",
            "--lr",
            "0.05",
            "--no-progress",
        ]
    )
    print(f"Fashion-MNIST run, compile to last epoch: {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-mnist", action="store_true")
    args = parser.parse_args()
    rows = [_step_times(name, batch, block) for name, batch, block in CASES]
    print(environment_line())
    header = ["train step", "convforge ms", "in-place off ms", "torch eager ms", "speed-up"]
    print_table(header, rows)
    if args.fashion_mnist:
        _fashion_mnist()


if __name__ == "__main__":
    main()
