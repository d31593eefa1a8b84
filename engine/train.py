"""The training loop: epochs of ``train_step`` over seeded batches, validation, schedules,
checkpoints and exact resume.

Everything random is a pure function of (seed, epoch, batch): the batch order
(``Dataset.batches``), augmentation (``Augment``), and dropout (driven by the optimizer's step
count). So a run stopped after epoch N and resumed from its checkpoint reproduces, bit for bit,
the weights of a run that never stopped: the checkpoint holds the weights, BatchNorm
statistics, optimizer buffers and step count, the schedule's state and the next epoch.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.data import Dataset
from engine.executable import Executable
from engine.schedules import Schedule
from graph.autodiff import DROPOUT_RNG


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float | None
    top1: float | None
    top5: float | None
    lr: float
    seconds: float
    images_per_second: float


def evaluate(
    exe: Executable, data: Dataset, preprocess: Callable | None = None
) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 accuracy of ``exe`` (eval mode) on all of ``data``
    (after ``preprocess``, e.g. ``Normalize``); the last partial batch is padded to the compiled
    batch and the padding ignored.

    With an ``engine.distributed.DataParallel`` (it has a ``world``), each process evaluates
    every N-th batch and the sums are reduced: every process returns the same numbers."""
    batch, was_training = exe.input_shape[0], exe.training
    world = getattr(exe, "world", None)
    starts = range(0, len(data), batch)
    if world is not None:
        starts = starts[world.rank :: world.size]
    exe.eval()
    losses, hits1, hits5 = [np.zeros(0)], 0, 0
    for start in starts:
        x, y = data.x[start : start + batch], data.y[start : start + batch]
        padded = np.zeros(exe.input_shape, exe.dtype)
        padded[: len(x)] = preprocess(x) if preprocess is not None else x
        logits = exe.run(padded)[: len(x)].astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        losses.append(-log_probs[np.arange(len(y)), y])
        ranked = np.argsort(-logits, axis=1, kind="stable")
        hits1 += int((ranked[:, 0] == y).sum())
        hits5 += int((ranked[:, :5] == y[:, None]).any(axis=1).sum())
    exe.train(was_training)
    totals = [np.concatenate(losses).sum(), hits1, hits5]
    if world is not None:
        totals = world.sum(totals, "the evaluation sums")
    return {
        "loss": float(totals[0] / len(data)),
        "top1": int(totals[1]) / len(data),
        "top5": int(totals[2]) / len(data),
    }


