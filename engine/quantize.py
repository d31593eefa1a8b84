"""``quantize``: int8 post-training quantisation of a compiled float32 executable.

What a PyTorch user knows as ``torch.ao.quantization`` prepare -> calibrate -> convert, in one
call: run the float model on a few calibration batches, read each conv and linear layer's
input (``Executable.run(x, capture=...)``), take symmetric per-tensor scales
(``graph.compress.quantize``), rewrite the inference graph to the int8 ops and build a new
executable through the same planner, lowering and executor.

As with PyTorch's ``convert``, the int8 executable holds its own copy of the weights, packed
to int8 on its first run: changing the float executable afterwards does not change it, and
its own ``load_state_dict`` re-packs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from backends import get_backend
from engine.compiler import CompileOptions, plan_graph
from engine.executable import Executable, build_plan, inference_storage
from graph.compress.quantize import activation_scale, quantizable_inputs, quantize_graph
from graph.ir import Graph


def calibrate(exe: Executable, batches: Iterable[np.ndarray]) -> dict[str, float]:
    """Layer name -> symmetric scale of its input, over ``batches`` (each of ``exe``'s input
    shape), run through the float executable in eval mode."""
    inputs = quantizable_inputs(exe.graph)
    graph_inputs = {v.name for v in exe.graph.inputs}
    captured = sorted({name for name in inputs.values() if name not in graph_inputs})
    seen: dict[str, list[np.ndarray]] = {name: [] for name in set(inputs.values())}
    was_training = exe.training
    exe.eval()
    try:
        for x in batches:
            x = np.asarray(x, dtype=exe.dtype)
            values = exe.run(x, capture=captured)[1] if captured else {}
            for name in graph_inputs & seen.keys():
                seen[name].append(x)
            for name in captured:
                seen[name].append(values[name])
    finally:
        exe.train(was_training)
    if not any(seen.values()):
        raise ValueError("quantize needs at least one calibration batch, but got none")
    return {layer: activation_scale(seen[value]) for layer, value in inputs.items()}


def quantize(
    exe: Executable,
    calibration: Iterable[np.ndarray],
    skip: Sequence[str] = (),
) -> Executable:
    """An int8 executable of ``exe`` (a float32 CPU executable from ``engine.compile``).

    Args:
        exe: the float model, compiled for inference (its inference plan is quantised).
        calibration: a few input batches of ``exe``'s input shape (a few hundred images is
            typical); their per-layer input ranges fix the activation scales.
        skip: layer names to keep in float32 (e.g. the first conv or the classifier).

    Returns:
        An inference-only ``Executable`` running conv and linear layers with int8 kernels.
    """
    _check_float_cpu(exe)
    unknown = sorted(set(skip) - set(quantizable_inputs(exe.graph)))
    if unknown:
        raise ValueError(f"quantize skip names {unknown}, which are not conv or linear layers")
    scales = {k: v for k, v in calibrate(exe, calibration).items() if k not in skip}
    return quantize_with_scales(exe, scales)


def quantize_with_scales(exe: Executable, scales: Mapping[str, float]) -> QuantizedExecutable:
    """``exe``'s int8 executable for activation scales already calibrated (layer name ->
    scale of its input; layers left out stay float32): what ``quantize`` builds after
    calibrating, and what ``engine.load`` rebuilds a saved int8 model with.

    Raises:
        ValueError: a scale names no conv or linear layer, or is not positive and finite.
    """
    _check_float_cpu(exe)
    unknown = sorted(set(scales) - set(quantizable_inputs(exe.graph)))
    if unknown:
        raise ValueError(f"int8 scales name {unknown}, which are not conv or linear layers")
    bad = sorted(name for name, scale in scales.items() if not 0 < float(scale) < np.inf)
    if bad:
        raise ValueError(f"int8 scales of {bad} are not positive and finite")
    graph = quantize_graph(exe.graph, dict(scales))
    device = get_backend("cpu")
    params = {v.name: device.from_host(exe.params[v.name]) for v in graph.params}  # copies
    storage = inference_storage(graph, device, params)
    plan = build_plan(graph, device, storage, plan_graph(graph, device))
    extra_state = {k: v.copy() for k, v in exe.extra_state.items()}
    source = Calibrated(exe.traced_graph, exe.options.for_inference(), dict(scales))
    return QuantizedExecutable(plan, None, storage, extra_state, None, source=source)


def _check_float_cpu(exe: Executable) -> None:
    backend = exe.options.backend if exe.options is not None else None
    if backend != "cpu":
        raise ValueError(
            f"int8 inference is CPU-only (AVX-512 VNNI kernels), but the executable runs on "
            f"{backend!r}: compile the float model with backend='cpu' first"
        )
    if exe.dtype != np.float32:
        raise ValueError(f"quantize needs a float32 executable, but got {exe.dtype}")


@dataclass(frozen=True)
class Calibrated:
    """What an int8 executable was built from, so that ``engine.save`` can store it and
    ``engine.load`` rebuild it: the float model's traced graph and inference options, and the
    activation scales."""

    traced_graph: Graph | None
    options: CompileOptions
    scales: dict[str, float]


class QuantizedExecutable(Executable):
    """An int8 inference executable: its kernels pack the int8 weights once, on the plan's
    first run (``backends/cpu/int8.py``), so new weights get a freshly lowered plan. Load
    weights with ``load_state_dict``: writing into ``params`` does not re-pack them.
    ``engine.save`` stores it (the float graph, weights and scales) and ``clone`` copies it."""

    def __init__(self, *args, source: Calibrated, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.source = source

    def clone(self) -> QuantizedExecutable:
        """Another int8 executable sharing this one's weights, with its own buffers, lock and
        plan (which packs its own int8 weights on its first run), as ``Executable.clone``."""
        device = get_backend("cpu")
        storage = inference_storage(self.graph, device, self._storage)
        plan = build_plan(self.graph, device, storage, self._inference.memory)
        return QuantizedExecutable(plan, None, storage, self._extra_state, None, source=self.source)

    def set_tensors(self, tensors: Mapping[str, np.ndarray]) -> None:
        super().set_tensors(tensors)
        plan = self._inference
        self._inference = build_plan(plan.graph, plan.backend, plan.storage, plan.memory)
