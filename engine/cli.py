"""The ``convforge`` command line.

- ``convforge demo``: compile LeNet-5, print its graph, run a batch and time it.
- ``convforge warmup``: compile every CPU kernel variant into Numba's on-disk cache, so the
  first real compile in later processes loads in a fraction of a second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import engine
import zoo


def _median_ms(func, repeat: int) -> float:
    func()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def demo(args: argparse.Namespace) -> int:
    model = zoo.get("lenet5")
    shape = zoo.spec("lenet5").input_shape
    start = time.perf_counter()
    exe = engine.compile(model, shape, batch=args.batch, dtype=args.dtype)
    compile_s = time.perf_counter() - start
    print(
        f"LeNet-5: {model.num_parameters():,} parameters, compiled for "
        f"[{args.batch}, {', '.join(map(str, shape))}] {args.dtype} in {compile_s:.2f} s\n"
    )
    print(exe.graph)
    print()
    exe.graph.print_tabular()
    x = np.random.default_rng(0).standard_normal((args.batch, *shape)).astype(args.dtype)
    y = exe.run(x)
    ours = _median_ms(lambda: exe.run(x), args.repeat)
    print(
        f"\nconvforge: {ours:.3f} ms per batch of {args.batch} "
        f"({ours * 1e3 / args.batch:.1f} us per image), {exe._runner.count} steps, "
        f"arena {exe.plan.arena_bytes / 1024:.0f} KiB"
    )
    print(f"predicted classes of the first 8 images: {y.argmax(axis=1)[:8].tolist()}")
    return 0


def warmup(args: argparse.Namespace) -> int:
    import backends.cpu  # noqa: F401  (registers the kernels)
    from backends.cpu.kernels import KERNELS

    start = time.perf_counter()
    for kernel in KERNELS:
        for dtype in ("float32", "float64"):
            for parallel in (False, True):
                kernel.shim(dtype, parallel)
    print(f"compiled {4 * len(KERNELS)} CPU kernel variants in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convforge", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="compile LeNet-5, print its graph, run and time a batch")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeat", type=int, default=50)
    p.set_defaults(func=demo)
    p = commands.add_parser("warmup", help="compile every CPU kernel into Numba's cache")
    p.set_defaults(func=warmup)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
