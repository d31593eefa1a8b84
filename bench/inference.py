"""CPU inference speed against PyTorch eager and ONNX Runtime, same weights, float32, 2 threads.

Cases (``--cases`` picks some, e.g. ``--cases tiny,resnet50_b1``):

- ``tiny``: the 20 x (3x3 conv, 8 channels, 8x8; ReLU) net of ``bench/dispatch.py``, batch 1,
  where per-step dispatch is the whole cost;
- ``resnet18_cifar_b64``, ``resnet50_b1``, ``resnet50_b32``, ``mobilenet_v2_b1``: zoo models at
  their input size, with random BatchNorm running statistics (the zoo starts them at mean 0,
  variance 1), so that an inference pass folding BatchNorm must fold real numbers.

Engines, each with 2 threads (``NUMBA_NUM_THREADS``, ``torch.set_num_threads``, ORT's
``intra_op_num_threads`` with one inter-op thread and sequential execution):

- ConvForge: ``exe.run(x)``, NumPy in and out (it copies the input in and the output out),
  the same compiled with ``freeze=True`` ("frozen": weights constant, as in an ORT session, so
  the deep convs at small batches run on weights packed once, ``backends/cpu/conv_blocked.py``)
  and with ``optimize=False`` ("passes off": no BatchNorm folding or fusion);
- PyTorch eager, NCHW and channels_last (4-D weights and the input stored NHWC), under
  ``torch.inference_mode()``. Networks run as the traced graph through ``bench/torch_graph.py``
  (one torch.nn.functional call per node, BatchNorm unfused, as eager torch runs a model), so
  no torchvision is needed and the weights are ours (on the tiny net it is as fast as
  dispatch.py's ``torch.nn.Sequential``);
- ONNX Runtime, the CPU inference engine a user would pick: the NCHW twin exported with
  ``torch.onnx.export`` (the default, torch.export-based exporter: needs ``onnxscript``), run
  with every graph optimisation on (``ORT_ENABLE_ALL``: BatchNorm folding, fusions, NCHWc).

Every engine's output must match ConvForge's (max |diff| / max |ConvForge| <= 1e-4) before
anything is timed; the run stops at the first mismatch. Times are medians of calls timed in
alternating blocks (``common.interleaved_medians``), so drifting load hits all engines alike;
block sizes are set from each case's first calls to spend about ``CASE_SECONDS`` per case.
Ratios are the other engine's time over ConvForge's (above 1: ConvForge is faster), against
the faster torch layout.

Run: ``python bench/inference.py`` (and with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``);
about 3 minutes on 2 cores. Needs ``pip install -e .[bench]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from math import floor, log10
from pathlib import Path

os.environ["NUMBA_NUM_THREADS"] = "2"  # ConvForge's threads: Numba reads it once, at import

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import environment_line, interleaved_medians, print_table  # noqa: E402
from torch_graph import TorchGraph  # noqa: E402

import engine  # noqa: E402
import graph.nn as nn  # noqa: E402
import zoo  # noqa: E402
from graph.ir import Graph  # noqa: E402
from graph.trace import trace  # noqa: E402

THREADS = int(os.environ["NUMBA_NUM_THREADS"])
TOLERANCE = 1e-4  # max |diff| / max |ConvForge|; float32 sums in another order stay below 1e-5
ROUNDS, CASE_SECONDS, MAX_BLOCK = 5, 15.0, 200
# case -> (model: "tiny" or a zoo name, batch)
CASES: dict[str, tuple[str, int]] = {
    "tiny": ("tiny", 1),
    "resnet18_cifar_b64": ("resnet18_cifar", 64),
    "resnet50_b1": ("resnet50", 1),
    "resnet50_b32": ("resnet50", 32),
    "mobilenet_v2_b1": ("mobilenet_v2", 1),
}
HEADER = ["case", "ConvForge ms", "frozen ms", "passes off ms", "torch NCHW ms",
          "torch channels_last ms", "ORT ms", "torch/ours", "ORT/ours", "ORT/frozen",
          "max rel err"]  # fmt: skip


class _Twin(torch.nn.Module):
    """The traced graph run by ``TorchGraph``, as the Module ``torch.onnx.export`` needs. With
    ``channels_last``, 4-D weights are stored NHWC, so that NHWC inputs take torch's NHWC
    convolutions all the way (each conv's output follows its input's layout)."""

    def __init__(self, graph: Graph, state: dict[str, np.ndarray], channels_last: bool) -> None:
        super().__init__()
        self.forward_graph = TorchGraph(graph, state, "cpu")
        if channels_last:
            self.forward_graph.tensors = {
                name: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                for name, t in self.forward_graph.tensors.items()
            }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_graph(x)


def _model(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """A fresh model and its (C, H, W), with random BatchNorm running statistics."""
    nn.manual_seed(0)
    if name == "tiny":
        import dispatch  # here: its module-level cfunc is compiled only when the case runs

        return dispatch._nets()[0], (dispatch.CHANNELS, dispatch.SIZE, dispatch.SIZE)
    model, rng = zoo.get(name), np.random.default_rng(1)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(".running_mean"):
            state[key] = rng.normal(0.0, 0.2, value.shape).astype(value.dtype)
        elif key.endswith(".running_var"):
            state[key] = rng.uniform(0.5, 2.0, value.shape).astype(value.dtype)
    model.load_state_dict(state)
    return model, zoo.spec(name).input_shape


def _ort_session(twin: _Twin, x: torch.Tensor) -> ort.InferenceSession:
    """``twin`` exported to ONNX (weights inside the file) and loaded with ``THREADS`` threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's deprecation notices, not ours to fix
        path = str(Path(folder) / "model.onnx")
        torch.onnx.export(twin.eval(), (x,), path, dynamo=True, external_data=False, verbose=False)
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _engines(model: str, batch: int) -> dict[str, Callable[[], np.ndarray]]:
    """Each engine's forward on one random batch (prepared in its own layout beforehand) by
    column name, in table order; every one returns a NumPy array."""
    net, shape = _model(model)
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    exe = engine.compile(net, shape, batch=batch)
    frozen = engine.compile(net, shape, batch=batch, freeze=True)
    plain = engine.compile(net, shape, batch=batch, optimize=False)
    forwards = {
        "ConvForge": lambda: exe.run(x),
        "frozen": lambda: frozen.run(x),
        "passes off": lambda: plain.run(x),
    }
    # the traced graph, not exe.graph: inference passes put fused ops there that torch lacks
    graph, state = trace(net, shape, batch, "float32"), net.state_dict()
    nchw, nhwc = (_Twin(graph, state, channels_last) for channels_last in (False, True))
    tx = torch.from_numpy(x)
    tx_nhwc = tx.contiguous(memory_format=torch.channels_last)
    session = _ort_session(nchw, tx)
    feed = {session.get_inputs()[0].name: x}
    forwards["torch NCHW"] = lambda: nchw(tx).numpy()
    forwards["torch channels_last"] = lambda: nhwc(tx_nhwc).numpy()
    forwards["ORT"] = lambda: session.run(None, feed)[0]
    return forwards


