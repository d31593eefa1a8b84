"""A trained run, as the analysis commands need it: a checkpoint of ``convforge train``
compiled for inference with its weights, its normalisation, and a fixed subset of a test split
(the run's own data unless another is named), resized to the model's input as training did."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import engine
import zoo
from engine.checkpoint import load_checkpoint
from engine.cli_predict import _training_run
from engine.cli_training import UsageError, _fit_to
from engine.data import Dataset, Normalize, load_dataset
from engine.executable import Executable
from engine.train import load_weights


@dataclass
class TrainedRun:
    """``exe``: the checkpoint's model for inference at ``batch``, holding its weights;
    ``test``: the first ``samples`` images of the test split (None without data)."""

    checkpoint: str
    model: str
    meta: dict
    exe: Executable
    norm: Normalize
    test: Dataset | None


def load_run(
    checkpoint: str,
    model: str | None = None,
    data: str | None = None,
    batch: int | None = None,
    samples: int | None = None,
    with_data: bool = True,
) -> TrainedRun:
    """The run saved in ``checkpoint``; ``model``, when given, must be the checkpoint's."""
    if not Path(checkpoint).is_file():
        raise UsageError(f"checkpoint {checkpoint} does not exist")
    meta = load_checkpoint(checkpoint)[1]
    if "saved_model" in meta:
        raise UsageError(f"{checkpoint} is a saved model (engine.save); name a training checkpoint")
    shape, norm, _ = _training_run(checkpoint, meta, model)
    run = meta["arguments"]
    test = _test_subset(data or run["data"], run["seed"], shape, samples) if with_data else None
    if batch is None:
        batch = min(run["batch"], len(test)) if test is not None else 1
    exe = engine.compile(
        zoo.get(meta["model"], **meta["model_args"]), shape, batch=batch, dtype=run["dtype"]
    )
    load_weights(checkpoint, exe)
    classes = exe.graph.outputs[0].shape[1]
    if test is not None and int(test.y.max()) >= classes:
        raise UsageError(
            f"the data has class {int(test.y.max())}, but {meta['model']} in {checkpoint} "
            f"predicts {classes} classes"
        )
    return TrainedRun(checkpoint, meta["model"], meta, exe, norm, test)


def _test_subset(data: str, seed: int, shape, samples: int | None) -> Dataset:
    """The test split of ``data`` (split by the run's seed, as training split it), resized to
    ``shape``, cut to its first ``samples`` images."""
    _, test = load_dataset(data, seed=seed)
    if test.x.shape[1] != shape[0]:
        raise UsageError(
            f"the data has {test.x.shape[1]} channels, but the checkpoint's model takes {shape[0]}"
        )
    test = _fit_to(test, tuple(shape[1:]))
    if samples is not None and samples < len(test):
        test = test.subset(np.arange(samples))
    return test
