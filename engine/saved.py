"""Saved models: ``save(exe, path)`` writes a compiled model to one file, ``load(path)`` gives
back an Executable that behaves exactly like it, without the Python model or a re-trace.

The file is a checkpoint (``engine.checkpoint``: safetensors with JSON metadata, a SHA-256 over
both, written atomically; never pickle), so a corrupted, truncated or foreign file fails there,
naming the file and the fault. Its tensors are ``state_dict()`` (parameters, state buffers and
``num_batches_tracked``), the optimizer slots (``optimizer.<param>.<slot>``) and the dropout
``[seed, step]`` vector. Its metadata holds one entry, ``"saved_model"``:

- ``version``: the oldest format that reads the file: 1, or 2 for an int8 model (``int8``
  below), so that a ConvForge that cannot rebuild it refuses it by name instead of loading the
  float model; a file from a newer ConvForge is refused by name;
- ``graph``: the traced forward graph (``graph_to_json``): values no node produces, in graph
  order, as ``[name, shape, dtype, role]`` (the roles give ``graph.inputs`` and
  ``graph.params`` back in order, as ``Graph.add_value`` builds them); nodes in order as
  ``{op, name, inputs, outputs: [[name, shape, dtype]], attrs}``; ``outputs``; ``consts``;
- ``options``: the ``CompileOptions`` (backend, train, loss, passes, ...);
- ``optimizer``: null, or its class in ``engine.optim``, its constructor arguments and its
  ``state_dict()`` (learning rate, step count);
- ``training``: whether the executable was in training mode;
- ``extra_state``: the names of the non-float buffers, in ``state_dict()`` order;
- ``int8`` (an executable of ``engine.quantize``): the activation scales by layer. The graph
  and options are then those of the float model it was quantised from, and ``load`` compiles
  that model and quantises it again with the same scales: the same int8 executable.

``load`` rebuilds the executable with ``compile_graph`` from that graph, those weights and those
options, so its plans, outputs (bit for bit), ``graph`` listing and ``train_step`` continue
where the saved one was. Gradients are not saved (each step overwrites them).

A checkpoint of ``convforge train`` loads too: it records the zoo model's name, arguments and
input shape, so ``load`` builds that model, compiles it for inference (the run's batch and
dtype) and loads its weights, ignoring the optimizer slots.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

import numpy as np

import zoo
from engine import optim
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.compiler import CompileOptions, compile, compile_graph
from engine.executable import Executable
from engine.train import load_weights
from graph.autodiff import DROPOUT_RNG
from graph.ir import Graph, TensorType
from graph.ops import OPS

FORMAT_VERSION = 2
INT8_FORMAT_VERSION = 2  # files with int8 scales; float models are still written as version 1
_ATTR_TYPES = (bool, int, float, str, type(None))

# **** Save ****


def save(exe: Executable, path: str | os.PathLike[str]) -> None:
    """Write ``exe`` (built by ``engine.compile``) to ``path`` atomically: the old file, if
    any, stays whole until the new one replaces it.

    Raises:
        ValueError: ``exe`` was not built by ``engine.compile`` (it has no traced graph).
        TypeError: a node attribute or the optimizer cannot be stored as JSON.
    """
    source = getattr(exe, "source", None)  # an int8 executable: what it was quantised from
    traced_graph = source.traced_graph if source is not None else exe.traced_graph
    options = source.options if source is not None else exe.options
    if traced_graph is None or options is None:
        raise ValueError("engine.save needs an executable built by engine.compile")
    saved = {
        "version": 1 if source is None else INT8_FORMAT_VERSION,
        "graph": graph_to_json(traced_graph),
        "options": dataclasses.asdict(options),
        "optimizer": _optimizer_to_json(exe.optimizer),
        "training": exe.training,
        "extra_state": list(exe.extra_state),
    }
    if source is not None:
        saved["int8"] = {name: float(scale) for name, scale in source.scales.items()}
    tensors = {**exe.state_dict(), **exe.optimizer_state, **exe.rng_state}
    save_checkpoint(path, tensors, {"saved_model": saved})


def graph_to_json(graph: Graph) -> dict[str, Any]:
    """``graph`` as JSON-ready lists (the format in the module docstring)."""
    values = [
        [v.name, list(v.shape), v.type.dtype, v.role]
        for v in graph.values.values()
        if v.producer is None
    ]
    nodes = []
    for node in graph.nodes:
        for key, value in node.attrs.items():
            _check_attr(node.name, key, value)
        nodes.append(
            {
                "op": node.op,
                "name": node.name,
                "inputs": [v.name for v in node.inputs],
                "outputs": [[v.name, list(v.shape), v.type.dtype] for v in node.outputs],
                "attrs": node.attrs,
            }
        )
    outputs = [v.name for v in graph.outputs]
    return {"values": values, "nodes": nodes, "outputs": outputs, "consts": graph.consts}


def _check_attr(node: str, key: str, value: object) -> None:
    """The IR's attribute types only: JSON turns a list into a tuple on the way back."""
    if isinstance(value, tuple):
        for item in value:
            _check_attr(node, key, item)
    elif not isinstance(value, _ATTR_TYPES):
        raise TypeError(
            f"{node}: attribute {key} is a {type(value).__name__}, which a saved graph cannot "
            "hold (ints, floats, strings, bools and tuples of them)"
        )


