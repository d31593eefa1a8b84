"""Data-parallel training (engine.distributed) against one process with the combined batch.

Each test starts ``mpirun -n 2`` on tests/distributed/mpi_worker.py (two single-threaded
processes) and compares what rank 0 wrote with the same steps run here in one process. Needs
Open MPI's ``mpirun`` and mpi4py (``.ci/run`` installs both).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.checkpoint import load_checkpoint
from engine.distributed import DataParallel, World
from tests.distributed import mpi_worker

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("mpirun") is None, reason="needs Open MPI's mpirun: apt-get install openmpi-bin"
)


def mpirun(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``mpirun -n 2`` of ``args``, one Numba thread per process, root allowed (CI runs as
    root), no shared-memory single-copy (containers forbid ptrace)."""
    environment = {
        **os.environ,
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
        "NUMBA_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    command = ["mpirun", "-n", "2", *args]
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )


def run_worker(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    out = tmp_path / "rank0.npz"
    return mpirun(
        [sys.executable, "-m", "tests.distributed.mpi_worker", args[0], str(out), *args[1:]], **env
    )


def one_process(name: str, batch: int, steps: int) -> dict[str, np.ndarray]:
    """The same steps on one executable with the combined batch (no DataParallel)."""
    exe = mpi_worker.compile_model(name, batch)
    losses = [exe.train_step(*mpi_worker.global_batch(name, batch, step)) for step in range(steps)]
    return mpi_worker.snapshot(exe, losses)


def assert_same_training(got: dict, want: dict, rel: float) -> None:
    assert set(got) == set(want)
    for key, expected in want.items():
        np.testing.assert_allclose(got[key], expected, rtol=rel, atol=rel * 1e-3, err_msg=key)


@pytest.mark.parametrize(
    ("model", "sync"),
    [("lenet5", "local"), ("lenet5", "local-serial"), ("bn_net", "sync")],
    ids=["lenet5", "lenet5-no-overlap", "bn_net-sync"],
)
def test_two_processes_equal_one_with_the_combined_batch(tmp_path, model, sync):
    """2 processes x batch 32 = 1 process x batch 64 after 20 momentum-SGD steps: weights,
    BatchNorm running statistics (synchronised) and the averaged losses."""
    result = run_worker(tmp_path, "steps", model, "32", "20", sync)
    assert result.returncode == 0, result.stderr[-3000:]
    got = dict(np.load(tmp_path / "rank0.npz"))
    assert got.pop("eval_state_agrees")
    want = one_process(model, 64, 20)
    assert_same_training(got, want, rel=1e-9)
    initial = mpi_worker.compile_model(model, 64).state_dict()
    moved = [k for k, v in initial.items() if not np.allclose(got[k], v, rtol=1e-3)]
    assert len(moved) >= len(initial) // 2  # it trained


def test_batch_norm_per_process_statistics_differ_from_the_combined_batch(tmp_path):
    """Without sync, each process normalises with its own 32 images (DistributedDataParallel's
    default): the result is a valid training run but not the 64-image one."""
    result = run_worker(tmp_path, "steps", "bn_net", "32", "5", "local")
    assert result.returncode == 0, result.stderr[-3000:]
    got = dict(np.load(tmp_path / "rank0.npz"))
    assert got.pop("eval_state_agrees")  # eval() broadcast rank 0's statistics
    want = one_process("bn_net", 64, 5)
    assert np.all(np.isfinite(got["losses"]))
    assert not np.allclose(got["0.weight"], want["0.weight"], rtol=1e-6)


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_failed_rank_ends_the_run_in_bounded_time_naming_it(tmp_path, fault):
    start = time.perf_counter()
    result = run_worker(tmp_path, fault, timeout=120, CONVFORGE_DISTRIBUTED_TIMEOUT="5")
    elapsed = time.perf_counter() - start
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "rank 1" in output, output[-3000:]
    if fault == "hang":
        assert "rank 0 waited 5 s for the gradient allreduce of step 4" in output, output[-3000:]
    assert elapsed < 100


def test_the_command_line_trains_as_one_process_with_the_global_batch(tmp_path):
    """``mpirun -n 2 convforge train --batch 16``: the same checkpoint as ``--batch 32`` in
    one process (same seed, so the same global batches in the same order), printed once."""
    common = ["lenet5", "--data", "digits", "--epochs", "1", "--dtype", "float64", "--no-progress"]
    two = tmp_path / "two.ckpt"
    result = mpirun(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "train",
            *common,
            "--batch",
            "16",
            "--checkpoint",
            str(two),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 1:") == 1  # rank 0 only
    assert "data-parallel on 2 processes: global batch 32" in result.stdout
    one = tmp_path / "one.ckpt"
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "train",
            *common,
            "--batch",
            "32",
            "--checkpoint",
            str(one),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NUMBA_NUM_THREADS": "1"},
    )
    assert single.returncode == 0, single.stderr[-3000:]
    got, got_meta = load_checkpoint(str(two))
    want, want_meta = load_checkpoint(str(one))
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12, err_msg=name)
    assert got_meta["history"][0]["val_loss"] == pytest.approx(
        want_meta["history"][0]["val_loss"], rel=1e-9
    )
    assert (got_meta["processes"], want_meta["processes"]) == (2, 1)

    # resuming works with another number of processes, both ways
    resumed = mpirun(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "train",
            "--resume",
            str(one),
            "--epochs",
            "2",
            "--checkpoint",
            str(one),
            "--no-progress",
        ]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "train",
            "--resume",
            str(two),
            "--epochs",
            "2",
            "--checkpoint",
            str(two),
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    for path, processes in ((one, 2), (two, 1)):
        meta = load_checkpoint(str(path))[1]
        assert (meta["next_epoch"], meta["processes"], len(meta["history"])) == (2, processes, 2)


def test_one_process_world_is_the_plain_executable():
    """Without mpirun, DataParallel needs no MPI and steps exactly as the executable does."""
    world = World.from_environment()
    assert (world.rank, world.size, world.comm) == (0, 1, None)
    plain = mpi_worker.compile_model("lenet5", 8)
    wrapped = DataParallel(mpi_worker.compile_model("lenet5", 8), world)
    for step in range(3):
        batch = mpi_worker.global_batch("lenet5", 8, step)
        assert wrapped.train_step(*batch) == plain.train_step(*batch)
    for key, value in plain.state_dict().items():
        np.testing.assert_array_equal(wrapped.state_dict()[key], value)