def _checked_first_calls(
    case: str, forwards: dict[str, Callable[[], np.ndarray]]
) -> tuple[list[float], float]:
    """Run each engine once and stop the benchmark unless all agree with ConvForge. Returns
    the seconds of each call (first calls: an upper bound, to size the timing blocks) and the
    largest max |diff| / max |ConvForge| among the other engines."""
    outputs, seconds = {}, []
    for name, forward in forwards.items():
        start = time.perf_counter()
        outputs[name] = np.asarray(forward())
        seconds.append(time.perf_counter() - start)
    ours = outputs.pop("ConvForge")
    scale = float(np.abs(ours).max())
    errors = {
        name: float(np.abs(out.reshape(ours.shape) - ours).max()) / scale
        for name, out in outputs.items()
    }
    for name, error in errors.items():
        if not error <= TOLERANCE:  # also catches NaN
            sys.exit(
                f"{case}: {name} differs from ConvForge: max |diff| / max |ConvForge| = "
                f"{error:.1e} > {TOLERANCE:.0e} (max |ConvForge| = {scale:.3g})"
            )
    return seconds, max(errors.values())


def _ms(seconds: float) -> str:
    """Milliseconds with at least three significant digits (1607, 56.4, 0.0312)."""
    ms = seconds * 1e3
    return f"{ms:.{max(0, 2 - floor(log10(ms)))}f}"


def _row(case: str) -> list[str]:
    """One table row: build every engine, check them, then time them interleaved."""
    forwards = _engines(*CASES[case])
    with torch.inference_mode():
        first, error = _checked_first_calls(case, forwards)
        # blocks of calls that spend about CASE_SECONDS in all; a quarter more as warm-up
        block = max(1, min(MAX_BLOCK, round(CASE_SECONDS / (ROUNDS * sum(first)))))
        times = dict(
            zip(
                forwards,
                interleaved_medians(list(forwards.values()), ROUNDS, block, block // 4),
                strict=True,
            )
        )
    ours, torch_best = times["ConvForge"], min(times["torch NCHW"], times["torch channels_last"])
    return [
        case,
        _ms(ours),
        _ms(times["frozen"]),
        _ms(times["passes off"]),
        *(_ms(times[name]) for name in ("torch NCHW", "torch channels_last", "ORT")),
        f"{torch_best / ours:.2f}x",
        f"{times['ORT'] / ours:.2f}x",
        f"{times['ORT'] / times['frozen']:.2f}x",
        f"{error:.1e}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated, from: {', '.join(CASES)} (default: all)",
    )
    cases = parser.parse_args().cases.split(",")
    unknown = [case for case in cases if case not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    torch.set_num_threads(THREADS)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    rows = []
    for case in cases:
        start = time.perf_counter()
        rows.append(_row(case))
        print(f"  {case}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(environment_line())
    print(
        f"float32, {THREADS} threads for every engine; onnxruntime={ort.__version__} "
        f"(ORT_ENABLE_ALL), exported with torch.onnx.export(dynamo=True)"
    )
    print_table(HEADER, rows)


if __name__ == "__main__":
    main()
