"""Data-parallel training over MPI: several processes, one model, the result of one large batch.

Each process (an MPI rank, started by ``mpirun -n N``) compiles the same model for its own
batch of B images. ``DataParallel`` wraps that executable so that ``train_step`` on N processes
equals one process with batch N x B (Horovod's and DistributedDataParallel's design, on the
compiled plan instead of autograd hooks):

1. At the start, rank 0's parameters, BatchNorm statistics and optimizer state are broadcast.
2. ``train_step`` runs the training plan up to the optimizer's first update step
   (``Executable._update_step``): forward, loss and backward. Parameter gradients are averaged
   across processes in buckets (``GradientBuckets``): a bucket's ``Iallreduce`` starts as soon
   as the backward pass has written its last gradient, while the rest of the backward runs;
   the plan is executed in segments between those points. Then every process runs the same
   update on the same averaged gradients, so the weights stay identical without another
   broadcast.
3. The loss is averaged in the last bucket (one more number, no extra message).

BatchNorm: by default each process normalises with its own batch's statistics (as
DistributedDataParallel does); compile with ``sync_batch_norm=N`` for statistics over all N
batches. Then the training graph has ``allreduce_mean`` nodes (``graph.ops.collective``),
and the plan calls ``World.average`` on each one's output between its segments
(``Plan.communicate``), so every way of running the plan synchronises. Per-process
statistics drift apart; ``eval()`` broadcasts rank 0's (DistributedDataParallel's
``broadcast_buffers``), so evaluation and checkpoints use one set.

Faults: every wait is a poll with a deadline (``World.wait``). A process that died or hangs
makes the others raise ``RankFailure`` within ``timeout`` seconds, naming the ranks that did
not answer; the command line then aborts the whole job (``World.abort``), so nothing hangs.

GPUs: this is CPU-only. On GPUs the same design would average device buffers with NCCL
(through CuPy's ``cupy.cuda.nccl``) on the executable's stream, which also lets the reduction
overlap inside the CUDA graph instead of between plan segments.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from engine.executable import Executable

_ENVIRONMENT = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
_STUCK_TAG = 7717
DEFAULT_TIMEOUT = 300.0
DEFAULT_BUCKET_BYTES = 4 << 20


class RankFailure(RuntimeError):
    """A process did not reach a collective in time: it died, hangs, or runs another model."""


def under_mpi() -> bool:
    """True when started by mpirun/mpiexec (Open MPI, MPICH or PMIx), without importing MPI."""
    return any(name in os.environ for name in _ENVIRONMENT)


@dataclass
class World:
    """The processes of one run: ``rank`` of ``size``, and the MPI communicator (None for a
    single process, which needs no MPI at all).

    ``timeout``: seconds any process waits for the others before ``RankFailure``
    (``CONVFORGE_DISTRIBUTED_TIMEOUT`` overrides the default, 300 s).
    """

    comm: object = None
    rank: int = 0
    size: int = 1
    timeout: float = DEFAULT_TIMEOUT
    waited: float = field(default=0.0, repr=False)

    @classmethod
    def from_environment(cls, timeout: float | None = None) -> World:
        """The MPI world when started by mpirun (one Numba thread pool per core share), else
        a single process. Needs mpi4py under mpirun: ``pip install ".[mpi]"``."""
        if timeout is None:
            timeout = float(os.environ.get("CONVFORGE_DISTRIBUTED_TIMEOUT", DEFAULT_TIMEOUT))
        if not under_mpi():
            return cls(timeout=timeout)
        try:
            from mpi4py import MPI
        except ImportError:
            raise ImportError(
                'started by mpirun, but mpi4py is not installed: pip install ".[mpi]"'
            ) from None
        comm = MPI.COMM_WORLD
        _share_cores(comm)
        return cls(comm, comm.Get_rank(), comm.Get_size(), timeout)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def local(self, batch: np.ndarray) -> np.ndarray:
        """This rank's slice of a global batch: the r-th of ``size`` equal parts."""
        if len(batch) % self.size:
            raise ValueError(
                f"a global batch of {len(batch)} does not split into {self.size} equal parts"
            )
        part = len(batch) // self.size
        return batch[self.rank * part : (self.rank + 1) * part]

    def average(self, array: np.ndarray, what: str = "allreduce_mean") -> None:
        """Replace ``array`` (contiguous) by its mean over the processes, in place."""
        if self.size == 1:
            return
        self.wait([self.comm.Iallreduce(_in_place(), array)], what)
        array /= self.size

    def sum(self, values: Sequence[float], what: str = "a sum") -> np.ndarray:
        """The element-wise sum of ``values`` over the processes (float64)."""
        total = np.array(values, dtype=np.float64)
        if self.size > 1:
            self.wait([self.comm.Iallreduce(_in_place(), total)], what)
        return total

    def broadcast(self, array: np.ndarray, what: str) -> None:
        """Rank 0's ``array`` into every process's, in place."""
        if self.size > 1:
            self.wait([self.comm.Ibcast(array, root=0)], what)

    def gather_strings(self, text: str, what: str) -> list[str]:
        """Every rank's ``text``, in rank order (fixed-size, so it can be polled)."""
        encoded = np.zeros(256, np.uint8)
        raw = text.encode()[:256]
        encoded[: len(raw)] = np.frombuffer(raw, np.uint8)
        gathered = np.zeros((self.size, 256), np.uint8)
        if self.size == 1:
            gathered[0] = encoded
        else:
            self.wait([self.comm.Iallgather(encoded, gathered)], what)
        return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in gathered]

    def wait(self, requests: list, what: str) -> None:
        """Poll ``requests`` until all complete; after ``timeout`` seconds, find out which
        ranks are not waiting too and raise ``RankFailure`` naming them."""
        from mpi4py import MPI

        start = time.perf_counter()
        deadline = start + self.timeout
        while not MPI.Request.Testall(requests):
            if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_STUCK_TAG):
                self._answer_stuck_notices()
            if time.perf_counter() > deadline:
                raise RankFailure(self._describe_missing(what))
            time.sleep(0)  # yield the core: a rank may share it with the one it waits for
        self.waited += time.perf_counter() - start

    def _answer_stuck_notices(self) -> None:
        """Another rank timed out and asks who is alive: say that this one is (waiting)."""
        from mpi4py import MPI

        status = MPI.Status()
        notice = np.zeros(1, np.int64)
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_STUCK_TAG, status=status):
            self.comm.Recv(notice, source=status.Get_source(), tag=_STUCK_TAG)
            if notice[0] >= 0:  # a question (the answers are -1)
                self.comm.Isend(np.array([-1], np.int64), dest=status.Get_source(), tag=_STUCK_TAG)

    def _describe_missing(self, what: str) -> str:
        """Ask every other rank whether it is alive (waiting); the ones that do not answer
        within a grace period are the failed ones."""
        from mpi4py import MPI

        question = np.array([self.rank], np.int64)
        others = [r for r in range(self.size) if r != self.rank]
        for other in others:
            self.comm.Isend(question, dest=other, tag=_STUCK_TAG)
        heard, status, notice = set(), MPI.Status(), np.zeros(1, np.int64)
        grace_end = time.perf_counter() + min(5.0, max(1.0, self.timeout / 10))
        while time.perf_counter() < grace_end and len(heard) < len(others):
            while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_STUCK_TAG, status=status):
                source = status.Get_source()
                self.comm.Recv(notice, source=source, tag=_STUCK_TAG)
                heard.add(source)
                if notice[0] >= 0:  # it timed out too and asks: answer
                    self.comm.Isend(np.array([-1], np.int64), dest=source, tag=_STUCK_TAG)
            time.sleep(0.01)
        missing = [r for r in others if r not in heard]
        who = f"rank {missing[0]}" if len(missing) == 1 else f"ranks {', '.join(map(str, missing))}"
        if not missing:
            who = "no rank (all answered, so a collective is mismatched)"
        return (
            f"rank {self.rank} waited {self.timeout:g} s for {what}: {who} did not answer "
            f"(it died, hangs, or runs a different step); stopping"
        )

    def abort(self, code: int = 1) -> None:
        """End every process of the job now (after a ``RankFailure``: a hung rank would
        otherwise keep mpirun, and MPI_Finalize, waiting)."""
        if self.comm is not None:
            self.comm.Abort(code)


