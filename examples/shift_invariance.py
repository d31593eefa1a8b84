"""Anti-aliasing and shift-invariance (Zhang 2019) on Fashion-MNIST: train ResNet-20 with and
without ``blur=k`` the same way, then measure each one's consistency (how often two random
shifts of a test image get the same class) and its accuracy against diagonal shifts.

``python examples/shift_invariance.py [--train 6000] [--epochs 5] [--blur 3]`` prints one line
per network; the README quotes a run (about 25 minutes on 2 busy cores). Needs the
Fashion-MNIST IDX files (Debian's ``dataset-fashion-mnist``, or ``$CONVFORGE_FASHION_MNIST``).
"""

from __future__ import annotations

import argparse

import numpy as np

import engine
import zoo
from engine.analysis.consistency import consistency
from engine.data import Normalize, load_dataset
from engine.optim import SGD
from engine.schedules import make_schedule
from engine.train import fit
from graph import nn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20_cifar")
    p.add_argument("--train", type=int, default=6000, help="training images used")
    p.add_argument("--test", type=int, default=1000, help="test images used")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--blur", type=int, default=3, help="the anti-aliasing filter size")
    args = p.parse_args()
    train, test = load_dataset("fashion-mnist")
    train, test = train.subset(np.arange(args.train)), test.subset(np.arange(args.test))
    norm = Normalize.fit(train.x)
    for blur in (0, args.blur):
        nn.manual_seed(0)
        model = zoo.get(args.model, in_channels=1, blur=blur)
        exe = engine.compile(
            model, train.sample_shape, batch=64, train=True, optimizer=SGD(0.05, momentum=0.9)
        )
        schedule = make_schedule("cosine", 0.05, T_max=args.epochs)
        fit(
            exe,
            train,
            None,
            args.epochs,
            schedule,
            preprocess=norm,
            progress=False,
            log=lambda _: None,
        )
        result = consistency(exe.eval(), test, norm)
        curve = " ".join(f"{100 * a:.1f}" for a in result.shift_accuracy)
        print(
            f"{args.model} blur={blur}: consistency {100 * result.consistency:.1f}%, accuracy "
            f"{100 * result.accuracy:.1f}%; accuracy at diagonal shifts {result.shifts[0]}.."
            f"{result.shifts[-1]}: {curve}",
            flush=True,
        )


if __name__ == "__main__":
    main()