def _optimizer_to_json(optimizer: optim.Optimizer | None) -> dict[str, Any] | None:
    """The class, constructor arguments (read from the attributes of the same names) and
    state of an ``engine.optim`` optimizer."""
    if optimizer is None:
        return None
    kind = type(optimizer)
    if getattr(optim, kind.__name__, None) is not kind:
        raise TypeError(
            f"engine.save stores the optimizers of engine.optim, but got {kind.__qualname__}"
        )
    names = list(inspect.signature(kind.__init__).parameters)[1:]
    missing = [name for name in names if not hasattr(optimizer, name)]
    if missing:
        raise TypeError(f"engine.save: {kind.__name__} does not keep its arguments {missing}")
    arguments = {name: getattr(optimizer, name) for name in names}
    return {"type": kind.__name__, "arguments": arguments, "state": optimizer.state_dict()}


# **** Load ****


def load(path: str | os.PathLike[str], backend: str | None = None) -> Executable:
    """The Executable saved in ``path`` by ``save``, or the inference model of a
    ``convforge train`` checkpoint.

    Args:
        backend: run on this backend instead of the saved one (a model saved on a GPU machine
            loaded with ``backend="cpu"``, say).
    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is corrupted, truncated, from a newer ConvForge, holds neither a
            saved model nor a model's name, or its graph is invalid; the message names the
            file and the fault.
    """
    tensors, metadata = load_checkpoint(path)
    if "saved_model" in metadata:
        return _load_saved(path, tensors, metadata["saved_model"], backend)
    if {"model", "model_args", "input_shape", "arguments"} <= set(metadata):
        return _load_training_checkpoint(path, metadata, backend)
    raise ValueError(
        f"{path}: a ConvForge checkpoint, but neither a saved model (engine.save) nor a "
        "checkpoint of convforge train (which records the model's name and arguments); "
        "compile the model and load its weights with engine.train.load_weights"
    )


def _load_saved(
    path: str | os.PathLike[str],
    tensors: dict[str, np.ndarray],
    saved: dict[str, Any],
    backend: str | None,
) -> Executable:
    version = saved.get("version") if isinstance(saved, dict) else None
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: corrupted saved model: its format version is {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: saved by a newer ConvForge (saved-model format version {version}); this "
            f"version reads format versions up to {FORMAT_VERSION}: upgrade ConvForge to load it"
        )
    try:
        graph = graph_from_json(saved["graph"])
        options = _options_from_json(saved["options"], backend)
        optimizer = _optimizer_from_json(saved["optimizer"])
        training = bool(saved["training"])
        names = [v.name for v in graph.params] + list(saved["extra_state"])
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise ValueError(f"{path}: invalid saved model: {error}") from error
    weights, slots = _split_tensors(path, tensors, names)
    try:
        exe = compile_graph(graph, weights, options, optimizer)
    except ValueError as error:
        raise ValueError(f"{path}: the saved weights do not fit the saved graph: {error}") from None
    if "int8" in saved:
        return _quantized(path, exe, saved["int8"])
    expected = {**exe.optimizer_state, **exe.rng_state}
    wrong = sorted(
        name
        for name in set(expected) | set(slots)
        if name not in expected or name not in slots or slots[name].shape != expected[name].shape
    )
    if wrong:
        raise ValueError(f"{path}: the saved optimizer and dropout tensors do not fit: {wrong}")
    exe.set_tensors(slots)
    if optimizer is not None:
        optimizer.load_state_dict(saved["optimizer"]["state"])
    return exe.train(training)