@contextmanager
def failing_together(world: World):
    """Around a data-parallel run: an error on any rank prints one line naming the rank and
    aborts the whole job at once. Otherwise the others would wait for the failed rank until
    their timeout, and a hung rank would keep mpirun waiting for ever."""
    try:
        yield
    except Exception as error:
        if world.size == 1:
            raise
        if os.environ.get("CONVFORGE_TRACEBACK"):
            traceback.print_exc()
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"convforge: rank {world.rank}: error: {first_line}", file=sys.stderr, flush=True)
        world.abort(2 if isinstance(error, ValueError | TypeError | OSError) else 1)
        raise


def _in_place():
    from mpi4py import MPI

    return MPI.IN_PLACE


def _share_cores(comm) -> None:
    """Give each of the ranks on this machine its share of the cores' Numba threads: N
    thread pools of all cores each would fight over them."""
    import numba

    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", os.environ.get("MPI_LOCALNRANKS", 1)))
    numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS // max(1, local)))


@dataclass
class GradientBuckets:
    """Parameter gradients grouped in the order the backward pass finishes them, each group
    averaged by one ``Iallreduce`` on a flat buffer (fewer, larger messages; DDP's buckets).

    ``ready_steps[i]``: the plan step after which bucket i's gradients are all written.
    """

    names: list[list[str]]
    ready_steps: list[int]
    flats: list[np.ndarray]

    @classmethod
    def plan(cls, exe: Executable, bucket_bytes: int) -> GradientBuckets:
        plan = exe._training
        producer = {out.name: node.name for node in plan.graph.nodes for out in node.outputs}
        last_step = {}
        for index, node in enumerate(plan.step_nodes):
            last_step[node] = index
        grads = plan.graph.grads
        ordered = sorted(
            (last_step[producer[g.name]], key, g)
            for key, g in grads.items()
            if g.name in producer and key in exe.params
        )
        names, ready, flats, current, size = [], [], [], [], 0
        for position, (step, key, value) in enumerate(ordered):
            current.append(key)
            size += value.type.nbytes
            if size >= bucket_bytes or position == len(ordered) - 1:
                names.append(current)
                ready.append(step + 1)
                count = sum(grads[k].type.numel for k in current)
                flats.append(np.zeros(count + (position == len(ordered) - 1), exe.dtype))
                current, size = [], 0
        if ready and ready[-1] > exe._update_step:
            raise AssertionError("a gradient is written after the first optimizer update step")
        return cls(names, ready, flats)


