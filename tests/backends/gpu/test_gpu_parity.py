"""Whole networks on the GPU backends: every zoo model against the CPU backend, the CUDA graph
against plain launches, and PyTorch (``bench/torch_graph.py``) as an oracle of its own.

Each comparison compiles a model on two backends at batch 2, loads the same state into both
(the model's own weights; every per-channel vector, BatchNorm's running statistics included,
perturbed so that a wrong channel index shows), poisons every buffer with NaN and runs one
random batch: ``||out - ref|| / ||ref||`` must stay under 1e-4 in float32 and 1e-10 in float64
(``tests.helpers.NET_TOLERANCE``). Inputs are the model's own where small, else the reduced
ones of ``tests/zoo/test_all_models.py``.

Tests marked ``gpu`` need CuPy and an NVIDIA GPU (``conftest.py`` skips them with the reason);
without one, the smallest models still run on the CPU emulation of the kernels, and the torch
oracle is itself checked against the CPU backend.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine
import graph.nn as nn
import zoo
from bench.torch_graph import TorchGraph
from tests.helpers import NET_TOLERANCE, rel_error
from tests.zoo.test_all_models import REDUCED

BATCH = 2
# Zoo models the emulation runs in every CI run: small ones, about 1 s together on 2 cores.
EMULATED = ("lenet5", "resnet20_cifar", "shufflenet_v2_x0_5")
# Models with ops that TorchGraph has no torch function for.
NO_TWIN = {"capsnet"}


def input_shape(name: str) -> tuple[int, int, int]:
    """The model's own input, or a reduced one where that is ImageNet-sized."""
    shape = zoo.spec(name).input_shape
    if name in REDUCED:
        return REDUCED[name]
    return (shape[0], 64, 64) if shape[1] >= 224 else shape


def perturbed_state(exe: engine.Executable, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``exe``'s state with every vector moved off its initial value (BatchNorm 0/1, layer
    scales of 1e-6, zero biases) and running variances drawn from [0.5, 2]; weight tensors stay
    as initialised, so activations keep their scale through deep networks."""
    state = exe.state_dict()
    for name, array in state.items():
        if not np.issubdtype(array.dtype, np.floating) or array.ndim != 1:
            continue
        if name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, array.shape).astype(array.dtype)
        else:
            state[name] = (array + rng.normal(0.0, 0.1, array.shape)).astype(array.dtype)
    return state


def compile_zoo(name: str, dtype: str, *backend_names: str) -> list[engine.Executable]:
    """Zoo model ``name`` with its seeded initial weights, compiled for each backend."""
    nn.manual_seed(0)
    model, shape = zoo.get(name, num_classes=10), input_shape(name)
    return [engine.compile(model, shape, BATCH, backend, dtype) for backend in backend_names]


def check_against_cpu(name: str, backend: str, dtype: str, rng: np.random.Generator) -> None:
    cpu, gpu = compile_zoo(name, dtype, "cpu", backend)
    state = perturbed_state(cpu, rng)
    cpu.load_state_dict(state)
    gpu.load_state_dict(state)
    x = rng.standard_normal((BATCH, *input_shape(name))).astype(dtype)
    cpu.poison_buffers()
    gpu.poison_buffers()
    err = rel_error(gpu.run(x), cpu.run(x))
    assert err < NET_TOLERANCE[dtype], f"{name} {dtype} on {backend}: relative error {err:.3e}"


# **** Against the CPU backend ****


@pytest.mark.parametrize("name", EMULATED)
def test_small_zoo_models_match_cpu(name, gpu_backend, rng):
    check_against_cpu(name, gpu_backend, "float32", rng)


@pytest.mark.gpu
@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zoo_model_matches_cpu(name, dtype, rng):
    check_against_cpu(name, "gpu", dtype, rng)


# **** Against PyTorch ****


def torch_reference(exe: engine.Executable, x: np.ndarray, device: str) -> np.ndarray:
    """``exe``'s graph and weights run by PyTorch (cuDNN on "cuda"), TF32 off."""
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            twin = TorchGraph(exe.graph, exe.state_dict(), device)
            return twin(torch.from_numpy(x).to(device)).cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def tiny_net() -> nn.Module:
    """The 20-layer net of ``bench/dispatch.py``: 3x3 conv (8 channels) + ReLU, 20 times."""
    return nn.Sequential(
        *[m for _ in range(20) for m in (nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())]
    )