def _quantized(path: str | os.PathLike[str], exe: Executable, scales: Any) -> Executable:
    """The int8 executable of the float ``exe`` with the saved activation scales."""
    from engine.quantize import quantize_with_scales

    if not isinstance(scales, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in scales.values()
    ):
        raise ValueError(f"{path}: invalid saved model: int8 scales must map layers to numbers")
    try:
        return quantize_with_scales(exe, scales)
    except ValueError as error:
        raise ValueError(f"{path}: invalid saved int8 model: {error}") from None


def _split_tensors(
    path: str | os.PathLike[str], tensors: dict[str, np.ndarray], names: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The weights (``names``, in ``state_dict`` order, so the extra state keeps its order)
    and the optimizer slots and dropout vector; nothing missing, nothing else."""
    slots = {k: v for k, v in tensors.items() if k.startswith("optimizer.") or k == DROPOUT_RNG}
    missing = [name for name in names if name not in tensors]
    unexpected = sorted(set(tensors) - set(names) - set(slots))
    faults = [
        f"{what} {listed}"
        for what, listed in (("missing", missing), ("unexpected", unexpected))
        if listed
    ]
    if faults:
        raise ValueError(
            f"{path}: the saved weights do not fit the saved graph: {'; '.join(faults)}"
        )
    return {name: tensors[name] for name in names}, slots


def graph_from_json(data: dict[str, Any]) -> Graph:
    """The graph ``graph_to_json`` wrote, checked by ``Graph.verify`` (every node's shapes
    against its op's rule). Raises ValueError for an op this version does not define, and
    KeyError/TypeError/ValueError for a malformed graph."""
    graph = Graph()
    for name, shape, dtype, role in data["values"]:
        graph.add_value(name, TensorType(tuple(shape), dtype), role)
    for node in data["nodes"]:
        if node["op"] not in OPS:
            raise ValueError(
                f"node {node['name']} uses the op {node['op']!r}, which this version of "
                "ConvForge does not define"
            )
        graph.add_node(
            node["op"],
            [graph.values[name] for name in node["inputs"]],
            [TensorType(tuple(shape), dtype) for _, shape, dtype in node["outputs"]],
            {key: _tuples(value) for key, value in node["attrs"].items()},
            node["name"],
            [name for name, _, _ in node["outputs"]],
        )
    graph.outputs = [graph.values[name] for name in data["outputs"]]
    graph.consts = {name: float(fill) for name, fill in data["consts"].items()}
    graph.verify()
    return graph


def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def _options_from_json(data: dict[str, Any], backend: str | None) -> CompileOptions:
    options = CompileOptions(**data)
    recompute = _tuples(options.recompute)
    return dataclasses.replace(options, recompute=recompute, backend=backend or options.backend)


def _optimizer_from_json(data: dict[str, Any] | None) -> optim.Optimizer | None:
    if data is None:
        return None
    kind = getattr(optim, data["type"], None)
    if not (isinstance(kind, type) and issubclass(kind, optim.Optimizer)):
        raise ValueError(f"unknown optimizer {data['type']!r} (engine.optim has no such class)")
    return kind(**data["arguments"])


def _load_training_checkpoint(
    path: str | os.PathLike[str], metadata: dict[str, Any], backend: str | None
) -> Executable:
    """The zoo model a ``convforge train`` run trained, compiled for inference with the run's
    batch and dtype, holding the checkpoint's weights (optimizer slots ignored)."""
    run = metadata["arguments"]
    model = zoo.get(metadata["model"], **metadata["model_args"])
    exe = compile(
        model,
        metadata["input_shape"],
        batch=run["batch"],
        dtype=run["dtype"],
        backend=backend or "cpu",
    )
    load_weights(str(path), exe)
    return exe