class DataParallel:
    """``exe`` (compiled with ``train=True`` and an optimizer, for this process's batch)
    trained as one model by every process of ``world``.

    The object stands in for the executable in ``engine.train.fit`` and ``evaluate``:
    ``train_step``, ``run``, ``train``/``eval``, ``input_shape``, ``optimizer``, the state
    accessors and ``world`` (which ``fit`` uses to slice global batches, print and save on rank
    0 only, and split evaluation).

    Args:
        world: ``World.from_environment()`` by default.
        bucket_bytes: gradient bytes per allreduce (4 MiB by default).
        overlap: start each bucket's allreduce while the rest of the backward pass runs.
    """

    def __init__(
        self,
        exe: Executable,
        world: World | None = None,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        overlap: bool = True,
    ):
        if exe.optimizer is None or exe._training is None:
            raise ValueError(
                "DataParallel needs an executable compiled with train=True and an optimizer"
            )
        if exe.options is not None and exe.options.backend != "cpu":
            raise ValueError(
                f"DataParallel runs on the CPU backend (MPI), but the executable was compiled "
                f"for backend={exe.options.backend!r}"
            )
        self.exe = exe
        self.world = world or World.from_environment()
        self.overlap = overlap
        self.buckets = GradientBuckets.plan(exe, bucket_bytes)
        self._check_same_model()
        self._check_sync_batch_norm()
        exe._training.communicate = self.world.average if self.world.size > 1 else None
        self.broadcast_state(optimizer=True)

    # **** what fit and evaluate use, as on an Executable ****

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.exe.input_shape

    @property
    def global_batch(self) -> int:
        return self.exe.input_shape[0] * self.world.size

    @property
    def dtype(self) -> np.dtype:
        return self.exe.dtype

    @property
    def optimizer(self):
        return self.exe.optimizer

    @property
    def training(self) -> bool:
        return self.exe.training

    @property
    def params(self):
        return self.exe.params

    @property
    def grads(self):
        return self.exe.grads

    @property
    def extra_state(self):
        return self.exe.extra_state

    @property
    def optimizer_state(self):
        return self.exe.optimizer_state

    @property
    def rng_state(self):
        return self.exe.rng_state

    def state_dict(self):
        return self.exe.state_dict()

    def set_tensors(self, tensors) -> None:
        self.exe.set_tensors(tensors)

    def train(self, mode: bool = True) -> DataParallel:
        self.exe.train(mode)
        return self

    def eval(self) -> DataParallel:
        """Eval mode, with rank 0's BatchNorm statistics on every rank (they drift apart when
        each process normalises with its own batch)."""
        self.broadcast_state(optimizer=False)
        self.exe.eval()
        return self

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.exe.run(x)

    # **** training ****

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One step of the global batch (this rank's part ``x``, ``y``): forward and backward
        here, gradients averaged over the processes, the same update everywhere. Returns the
        loss averaged over the processes: the global batch's mean loss."""
        exe = self.exe
        plan, update = exe._training, exe._update_step
        if self.world.size == 1:
            return exe.train_step(x, y)
        with exe._lock:
            exe._start_step(x, y)
            # each bucket starts when its last gradient is written (or, without overlap, once
            # the whole backward pass is done); the plan runs in the parts between
            starts = (
                self.buckets.ready_steps if self.overlap else [update] * len(self.buckets.flats)
            )
            requests, done = [], 0
            for index, ready in enumerate(starts):
                if ready > done:
                    plan.execute(done, ready)
                    done = ready
                requests.append(self._start_bucket(index, exe._loss_value()))
            if update > done:
                plan.execute(done, update)
            self.world.wait(requests, f"the gradient allreduce of step {exe.optimizer.steps}")
            loss = self._finish_buckets()
            plan.execute(update)
            return loss

    def _start_bucket(self, index: int, loss: float):
        """Copy bucket ``index``'s gradients (and, in the last, the loss) into its flat buffer
        and start averaging it."""
        flat, offset = self.buckets.flats[index], 0
        grads = self.exe.grads
        for key in self.buckets.names[index]:
            grad = grads[key].reshape(-1)
            flat[offset : offset + grad.size] = grad
            offset += grad.size
        if offset < flat.size:
            flat[offset] = loss
        return self.world.comm.Iallreduce(_in_place(), flat)

    def _finish_buckets(self) -> float:
        """Write the averaged gradients back; returns the averaged loss."""
        tensors, loss = {}, 0.0
        for names, flat in zip(self.buckets.names, self.buckets.flats, strict=True):
            flat /= self.world.size
            offset = 0
            for key in names:
                shape = self.exe.params[key].shape
                count = int(np.prod(shape))
                tensors[key] = flat[offset : offset + count].reshape(shape)
                offset += count
            if offset < flat.size:
                loss = float(flat[offset])
        self.exe.set_grads(tensors)
        return loss

    # **** consistency ****

    def broadcast_state(self, optimizer: bool) -> None:
        """Rank 0's tensors into every process: with ``optimizer``, everything (parameters,
        BatchNorm statistics, optimizer state and step count: the start of a run); without,
        only the BatchNorm statistics, the one thing the processes' steps leave different."""
        if self.world.size == 1:
            return
        tensors = dict(self.exe.extra_state)
        if optimizer:
            tensors.update(self.exe.params)
            tensors.update(self.exe.optimizer_state)
        else:
            state = {v.name for v in self.exe.graph.params if v.role == "state"}
            tensors.update({k: v for k, v in self.exe.params.items() if k in state})
        received = {}
        for name in sorted(tensors):
            array = np.array(tensors[name], order="C")  # a copy; 0-d stays 0-d
            self.world.broadcast(array, f"the broadcast of {name}")
            received[name] = array
        self.exe.set_tensors(received)
        if optimizer:
            steps = np.array([self.exe.optimizer.steps], np.int64)
            self.world.broadcast(steps, "the broadcast of the optimizer's step count")
            self.exe.optimizer.steps = int(steps[0])

    def _check_same_model(self) -> None:
        """Every rank must hold the same model at the same batch and dtype: otherwise the
        buckets do not line up and the run would hang or average unrelated numbers."""
        params = ",".join(f"{k}{list(v.shape)}" for k, v in sorted(self.exe.params.items()))
        mine = f"{list(self.exe.input_shape)} {self.exe.dtype} {zlib.crc32(params.encode())}"
        every = self.world.gather_strings(mine, "the model check at start")
        differ = [r for r, text in enumerate(every) if text != every[0]]
        if differ:
            raise ValueError(
                f"the processes compiled different models: rank 0 has {every[0]}, rank "
                f"{differ[0]} has {every[differ[0]]} (input shape, dtype, parameter checksum)"
            )

    def _check_sync_batch_norm(self) -> None:
        options = self.exe.options
        processes = getattr(options, "sync_batch_norm", None) if options else None
        if processes is not None and processes != self.world.size:
            raise ValueError(
                f"the executable was compiled with sync_batch_norm={processes}, but the run has "
                f"{self.world.size} processes"
            )