def fit(
    exe: Executable,
    train: Dataset,
    val: Dataset | None = None,
    epochs: int = 1,
    schedule: Schedule | None = None,
    augment: Callable | None = None,
    preprocess: Callable | None = None,
    seed: int = 0,
    start_epoch: int = 0,
    checkpoint: str | None = None,
    metadata: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> list[EpochResult]:
    """Train ``exe`` (compiled with ``train=True`` and an optimizer) for epochs
    ``start_epoch .. epochs - 1``.

    Args:
        schedule: stepped once per epoch with the validation loss (or the training loss); its
            ``lr`` is the optimizer's learning rate during the epoch.
        augment: ``augment(x, epoch, batch_index) -> x`` (``engine.augment.Augment``), on
            images in [0, 1].
        preprocess: applied after augmentation, and to validation batches (``Normalize``).
        checkpoint: a path written atomically after every epoch (``metadata`` goes with it).
            With an ``engine.distributed.DataParallel`` for ``exe``, batches are global (N x
            the compiled batch, in the order one process with that batch would take), each
            rank trains on its slice, and only rank 0 logs, shows progress and writes.
        progress: a tqdm bar per epoch with the loss, images per second and time left.
        on_epoch: called with each epoch's result before its checkpoint is written (training
            curves: ``engine.analysis.curves``).
    Returns:
        One ``EpochResult`` per epoch trained.
    Raises:
        TrainingDiverged: a training or validation loss became NaN or infinite; it names the
            epoch and step, and the checkpoint still holds the last good epoch.
    """
    if exe.optimizer is None:
        raise ValueError("fit needs an executable compiled with train=True and an optimizer")
    world = getattr(exe, "world", None)  # engine.distributed.DataParallel: global batches
    batch, results = getattr(exe, "global_batch", exe.input_shape[0]), []
    if world is not None and not world.is_root:  # one voice, one file: rank 0's
        progress, log, on_epoch, checkpoint = False, ignore, None, None
    if len(train) < batch:
        raise ValueError(
            f"the training set has {len(train)} samples, fewer than one batch of {batch}"
        )
    for epoch in range(start_epoch, epochs):
        exe.train()
        if schedule is not None:
            exe.optimizer.lr = schedule.lr
        losses, start = [], time.perf_counter()
        batches = train.batches(batch, seed=seed, epoch=epoch)
        bar = _progress(batches, train.num_batches(batch), f"epoch {epoch + 1}/{epochs}", progress)
        for index, (x, y) in enumerate(bar):
            x = augment(x, epoch, index) if augment is not None else x
            if world is not None:  # this rank's part, as augmented in the global batch
                x, y = world.local(x), world.local(y)
            x = preprocess(x) if preprocess is not None else x
            losses.append(exe.train_step(x.astype(exe.dtype, copy=False), y))
            _check_finite(losses[-1], "training loss", epoch, index, exe, checkpoint)
            if progress and index % 10 == 0:
                rate = (index + 1) * batch / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{rate:,.0f}")
        seconds = time.perf_counter() - start
        scores = evaluate(exe, val, preprocess) if val is not None else {}
        if scores:
            last_step = len(losses) - 1
            _check_finite(scores["loss"], "validation loss", epoch, last_step, exe, checkpoint)
        result = EpochResult(
            epoch,
            float(np.mean(losses)),
            scores.get("loss"),
            scores.get("top1"),
            scores.get("top5"),
            exe.optimizer.lr,
            seconds,
            len(losses) * batch / seconds,
        )
        results.append(result)
        log(_describe(result))
        if on_epoch is not None:
            on_epoch(result)
        if schedule is not None:
            schedule.step(result.val_loss if result.val_loss is not None else result.train_loss)
        if checkpoint is not None:
            save_training_checkpoint(checkpoint, exe, epoch + 1, schedule, seed, metadata)
    return results


def ignore(message: str) -> None:
    """A log that drops its lines: every rank's but 0's in a data-parallel run."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the weights are no longer usable."""


def _check_finite(
    loss: float, what: str, epoch: int, step: int, exe: Executable, checkpoint: str | None
) -> None:
    """Stop before a diverged model can reach the checkpoint: the file keeps the last good
    epoch (checkpoints are written only after an epoch whose losses were all finite)."""
    if np.isfinite(loss):
        return
    kept = (
        f"the checkpoint {checkpoint} keeps the last good epoch"
        if checkpoint is not None
        else "no checkpoint was written"
    )
    raise TrainingDiverged(
        f"training diverged at epoch {epoch + 1}, step {step + 1}: the {what} is {loss}; {kept}. "
        f"Try a lower learning rate (it was {exe.optimizer.lr:.4g})"
    )


def _progress(batches, total: int, description: str, enabled: bool):
    if not enabled:
        return batches
    from tqdm import tqdm

    return tqdm(batches, total=total, desc=description, unit="batch", leave=False)


def _describe(result: EpochResult) -> str:
    text = (
        f"epoch {result.epoch + 1}: train loss {result.train_loss:.4f}, lr {result.lr:.4g}, "
        f"{result.seconds:.1f} s ({result.images_per_second:,.0f} images/s)"
    )
    if result.val_loss is not None:
        text += (
            f"; validation loss {result.val_loss:.4f}, top-1 {100 * result.top1:.2f}%, "
            f"top-5 {100 * result.top5:.2f}%"
        )
    return text


def save_training_checkpoint(
    path: str,
    exe: Executable,
    next_epoch: int,
    schedule: Schedule | None,
    seed: int,
    metadata: dict | None = None,
) -> None:
    """Weights, BatchNorm statistics and optimizer buffers as tensors; the optimizer's and the
    schedule's state, the next epoch and the seed as JSON metadata."""
    tensors = {**exe.state_dict(), **exe.optimizer_state, **exe.rng_state}
    meta = {
        **(metadata or {}),
        "next_epoch": next_epoch,
        "seed": seed,
        "optimizer": exe.optimizer.state_dict(),
        "schedule": schedule.state_dict() if schedule is not None else None,
    }
    save_checkpoint(path, tensors, meta)  # which makes them contiguous, 0-d ones staying 0-d


def load_training_checkpoint(path: str, exe: Executable, schedule: Schedule | None = None) -> dict:
    """Restore what ``save_training_checkpoint`` wrote into ``exe`` (and ``schedule``);
    returns the metadata (``next_epoch`` is where to resume).

    All or nothing: the optimizer's and the schedule's types and every tensor's name, shape and
    dtype are checked before anything is copied, so a failed load (``ValueError`` naming the
    tensor or the state and both values) leaves ``exe`` and ``schedule`` as they were.
    """
    tensors, meta = load_checkpoint(path)
    saved_optimizer = meta.get("optimizer") or {}
    if exe.optimizer is not None:  # first: another optimizer also means other slot tensors
        _check_state_loads(path, "optimizer", exe.optimizer, saved_optimizer)
    targets = {**exe.params, **exe.extra_state, **exe.optimizer_state, **exe.rng_state}
    _check_tensors(path, tensors, targets, ignored=())
    if schedule is not None and meta.get("schedule") is not None:
        _check_state_loads(path, "schedule", schedule, meta["schedule"])
    exe.set_tensors({name: tensors[name] for name in targets})
    if exe.optimizer is not None:
        exe.optimizer.load_state_dict(saved_optimizer)
    if schedule is not None and meta.get("schedule") is not None:
        schedule.load_state_dict(meta["schedule"])
    return meta


def load_weights(path: str, exe: Executable) -> dict:
    """Load only the weights and BatchNorm statistics of a training checkpoint into ``exe``
    (an inference executable, say), whatever optimizer made it; returns the metadata.
    All or nothing, as ``load_training_checkpoint``."""
    tensors, meta = load_checkpoint(path)
    targets = {**exe.params, **exe.extra_state}
    _check_tensors(path, tensors, targets, ignored=("optimizer.", DROPOUT_RNG))
    exe.set_tensors({name: tensors[name] for name in targets})
    return meta


def _check_tensors(
    path: str,
    tensors: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    ignored: tuple[str, ...],
) -> None:
    """Every target has a tensor of its shape and dtype, and nothing else is there (names
    starting with one of ``ignored`` excepted)."""
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(k for k in set(tensors) - set(targets) if not k.startswith(ignored))
    if missing or unexpected:
        raise ValueError(
            f"{path}: the checkpoint does not fit this model: "
            + "; ".join(
                f"{what} {_few(names)}"
                for what, names in (("missing", missing), ("unexpected", unexpected))
                if names
            )
        )
    for name, target in targets.items():
        found = tensors[name]
        if found.shape != target.shape and not (target.shape == () and found.shape == (1,)):
            # (1,) for ():  checkpoints before 2026-12 stored num_batches_tracked that way
            raise ValueError(
                f"{path}: tensor {name} has shape {list(found.shape)} in the checkpoint, but "
                f"the model needs {list(target.shape)}"
            )
        if found.dtype != target.dtype:
            raise ValueError(
                f"{path}: tensor {name} is {found.dtype} in the checkpoint, but the executable "
                f"holds {target.dtype} (compile with dtype={found.dtype.name!r} to load it)"
            )


def _few(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _check_state_loads(path: str, what: str, owner, state: dict) -> None:
    """Load ``state`` into a copy of ``owner`` (an optimizer or schedule) to prove it fits."""
    saved = state.get("type") if isinstance(state, dict) else None
    if saved != type(owner).__name__:
        raise ValueError(
            f"{path}: the checkpoint was trained with the {what} {saved}, but this run uses "
            f"{type(owner).__name__}; resume with the same {what}"
        )
    try:
        copy.deepcopy(owner).load_state_dict(state)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: the checkpoint's {what} state does not load: {error}") from None
