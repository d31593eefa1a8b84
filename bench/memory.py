"""Memory plans over the zoo: naive (one buffer per value), planned arena and lower bound, at
each model's usual input size and batch 32, inference and training (SGD with momentum).

Plans are made as ``compile`` makes them (with the CPU backend's scratch) but nothing is
allocated. Run: ``python bench/memory.py [--batch 32] [model ...]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402

import zoo  # noqa: E402
from engine.compiler import memory_plans  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=zoo.names())
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    mib = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    rows = []
    for name in args.models:
        plans = memory_plans(zoo.get(name), zoo.spec(name).input_shape, args.batch, train=True)
        for kind, plan in plans.items():
            ratio = plan.arena_bytes / max(plan.lower_bound_bytes, 1)
            rows.append(
                [
                    name,
                    kind,
                    mib(plan.naive_bytes),
                    mib(plan.arena_bytes),
                    mib(plan.lower_bound_bytes),
                    f"{ratio:.4f}",
                ]
            )
        print_table(
            ["model", "plan", "naive MiB", "arena MiB", "bound MiB", "arena/bound"], rows[-2:]
        )
    print()
    print_table(["model", "plan", "naive MiB", "arena MiB", "bound MiB", "arena/bound"], rows)


if __name__ == "__main__":
    main()