@pytest.mark.parametrize(
    "name", ["tiny_net", "resnet18_cifar", "lenet5_1998", "shufflenet_v2_x0_5"]
)
def test_torch_graph_matches_cpu_backend(name, rng):
    """The torch oracle itself, on the CPU: the same graph and weights give the CPU backend's
    output (float64), so it can judge the GPU and time PyTorch in ``bench/gpu.py``."""
    nn.manual_seed(0)
    if name == "tiny_net":
        exe = engine.compile(tiny_net(), (8, 8, 8), BATCH, dtype="float64")
    else:
        (exe,) = compile_zoo(name, "float64", "cpu")
    exe.load_state_dict(perturbed_state(exe, rng))
    x = rng.standard_normal(exe.input_shape)
    exe.poison_buffers()
    err = rel_error(exe.run(x), torch_reference(exe, x, "cpu"))
    assert err < NET_TOLERANCE["float64"], f"relative error {err:.3e}"


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n in zoo.names() if n not in NO_TWIN])
def test_zoo_model_matches_pytorch_on_the_gpu(name, rng):
    (exe,) = compile_zoo(name, "float64", "gpu")
    exe.load_state_dict(perturbed_state(exe, rng))
    x = rng.standard_normal(exe.input_shape)
    exe.poison_buffers()
    err = rel_error(exe.run(x), torch_reference(exe, x, "cuda"))
    assert err < NET_TOLERANCE["float64"], f"relative error {err:.3e}"


# **** The CUDA graph ****


def output_of(exe: engine.Executable) -> np.ndarray:
    """The output buffer as the last run left it (``run`` reads it the same way)."""
    return exe._backend.to_host(exe._output)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet20_cifar", "shufflenet_v2_x0_5", "googlenet"])
def test_graph_replay_equals_plain_launches(name, rng):
    """``profile`` launches the same kernels one by one; the captured graph must give the same
    bits, before and after it has been replayed once (no state carried between replays)."""
    (exe,) = compile_zoo(name, "float32", "gpu")
    x = rng.standard_normal(exe.input_shape).astype(np.float32)
    exe.poison_buffers()
    exe.profile(x, repeat=1)
    plain = output_of(exe)
    assert np.all(np.isfinite(plain))
    exe.poison_buffers()
    np.testing.assert_array_equal(exe.run(x), plain)
    exe.poison_buffers()
    np.testing.assert_array_equal(exe.run(x), plain)


class CountingGraph:
    """Stands in for a captured ``cupy.cuda.graph.Graph``, counting its launches."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self.launches = 0

    def launch(self, stream) -> None:
        self.launches += 1
        self.graph.launch(stream)


@pytest.mark.gpu
def test_each_run_is_one_graph_launch(rng, monkeypatch):
    (exe,) = compile_zoo("resnet20_cifar", "float32", "gpu")
    runner = exe._inference.runner
    x = rng.standard_normal(exe.input_shape).astype(np.float32)
    first = exe.run(x)
    assert list(runner._graphs) == [(0, runner.count)], "one graph for the whole plan"
    graph = CountingGraph(runner._graphs[0, runner.count])
    runner._graphs[0, runner.count] = graph
    plain_launches = []
    monkeypatch.setattr(runner, "_launch", plain_launches.append)
    for _ in range(3):
        np.testing.assert_array_equal(exe.run(x), first)
    assert graph.launches == 3 and not plain_launches, (graph.launches, len(plain_launches))
    assert list(runner._graphs) == [(0, runner.count)], "no second capture"
