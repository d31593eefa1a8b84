"""int8 post-training quantisation (``engine.quantize``) against our float32, two tables:

1. Speed: ResNet-18 (CIFAR variant, ``resnet18_cifar``) inference at batch 32, float32 and
   int8 plans of the same weights, timed in interleaved blocks (``interleaved_medians``) so
   drifting load on a shared machine hits both alike; plus the int8 plan's share of time by
   op kind.
2. Accuracy: a trained model's top-1, float32 against int8. There is no CIFAR-10 on this
   machine and training ResNet-18 on two cores takes hours, so the model is ResNet-20 (CIFAR
   variant: conv-BN-ReLU, residual blocks, strided convs, a linear classifier) trained briefly
   on a Fashion-MNIST subset, calibrated on 4 training batches.

    python bench/int8.py [--train-images 20000] [--epochs 2] [--skip-accuracy]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
import zoo  # noqa: E402
from bench.common import environment_line, interleaved_medians, print_table  # noqa: E402
from engine.data import Dataset, Normalize, load_fashion_mnist  # noqa: E402

BATCH = 32


def speed() -> None:
    model = zoo.get("resnet18_cifar")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    exe = engine.compile(model, (3, 32, 32), batch=BATCH)
    start = time.perf_counter()
    q = engine.quantize(exe, [x, rng.standard_normal(x.shape).astype(np.float32)])
    seconds = time.perf_counter() - start
    error = np.linalg.norm(q.run(x) - exe.run(x)) / np.linalg.norm(exe.run(x))
    f32, i8 = interleaved_medians([lambda: exe.run(x), lambda: q.run(x)], rounds=3, block=5)
    print(f"resnet18_cifar, batch {BATCH}; quantize (calibration + compile) {seconds:.1f} s")
    print_table(
        ["plan", "ms / batch", "images / s", "vs float32"],
        [
            ["float32", f"{f32 * 1e3:.1f}", f"{BATCH / f32:.0f}", "1.00x"],
            ["int8", f"{i8 * 1e3:.1f}", f"{BATCH / i8:.0f}", f"{f32 / i8:.2f}x"],
        ],
    )
    print(f"int8 vs float32 logits: relative L2 difference {error:.4f} (random weights)")
    shares: dict[str, float] = {}
    for row in q.profile(x, repeat=5):
        shares[row["op"]] = shares.get(row["op"], 0.0) + float(row["us"])
    total = sum(shares.values())
    print_table(
        ["int8 plan op", "ms", "share"],
        [
            [op, f"{us / 1e3:.1f}", f"{us / total:.0%}"]
            for op, us in sorted(shares.items(), key=lambda kv: -kv[1])
        ],
    )


def accuracy(train_images: int, epochs: int) -> None:
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    norm = Normalize.fit(x_train)
    classes = tuple(str(i) for i in range(10))
    train = Dataset(x_train[:train_images], y_train[:train_images], classes).normalized(norm)
    test = Dataset(x_test, y_test, classes).normalized(norm)
    model = zoo.get("resnet20_cifar", in_channels=1)
    exe = engine.compile(
        model,
        train.sample_shape,
        batch=BATCH,
        train=True,
        optimizer=engine.optim.SGD(lr=0.05, momentum=0.9, weight_decay=5e-4),
    )
    engine.fit(exe, train, epochs=epochs, progress=False, log=lambda line: None)
    calibration = [train.x[i * BATCH : (i + 1) * BATCH] for i in range(4)]
    q = engine.quantize(exe, calibration)
    float_top1 = engine.evaluate(exe, test)["top1"]
    int8_top1 = engine.evaluate(q, test)["top1"]
    print(
        f"resnet20_cifar on Fashion-MNIST, trained {epochs} epoch(s) on {train_images} images, "
        f"tested on {len(test)}"
    )
    print_table(
        ["plan", "top-1 %", "lost (points)"],
        [
            ["float32", f"{100 * float_top1:.2f}", ""],
            ["int8", f"{100 * int8_top1:.2f}", f"{100 * (float_top1 - int8_top1):.2f}"],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    print(environment_line())
    speed()
    if not args.skip_accuracy:
        accuracy(args.train_images, args.epochs)


if __name__ == "__main__":
    main()
