"""Data-parallel training over MPI: step time and the share spent averaging gradients, against
PyTorch DistributedDataParallel (gloo) in the same run; an allreduce cost model from measured
latency and bandwidth, and its prediction for 8 and 64 processes.

- ResNet-18 (CIFAR) training steps, float32, SGD with momentum, B images per process (weak
  scaling: the global batch grows with the processes), 1 and 2 processes of one thread each.
  "wait" is the time ``train_step`` spends waiting for allreduce after the backward pass (what
  overlap did not hide); for torch the step includes DDP's own overlapped allreduce.
- Allreduce of 8 B to 64 MB between 2 processes (``MPI_Allreduce``, median of repeats), fitted
  to ``T(n) = 2 alpha + n beta`` (a ring allreduce over p processes costs
  ``2 (p - 1) alpha + 2 (p - 1) / p * n * beta``), then the predicted step time at p processes:
  compute (the 1-process step) plus the allreduce of all gradients, none of it hidden.

Run: ``python bench/distributed.py`` (it starts ``mpirun`` itself; root needs
``OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1``), and with
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import environment_line, print_table  # noqa: E402

SIZES = [8, 1 << 10, 1 << 16, 1 << 20, 1 << 24, 48 << 20]  # ResNet-18: 43 MiB of gradients
# Interconnects for the prediction beside the measured one: (name, alpha s, bytes per s)
NETWORKS = [
    ("10 Gb Ethernet (assumed)", 50e-6, 1.25e9),
    ("100 Gb InfiniBand (assumed)", 2e-6, 12.5e9),
]
PREDICTED = (2, 8, 64)


def _mpirun(processes: int, args: list[str]) -> dict:
    """Run this file's worker on ``processes`` ranks; rank 0's JSON line."""
    env = {
        **os.environ,
        "NUMBA_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
    }
    command = ["mpirun", "-n", str(processes), sys.executable, __file__, "--worker", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    line = next(s for s in reversed(done.stdout.splitlines()) if "{" in s)
    return json.loads(line[line.index("{") :])  # after any terminal escape another rank wrote


def _worker_training(batch: int, steps: int, overlap: bool) -> dict:
    """ResNet-18 (CIFAR) steps here, then the same with torch DDP; rank 0 returns medians."""
    import engine
    import zoo
    from engine.distributed import DataParallel, World
    from engine.optim import SGD
    from graph import nn

    world = World.from_environment()
    nn.manual_seed(0)
    model = zoo.get("resnet18_cifar")
    exe = engine.compile(
        model, (3, 32, 32), batch, train=True, optimizer=SGD(lr=0.01, momentum=0.9)
    )
    parallel = DataParallel(exe, world, overlap=overlap)
    rng = np.random.default_rng(world.rank)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    parallel.train_step(x, y)  # first step: compile caches, page faults
    steps_ms, waits_ms = [], []
    for _ in range(steps):
        waited, start = world.waited, time.perf_counter()
        parallel.train_step(x, y)
        steps_ms.append(1e3 * (time.perf_counter() - start))
        waits_ms.append(1e3 * (world.waited - waited))
    torch_ms = _torch_ddp_steps(model, world, x, y, steps)
    return {
        "step_ms": float(np.median(steps_ms)),
        "wait_ms": float(np.median(waits_ms)),
        "torch_ms": float(np.median(torch_ms)),
        "gradient_bytes": int(sum(v.nbytes for v in exe.grads.values())),
    }


def _torch_ddp_steps(model, world, x, y, steps: int) -> list[float]:
    """The same network, batch and optimizer in torch: DDP over gloo with 2+ processes."""
    import torch

    from tests.torch_twins import TorchResNet18

    torch.set_num_threads(1)
    twin = TorchResNet18(num_classes=10, cifar_stem=True)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    net = twin.train()
    if world.size > 1:
        import torch.distributed as dist

        port = 29500 + os.getpid() % 1000 if world.rank == 0 else 0
        port = int(world.sum([port])[0])
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=world.rank, world_size=world.size
        )
        net = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(tx), ty).backward()
        optimizer.step()
        if step:
            times.append(1e3 * (time.perf_counter() - start))
    if world.size > 1:
        torch.distributed.destroy_process_group()
    return times


def _worker_allreduce(repeats: int) -> dict:
    """Median MPI_Allreduce time per message size (float32 sums, in place)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    medians = {}
    for size in SIZES:
        buffer = np.ones(size // 4 or 1, np.float32)
        times = []
        for _ in range(repeats):
            comm.Barrier()
            start = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer)
            times.append(time.perf_counter() - start)
        medians[size] = float(np.median(times))
    return medians


