"""The inference passes (``graph.passes.inference``, ``graph.passes.fusion``): each pass alone on
small traced graphs (what it fuses, what it must leave alone, purity), then the compiled fused
plans against the unfused plan and PyTorch, float32 and float64, on NaN-poisoned buffers, with
BatchNorm statistics that are not the identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine
import graph.functional as F
from backends import get_backend
from graph import nn
from graph.passes import inference
from graph.passes.fusion import fold_batch_norm, fuse_epilogues
from graph.passes.inference import (
    eliminate_dead_code,
    optimize_for_inference,
    remove_identities,
)
from graph.trace import trace
from tests.helpers import DTYPES, OP_TOLERANCE, rel_error, torch_run, torch_twin

CPU_OPS = get_backend("cpu").supported_ops


class Block(nn.Module):
    """conv -> BatchNorm -> (+ shortcut) -> activation, the tail of a ResNet block."""

    def __init__(self, act: nn.Module, residual: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(4)
        self.act = act
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(F.add(y, x) if self.residual else y)


class TorchBlock(torch.nn.Module):
    def __init__(self, act: torch.nn.Module, residual: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=bias)
        self.bn = torch.nn.BatchNorm2d(4)
        self.act = act
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(y + x if self.residual else y)


ACTIVATIONS = [
    (nn.ReLU(), torch.nn.ReLU()),
    (nn.ReLU6(), torch.nn.ReLU6()),
    (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
    (nn.GELU(), torch.nn.GELU()),
    (nn.GELU("tanh"), torch.nn.GELU("tanh")),
    (nn.Sigmoid(), torch.nn.Sigmoid()),
    (nn.Tanh(), torch.nn.Tanh()),
]


def _ops(graph) -> list[str]:
    return [node.op for node in graph.nodes]


def _randomise_statistics(model: nn.Module, rng: np.random.Generator) -> None:
    """BatchNorm statistics and affine far from the identity, so a wrong fold shows."""
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = rng.standard_normal(value.shape)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.3, 3.0, value.shape)
        elif key.endswith(("bn.weight", "bn.bias")):
            state[key] = rng.uniform(-1.5, 1.5, value.shape)
    model.load_state_dict({k: np.asarray(v, np.float32) for k, v in state.items()})


# **** each pass alone ****


def test_fold_batch_norm_makes_a_fold_and_a_fused_conv_named_after_the_batch_norm():
    graph = trace(Block(nn.ReLU(), residual=False, bias=True), (4, 6, 6), 2, "float32")
    folded = fold_batch_norm(graph)
    assert _ops(folded) == ["batch_norm_fold", "conv2d_fused", "relu"]
    fused = folded.nodes[1]
    assert fused.name == "conv" and fused.outputs[0].name == "bn"
    assert fused.attrs["epilogue"] == ("bias", "batch_norm")
    assert [v.name for v in fused.inputs] == ["input", "conv.weight", "conv.bias", "bn.fold"]
    assert _ops(graph) == ["conv2d", "batch_norm", "relu"]  # the pass is pure


def test_fuse_epilogues_takes_the_residual_add_and_the_activation():
    graph = fold_batch_norm(trace(Block(nn.LeakyReLU(0.3)), (4, 6, 6), 2, "float32"))
    fused_graph = fuse_epilogues(graph)
    assert _ops(fused_graph) == ["batch_norm_fold", "conv2d_fused"]
    node = fused_graph.nodes[1]
    assert node.attrs["epilogue"] == ("batch_norm", "add", "leaky_relu")
    assert node.attrs["negative_slope"] == 0.3
    assert node.attrs["layers"] == ("bn", "add", "act")
    assert node.inputs[-1].name == "input" and fused_graph.outputs[0].name == "act"
    assert "conv2d_fused[padding=1, epilogue=(batch_norm,add,leaky_relu)" in str(fused_graph)


def test_fusion_stops_at_a_value_with_another_reader_or_a_graph_output():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return F.add(self.bn(y), F.relu(y))

    graph = optimize_for_inference(trace(TwoReaders(), (4, 5, 5), 1, "float32"), CPU_OPS)
    assert "batch_norm" in _ops(graph) and "conv2d" in _ops(graph)
    bare = optimize_for_inference(trace(nn.Conv2d(4, 4, 3), (4, 5, 5), 1, "float32"), CPU_OPS)
    assert _ops(bare) == ["conv2d"]


class Doubled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return F.add(y, y)


def test_an_add_of_a_value_with_itself_is_not_a_residual():
    graph = trace(Doubled(), (4, 3, 3), 1, "float32")
    assert _ops(fuse_epilogues(graph)) == ["conv2d", "add"]


def test_linear_takes_batch_norm_1d_and_the_activation():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5), nn.ReLU())
    graph = optimize_for_inference(trace(model, (3, 2, 2), 4, "float32"), CPU_OPS)
    assert _ops(graph) == ["flatten", "batch_norm_fold", "linear_fused"]
    assert graph.nodes[-1].attrs["epilogue"] == ("bias", "batch_norm", "relu")


def test_remove_identities_drops_inference_dropout_but_keeps_an_output_writer():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Dropout(0.5), nn.ReLU(), nn.Dropout(0.2))
    graph = remove_identities(trace(model, (3, 4, 4), 1, "float32"))
    assert _ops(graph) == ["conv2d", "relu", "dropout"]
    assert graph.nodes[1].inputs[0].name == "0"


def test_eliminate_dead_code_removes_unread_nodes_only():
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.unused = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            self.unused(x)
            return F.relu(self.conv(x))

    graph = trace(Dead(), (3, 4, 4), 1, "float32")
    assert _ops(graph) == ["conv2d", "conv2d", "relu"]
    cleaned = eliminate_dead_code(graph)
    assert [n.name for n in cleaned.nodes] == ["conv", "relu"]
    assert "unused.weight" in cleaned.values  # parameters stay: state_dict keeps every key


def test_no_fusion_for_a_backend_without_the_fused_ops():
    graph = trace(Block(nn.ReLU()), (4, 6, 6), 1, "float32")
    ops = set(CPU_OPS) - {"conv2d_fused", "linear_fused", "batch_norm_fold"}
    assert _ops(optimize_for_inference(graph, ops)) == ["conv2d", "batch_norm", "add", "relu"]


# **** compiled: fused plan against the unfused plan and PyTorch ****


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "act", range(len(ACTIVATIONS)), ids=lambda i: type(ACTIVATIONS[i][0]).__name__
)
@pytest.mark.parametrize("residual", [True, False])
def test_fused_block_matches_torch_and_the_unfused_plan(dtype, act, residual):
    rng = np.random.default_rng(7 + act)
    ours_act, torch_act = ACTIVATIONS[act]
    model = Block(ours_act, residual=residual, bias=not residual)
    _randomise_statistics(model, rng)
    x = rng.standard_normal((2, 4, 7, 5)).astype(dtype)
    fused, plain = (
        engine.compile(model, (4, 7, 5), batch=2, dtype=dtype, optimize=flag)
        for flag in (True, False)
    )
    assert any(node.op == "conv2d_fused" for node in fused.graph.nodes)
    assert "conv2d_fused" not in _ops(plain.graph)
    for exe in (fused, plain):
        exe.poison_buffers()
    expected = torch_run(torch_twin(model, TorchBlock(torch_act, residual, not residual), dtype), x)
    out = fused.run(x)
    assert rel_error(out, expected) < OP_TOLERANCE[dtype]
    assert rel_error(out, plain.run(x)) < OP_TOLERANCE[dtype]


class WideBlock(nn.Module):
    """Block with C channels, so the conv takes the lowering's GEMM, Winograd or small paths."""

    def __init__(self, channels: int, act: nn.Module, residual: bool, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(channels)
        self.act = act
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(F.add(y, x) if self.residual else y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [nn.ReLU, nn.ReLU6, nn.Identity])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels,side", [(4, 5), (32, 12)])
def test_fused_epilogue_gives_the_bits_of_separate_kernels(
    channels, side, bias, residual, act, dtype, monkeypatch
):
    """The conv epilogue's one pass over a row (bias, folded BatchNorm, residual, ReLU or
    hardtanh or nothing) does each element's operations in the order of the separate add and
    activation kernels, so the fused plan equals the plan with BatchNorm folded but nothing
    else fused, bit for bit."""
    rng = np.random.default_rng(channels + 2 * bias + residual)
    model = WideBlock(channels, act(), residual, bias)
    _randomise_statistics(model, rng)
    x = rng.standard_normal((2, channels, side, side)).astype(dtype)

    def run():
        exe = engine.compile(model, x.shape[1:], batch=2, dtype=dtype)
        exe.poison_buffers()
        return exe.run(x), _ops(exe.graph)

    fused, ops = run()
    assert ops.count("conv2d_fused") == 1 and "add" not in ops
    with monkeypatch.context() as patch:
        patch.setattr(inference, "fuse_epilogues", lambda graph: graph)
        folded, folded_ops = run()
    assert residual == ("add" in folded_ops)
    assert not np.isnan(fused).any()
    np.testing.assert_array_equal(fused, folded)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_linear_with_batch_norm_1d_matches_torch(dtype):
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5), nn.GELU())
    twin = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.BatchNorm1d(5), torch.nn.GELU()
    )
    state = model.state_dict()
    state["2.running_mean"] = rng.standard_normal(5)
    state["2.running_var"] = rng.uniform(0.3, 3.0, 5)
    model.load_state_dict({k: np.asarray(v, np.float32) for k, v in state.items()})
    exe = engine.compile(model, (3, 2, 2), batch=4, dtype=dtype)
    assert _ops(exe.graph)[-1] == "linear_fused"
    exe.poison_buffers()
    x = rng.standard_normal((4, 3, 2, 2)).astype(dtype)
    expected = torch_run(torch_twin(model, twin, dtype), x)
    assert rel_error(exe.run(x), expected) < OP_TOLERANCE[dtype]


