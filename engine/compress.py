"""The engine side of compression: training with pruning masks inside the compiled step,
iterative prune -> retrain, and centroid fine-tuning of shared weights.

``graph/compress`` holds the array and graph transforms; what needs an executable lives here.
``MaskedOptimizer`` wraps any ``engine.optim`` optimizer: its ``add_updates`` appends the
``apply_mask`` nodes after the inner optimizer's updates (``graph.compress.masks``), and every
other attribute (``lr``, ``steps``, ``state_dict``) is the inner optimizer's, so schedules and
checkpoints see the optimizer they know.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

import engine
from engine.checkpoint import write_atomically
from engine.data import Dataset
from engine.executable import Executable
from engine.optim import Optimizer
from engine.train import _progress, evaluate, fit
from graph.compress import cfz
from graph.compress.kmeans import SharedWeights
from graph.compress.masks import add_mask_nodes, mask_name
from graph.ir import Graph
from graph.nn import Module


class MaskedOptimizer:
    """``optimizer`` whose updates are followed by the masks of ``params``."""

    def __init__(self, optimizer: Optimizer, params: Sequence[str]) -> None:
        object.__setattr__(self, "inner", optimizer)
        object.__setattr__(self, "params", list(params))

    def add_updates(self, graph: Graph) -> None:
        self.inner.add_updates(graph)
        add_mask_nodes(graph, self.params)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self.inner, name, value)


def compile_masked(
    model: Module,
    masks: Mapping[str, np.ndarray],
    optimizer: Optimizer,
    input_shape: Sequence[int],
    batch: int,
    dtype: str = "float32",
) -> Executable:
    """A training executable of ``model`` whose ``train_step`` keeps ``masks``: the masked
    weights are zeroed now, and stay zero (with their gradients and optimizer slots)."""
    exe = engine.compile(
        model,
        input_shape,
        batch=batch,
        dtype=dtype,
        train=True,
        optimizer=MaskedOptimizer(optimizer, list(masks)),
    )
    set_masks(exe, masks)
    return exe


def set_masks(exe: Executable, masks: Mapping[str, np.ndarray]) -> None:
    """Write ``masks`` into a ``compile_masked`` executable and zero what they prune: the
    weights, and the gradients and optimizer slots that the masking nodes also cover."""
    names = set(getattr(exe.optimizer, "params", ()))
    unknown = sorted(set(masks) - names)
    if unknown:
        raise ValueError(f"the executable was not compiled to mask {unknown}")
    slots = exe.optimizer_state
    tensors: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        keep = np.asarray(mask, bool)
        tensors[mask_name(name)] = keep.astype(exe.dtype)
        tensors[name] = np.where(keep, exe.params[name], 0)
        tensors.update(
            (slot, np.where(keep, value, 0))
            for slot, value in slots.items()
            if slot.startswith(f"optimizer.{name}.")
        )
    exe.set_tensors(tensors)


def retrain(
    exe: Executable,
    train: Dataset,
    epochs: int,
    preprocess: Callable | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> None:
    """``engine.train.fit`` for ``epochs`` (the masks hold throughout)."""
    if epochs > 0:
        fit(exe, train, None, epochs, preprocess=preprocess, seed=seed, progress=progress, log=log)


def finetune_centroids(
    exe: Executable,
    shared: Mapping[str, SharedWeights],
    train: Dataset,
    epochs: int,
    lr: float,
    preprocess: Callable | None = None,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Fine-tune the shared weights' centroids by Deep Compression's grouped gradients (a
    centroid moves by the sum of its weights' gradients) with plain SGD; the other parameters
    keep their values. ``exe`` is a training executable (no optimizer needed)."""
    batch = exe.input_shape[0]
    for epoch in range(epochs):
        exe.train()
        batches = train.batches(batch, seed=seed, epoch=epoch)
        bar = _progress(batches, train.num_batches(batch), f"centroids {epoch + 1}", progress)
        for x, y in bar:
            x = preprocess(x) if preprocess is not None else x
            exe.forward_backward(x.astype(exe.dtype, copy=False), y)
            grads, updated = exe.grads, {}
            for name, weights in shared.items():
                weights.centroids -= lr * weights.centroid_gradient(grads[name])
                updated[name] = weights.weights().astype(exe.dtype)
            exe.set_tensors(updated)
    exe.eval()


# **** Compressed files ****


def save_compressed(
    path: str | os.PathLike[str] | None,
    shared: Mapping[str, SharedWeights],
    tensors: Mapping[str, np.ndarray],
    metadata: dict,
    index_bits: Mapping[str, int],
    huffman: bool = True,
) -> tuple[bytes, list[cfz.LayerSize]]:
    """Write a ``.cfz`` atomically (or only measure it: ``path=None``): the ``shared`` layers
    compressed, every other tensor of ``tensors`` (biases, BatchNorm state) raw; returns the
    file's bytes and each layer's size."""
    dense = {name: np.asarray(t) for name, t in tensors.items() if name not in shared}
    blob, sizes = cfz.pack(dict(shared), dense, metadata, dict(index_bits), huffman)
    if path is not None:
        write_atomically(Path(path), blob)
    return blob, sizes


def load_compressed(path: str | os.PathLike[str]) -> cfz.Unpacked:
    """Read and decode a ``.cfz`` (``ValueError`` naming the file and what is wrong)."""
    return cfz.unpack(Path(path).read_bytes(), str(path))


def is_compressed(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts like a ``.cfz`` file."""
    with open(path, "rb") as file:
        return file.read(len(cfz.MAGIC)) == cfz.MAGIC


# **** Lottery tickets ****


class TicketTrainer:
    """Trains a weight set under a mask from scratch, again and again, on one compiled
    executable: each call loads every tensor, zeroes the optimizer's slots and step count,
    writes the masks, trains ``epochs`` epochs and returns the weights and the test top-1."""

    def __init__(
        self,
        exe: Executable,
        train: Dataset,
        test: Dataset,
        epochs: int,
        preprocess: Callable | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.exe, self.train, self.test, self.epochs = exe, train, test, epochs
        self.preprocess, self.seed, self.progress = preprocess, seed, progress

    def __call__(
        self, weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], float]:
        exe = self.exe
        exe.set_tensors(dict(weights))
        exe.set_tensors({name: np.zeros_like(v) for name, v in exe.optimizer_state.items()})
        exe.optimizer.steps = 0
        set_masks(exe, masks)
        fit(
            exe,
            self.train,
            None,
            self.epochs,
            preprocess=self.preprocess,
            seed=self.seed,
            progress=self.progress,
            log=lambda line: None,
        )
        top1 = evaluate(exe, self.test, self.preprocess)["top1"]
        return {name: np.array(v) for name, v in exe.state_dict().items()}, top1


def rewound_weights(
    exe: Executable, train: Dataset, steps: int, preprocess: Callable | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """The weights after the first ``steps`` training steps of the dense run (Frankle et al.
    2019's rewinding point), trained in place on ``exe`` with the same batches as ``fit``."""
    batch, done = exe.input_shape[0], 0
    exe.train()
    for epoch in range(steps // max(train.num_batches(batch), 1) + 1):
        for x, y in train.batches(batch, seed=seed, epoch=epoch):
            if done == steps:
                return {name: np.array(v) for name, v in exe.state_dict().items()}
            x = preprocess(x) if preprocess is not None else x
            exe.train_step(x.astype(exe.dtype, copy=False), y)
            done += 1
    return {name: np.array(v) for name, v in exe.state_dict().items()}