def _fit(medians: dict) -> tuple[float, float]:
    """alpha (s) and beta (s/byte) of T(n) = 2 alpha + n beta: alpha from the messages of
    1 KiB or less (latency), beta by least squares on those of 1 MiB or more (bandwidth)."""
    alpha = float(np.median([t for n, t in medians.items() if int(n) <= 1024])) / 2
    large = [(int(n), t - 2 * alpha) for n, t in medians.items() if int(n) >= 1 << 20]
    n, t = np.array(large, dtype=np.float64).T
    return alpha, float(n @ t / (n @ n))


def _ring_seconds(processes: int, nbytes: int, alpha: float, beta: float) -> float:
    return 2 * (processes - 1) * alpha + 2 * (processes - 1) / processes * nbytes * beta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="images per process")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--worker", choices=("training", "allreduce"), help=argparse.SUPPRESS)
    parser.add_argument("--no-overlap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = (
            _worker_training(args.batch, args.steps, not args.no_overlap)
            if args.worker == "training"
            else _worker_allreduce(20)
        )
        if int(os.environ.get("OMPI_COMM_WORLD_RANK", 0)) == 0:
            print(json.dumps(result))
        return

    print(environment_line())
    base = ["--batch", str(args.batch), "--steps", str(args.steps)]
    runs = {
        "1 process": _mpirun(1, ["training", *base]),
        "2 processes": _mpirun(2, ["training", *base]),
        "2 processes, no overlap": _mpirun(2, ["training", *base, "--no-overlap"]),
    }
    rows = []
    for name, run in runs.items():
        processes = 1 if name.startswith("1") else 2
        images = processes * args.batch
        rows.append(
            [
                name,
                f"{images}",
                f"{run['step_ms']:.0f}",
                f"{run['wait_ms']:.1f} ({100 * run['wait_ms'] / run['step_ms']:.1f}%)",
                f"{1e3 * images / run['step_ms']:.0f}",
                f"{run['torch_ms']:.0f}",
                f"{1e3 * images / run['torch_ms']:.0f}",
            ]
        )
    print(f"\nResNet-18 (CIFAR) training, float32, {args.batch} images per process, 1 thread each")
    print_table(
        [
            "processes",
            "global batch",
            "step ms",
            "allreduce wait ms",
            "images/s",
            "torch DDP step ms",
            "torch images/s",
        ],
        rows,
    )

    medians = _mpirun(2, ["allreduce"])
    alpha, beta = _fit(medians)
    print("\nMPI_Allreduce between 2 processes (median of 20)")
    print_table(
        ["bytes", "measured us", "model 2a + n b (us)"],
        [
            [f"{int(k):,}", f"{1e6 * v:.1f}", f"{1e6 * (2 * alpha + int(k) * beta):.1f}"]
            for k, v in medians.items()
        ],
    )
    nbytes = runs["1 process"]["gradient_bytes"]
    compute = runs["1 process"]["step_ms"] / 1e3
    print(
        f"\nfit: latency alpha = {1e6 * alpha:.2f} us, bandwidth 1/beta = {1e-9 / beta:.2f} GB/s; "
        f"gradients {nbytes / 2**20:.1f} MiB; compute {1e3 * compute:.0f} ms per step"
    )
    rows = []
    links = [("this machine (measured)", alpha, 1 / beta), *NETWORKS]
    for link, latency, bandwidth in links:
        for processes in PREDICTED:
            seconds = _ring_seconds(processes, nbytes, latency, 1 / bandwidth)
            rows.append(
                [
                    link,
                    f"{processes}",
                    f"{1e3 * seconds:.1f}",
                    f"{1e3 * (compute + seconds):.0f}",
                    f"{100 * compute / (compute + seconds):.1f}%",
                ]
            )
    print("\npredicted step (ring allreduce of every gradient, none of it hidden by overlap)")
    print_table(["interconnect", "processes", "allreduce ms", "step ms", "efficiency"], rows)


if __name__ == "__main__":
    main()