def test_the_fold_reads_the_live_statistics_after_writes_and_training():
    """Writing BatchNorm statistics through ``params``, ``load_state_dict`` or a training step
    changes the fused plan's output exactly as the unfused plan's: nothing folded is stale."""
    from engine.optim import SGD

    rng = np.random.default_rng(5)
    model = Block(nn.ReLU())
    x = rng.standard_normal((4, 4, 6, 6)).astype(np.float64)
    y = rng.integers(0, 4, 4)
    executables = [
        engine.compile(
            nn.Sequential(model, nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            (4, 6, 6),
            batch=4,
            dtype="float64",
            train=True,
            optimizer=SGD(lr=0.1, momentum=0.9),
            optimize=flag,
        )
        for flag in (True, False)
    ]
    for exe in executables:
        exe.params["0.bn.running_var"][:] = np.linspace(0.5, 2.0, 4)
    assert np.array_equal(executables[0].run(x), executables[1].run(x))
    state = executables[0].state_dict()
    state["0.bn.running_mean"] = rng.standard_normal(4)
    for exe in executables:
        exe.load_state_dict(state)
    assert np.array_equal(executables[0].run(x), executables[1].run(x))
    for exe in executables:
        exe.train_step(x, y)
    assert np.array_equal(executables[0].run(x), executables[1].run(x))
