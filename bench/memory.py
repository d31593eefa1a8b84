"""Memory: the planner over the zoo, recompute's trade, and peak resident memory against PyTorch.

Three parts (``--part zoo|recompute|rss``, all by default):

- ``zoo``: each model at its usual input size, batch 32, inference and training (SGD with
  momentum): one buffer per value (naive), the lower bound in program order, after the
  memory-aware order, after in-place, and the arena. Plans are made as ``compile`` makes them
  (the CPU backend's scratch) but nothing is allocated.
- ``recompute``: ResNet-50 training at batch 8 with and without ``recompute="sqrt"``: arena
  (activation memory) and median step time.
- ``rss``: peak resident memory of a process that builds ResNet-18 (CIFAR variant), runs
  training steps at batch 32 and exits, for ConvForge and for PyTorch eager with the same
  model, each in a fresh interpreter. The peak is ``VmHWM`` of /proc/self/status: Linux
  carries ``ru_maxrss`` over fork and exec, so a child would report its parent's peak.

Run: ``python bench/memory.py`` (and with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` for
the timings).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import environment_line, median_time, print_table  # noqa: E402

import zoo  # noqa: E402
from engine.compiler import memory_plans  # noqa: E402

MIB = 2**20


def zoo_table(models: list[str], batch: int) -> None:
    header = ["model", "plan", "naive", "bound: program order", "reordered", "in-place"]
    header += ["arena", "arena/bound"]
    rows = []
    for name in models:
        plans = memory_plans(zoo.get(name), zoo.spec(name).input_shape, batch, train=True)
        for kind in ("inference", "training"):
            plan = plans[kind]
            rows.append(
                [
                    name,
                    kind,
                    *(
                        f"{b / MIB:,.1f}"
                        for b in (
                            plan.naive_bytes,
                            plan.program_order_bound_bytes,
                            plan.reordered_bound_bytes,
                            plan.lower_bound_bytes,
                            plan.arena_bytes,
                        )
                    ),
                    f"{plan.arena_bytes / max(plan.lower_bound_bytes, 1):.4f}",
                ]
            )
    print(f"\nPlans at batch {batch} (MiB; bounds are the largest live bytes at any step)")
    print_table(header, rows)


def recompute_table(batch: int, steps: int) -> None:
    import numpy as np

    import engine
    from engine.optim import SGD

    shape = zoo.spec("resnet50").input_shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, 1000, batch)
    rows, base = [], None
    for policy in (None, "sqrt"):
        exe = engine.compile(
            zoo.get("resnet50"),
            shape,
            batch,
            train=True,
            optimizer=SGD(lr=0.01, momentum=0.9),
            recompute=policy,
        )
        seconds = median_time(lambda exe=exe: exe.train_step(x, y), repeat=steps, warmup=1)
        arena = exe.memory_report()["arena_bytes"]
        base = base or (arena, seconds)
        rows.append(
            [
                policy or "none",
                f"{arena / MIB:,.1f}",
                f"{base[0] / arena:.2f}x",
                f"{seconds * 1e3:,.0f}",
                f"{seconds / base[1] - 1:+.0%}",
            ]
        )
        del exe
    print(f"\nResNet-50 training, batch {batch}: activation memory (arena) and step time")
    print_table(["recompute", "arena MiB", "cut", "step ms", "time"], rows)


# Each runs in a fresh interpreter; prints its peak resident set size in bytes as JSON.
PEAK_RSS = """
def peak_rss():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
"""
RSS_CONVFORGE = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
import engine, zoo
from engine.optim import SGD
exe = engine.compile(zoo.get("resnet18_cifar"), (3, 32, 32), {batch}, train=True,
                     optimizer=SGD(lr=0.01, momentum=0.9, weight_decay=5e-4))
rng = np.random.default_rng(0)
x = rng.standard_normal(({batch}, 3, 32, 32)).astype(np.float32)
y = rng.integers(0, 10, {batch})
for _ in range({steps}):
    exe.train_step(x, y)
print(json.dumps(peak_rss()))
"""
RSS_TORCH = """
import json, sys
import torch
sys.path.insert(0, {root!r})
import zoo
from tests.torch_twins import TorchResNet18
model = TorchResNet18(num_classes=10, cifar_stem=True)
model.load_state_dict({{k: torch.from_numpy(v) for k, v in
                        zoo.get("resnet18_cifar").state_dict().items()}})
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
x = torch.randn({batch}, 3, 32, 32)
y = torch.randint(0, 10, ({batch},))
for _ in range({steps}):
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
print(json.dumps(peak_rss()))
"""


def rss_table(batch: int, steps: int) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    rows = []
    for engine_name, script in (("ConvForge", RSS_CONVFORGE), ("PyTorch eager", RSS_TORCH)):
        source = PEAK_RSS + script.format(root=root, batch=batch, steps=steps)
        result = subprocess.run(
            [sys.executable, "-c", source], capture_output=True, text=True, check=True
        )
        rows.append([engine_name, f"{json.loads(result.stdout.splitlines()[-1]) / 1e6:,.0f}"])
    print(f"\nPeak resident memory, ResNet-18 CIFAR training, batch {batch}, {steps} steps")
    print_table(["engine", "peak RSS (MB)"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=zoo.names())
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--part", choices=("zoo", "recompute", "rss"), action="append")
    args = parser.parse_args()
    parts = args.part or ["zoo", "recompute", "rss"]
    print(environment_line())
    if "zoo" in parts:
        zoo_table(args.models, args.batch)
    if "rss" in parts:
        rss_table(batch=32, steps=3)
    if "recompute" in parts:
        recompute_table(batch=8, steps=3)


if __name__ == "__main__":
    main()
