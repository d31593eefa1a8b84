"""ONNX export and import against real oracles.

- Export: ONNX Runtime runs every zoo model that ONNX can express, as exported, with the
  outputs of ``exe.run`` (rel 1e-5, float32), and a network with every exportable op at
  opsets 17, 18 (reduction axes as inputs) and 20 (Gelu).
- Import: networks built in PyTorch, not in the zoo, go through ``torch.onnx.export`` (both
  exporters) and come back with torch's outputs and torch's ``state_dict`` keys, and train
  one SGD step as torch does.
- Round trip: ConvForge -> ONNX -> ConvForge gives the same outputs bit for bit, the same node
  names and the same weights.
- Errors name what is wrong: ops without an ONNX form, unsupported ONNX ops, corrupt files,
  a missing ``onnx`` package, bad CLI use.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as torch_F
from onnx import TensorProto, helper

import engine
import graph.functional as F
import zoo
from engine import cli
from engine.onnx_export import EXPORTABLE_OPS
from engine.optim import SGD
from engine.train import load_weights
from graph import nn
from tests.helpers import rel_error

# The zoo's models at the smallest input their layers take (most run at 32x32 in well under a
# second); the big ones are slow because of their weights (VGG's 25088x4096 classifier).
SMALL_INPUT = {"alexnet": 64, "zfnet": 64, "inception_v3": 80}
QUICK = {
    "convnext_tiny",
    "googlenet",
    "highway_cifar",
    "inception_v2",
    "lenet5",
    "lenet5_1998",
    "lenet_300_100",
    "lenet_caffe",
    "mobilenet_v1",
    "mobilenet_v2",
    "nin_cifar",
    "resnet20_cifar",
    "shufflenet_v2_x0_5",
    "squeezenet1_0",
}
NO_ONNX_FORM = {"capsnet"}  # the capsule ops


def _zoo_cases() -> list:
    names = [name for name in zoo.names() if name not in NO_ONNX_FORM]
    return [pytest.param(n, marks=() if n in QUICK else pytest.mark.slow) for n in names]


def _input_shape(name: str) -> tuple[int, int, int]:
    channels, height, _ = zoo.spec(name).input_shape
    side = min(height, SMALL_INPUT.get(name, 32))
    return (channels, side, side)


def _onnx_runtime(path, x: np.ndarray) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # no warnings about initializers it drops
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _randomize_statistics(exe, rng: np.random.Generator) -> None:
    """BatchNorm statistics that are not the identity, so an exporter that drops or swaps them
    fails."""
    for name, array in exe.params.items():
        if name.endswith("running_mean"):
            array[...] = rng.normal(0.0, 0.1, array.shape)
        elif name.endswith("running_var"):
            array[...] = rng.uniform(0.5, 2.0, array.shape)


def _reimport(path, batch: int):
    model = engine.import_onnx(path)
    return model, engine.compile(model, model.input_shape, batch=batch)


def _assert_round_trip(exe, path, x: np.ndarray) -> None:
    """Imported again: same outputs bit for bit, same node names, same weights."""
    model, again = _reimport(path, x.shape[0])
    np.testing.assert_array_equal(again.run(x), exe.run(x))
    used = {v.name for v in exe.traced_graph.params if v.users}
    assert used <= set(model.state_dict()) <= set(exe.state_dict())  # + num_batches_tracked
    for name in used:
        np.testing.assert_array_equal(again.params[name], exe.params[name])


# **** Export: ONNX Runtime is the oracle; import gives the model back ****


@pytest.mark.parametrize("name", _zoo_cases())
def test_zoo_model_runs_in_onnx_runtime_and_comes_back(name, tmp_path, rng):
    exe = engine.compile(zoo.get(name), _input_shape(name), batch=2)
    _randomize_statistics(exe, rng)
    x = rng.standard_normal(exe.input_shape).astype(np.float32)
    path = tmp_path / f"{name}.onnx"
    engine.export_onnx(exe, path)
    assert rel_error(_onnx_runtime(path, x), exe.run(x)) < 1e-5
    _assert_round_trip(exe, path, x)


def test_model_without_onnx_form_is_refused_naming_ops_and_nodes(tmp_path):
    exe = engine.compile(zoo.get("capsnet"), zoo.spec("capsnet").input_shape, batch=1)
    path = tmp_path / "capsnet.onnx"
    path.write_bytes(b"an older file")
    with pytest.raises(ValueError, match="no ONNX form") as error:
        engine.export_onnx(exe, path)
    for op in ("squash", "capsule_predict", "capsule_routing", "capsule_length"):
        assert f"{op} (at " in str(error.value)
    assert path.read_bytes() == b"an older file"  # nothing written, the old file whole
    assert [p.name for p in tmp_path.iterdir()] == ["capsnet.onnx"]


class EveryOp(nn.Module):
    """Every op the exporter writes, with the attributes that change its ONNX form: reflect
    padding, "same" padding with an even kernel (asymmetric pads), BatchNorm and LayerNorm
    without affine weights, a [C] channel scale, pooling with padding, dilation and ceil mode,
    average pooling that leaves the padding out, adaptive pooling whose bins do not divide,
    stochastic depth, BatchNorm over features, a local response norm. Input [N, 3, 9, 7]."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 4, padding="same", padding_mode="reflect")
        self.bn = nn.BatchNorm2d(8, affine=False)
        self.conv2 = nn.Conv2d(8, 8, 2, padding="same", groups=2)
        self.ln = nn.LayerNorm2d(8, elementwise_affine=False)
        self.gelu = nn.GELU(approximate)
        self.scale = nn.Parameter(np.linspace(0.5, 1.5, 8, dtype=np.float32))
        self.shuffle = nn.ChannelShuffle(4)
        self.norm = nn.BatchNorm1d(3 * 12 + 5 * 15 + 5)
        self.fc1 = nn.Linear(3 * 12 + 5 * 15 + 5, 16)
        self.fc2 = nn.Linear(16, 5, bias=False)

    def forward(self, x):
        h = self.conv2(F.leaky_relu(self.bn(self.conv1(x)), 0.2))
        h = F.channel_scale(self.gelu(self.ln(h)), self.scale)
        h = F.local_response_norm(h, 3, 0.5, 0.75, 2.0)
        a, b = F.split(self.shuffle(F.pad(h, (1, 0, 0, 2), value=0.5)), [3, 5], dim=1)
        f1 = F.flatten(F.adaptive_max_pool2d(a, (4, 3)), 1)  # 11x8 in 4x3 bins
        f2 = F.flatten(F.adaptive_avg_pool2d(F.transpose(b, 2, 3), (3, 5)), 1)
        gate = F.sigmoid(F.max_pool2d(b, 3, 2, 1, dilation=2, ceil_mode=True))
        v = F.tanh(F.avg_pool2d(b, 3, 2, 1, count_include_pad=False))
        v = F.mul(F.scale(v, 0.5), F.relu6(F.dropout(F.sub(v, F.neg(v)), 0.3)))
        f3 = F.add(
            F.flatten(F.adaptive_avg_pool2d(gate, 1), 1), F.flatten(F.adaptive_avg_pool2d(v, 1), 1)
        )
        head = F.relu(self.fc1(self.norm(F.cat([f1, f2, F.stochastic_depth(f3, 0.1)], 1))))
        head = F.flatten(F.reshape(head, (head.shape[0], 4, 4)), 1)
        return F.softmax(self.fc2(head), 1)


@pytest.mark.parametrize("opset", [17, 18, 20])
def test_every_exportable_op_runs_in_onnx_runtime(opset, tmp_path, rng):
    exe = engine.compile(EveryOp(), (3, 9, 7), batch=2)
    _randomize_statistics(exe, rng)
    assert {n.op for n in exe.traced_graph.nodes} == EXPORTABLE_OPS
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    engine.export_onnx(exe, tmp_path / "every.onnx", opset)
    assert rel_error(_onnx_runtime(tmp_path / "every.onnx", x), exe.run(x)) < 1e-5
    # back in ConvForge: adaptive average pooling comes back as a mean of row means
    _, again = _reimport(tmp_path / "every.onnx", 2)
    assert rel_error(again.run(x), exe.run(x)) < 1e-6


def test_gelu_tanh_form_before_and_from_opset_20(tmp_path, rng):
    """Before opset 20 the tanh approximation is its formula (ONNX Runtime agrees); from 20
    it is the Gelu op, which imports back."""
    exe = engine.compile(nn.GELU("tanh"), (2, 5, 5), batch=2)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    for opset in (17, 20):
        engine.export_onnx(exe, tmp_path / f"gelu{opset}.onnx", opset)
        assert rel_error(_onnx_runtime(tmp_path / f"gelu{opset}.onnx", x), exe.run(x)) < 1e-5
    _, again = _reimport(tmp_path / "gelu20.onnx", 2)
    np.testing.assert_array_equal(again.run(x), exe.run(x))


def test_round_trip_keeps_layer_names_and_trains_the_same(tmp_path, rng):
    model = zoo.get("resnet20_cifar")
    exe = engine.compile(model, (3, 32, 32), batch=4)
    _randomize_statistics(exe, rng)
    engine.export_onnx(exe, tmp_path / "resnet.onnx")
    imported, again = _reimport(tmp_path / "resnet.onnx", 4)
    assert [n.name for n in again.traced_graph.nodes] == [n.name for n in exe.traced_graph.nodes]
    assert list(imported.state_dict()) == list(model.state_dict())  # names and order
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 3, 5, 9])
    trainers = []
    for source in (model, imported):
        trainer = engine.compile(source, (3, 32, 32), batch=4, train=True, optimizer=SGD(lr=0.1))
        trainer.load_state_dict(exe.state_dict())
        trainers.append(trainer)
    losses = [t.train_step(x, y) for t in trainers]
    assert losses[0] == losses[1]
    for name, value in trainers[0].state_dict().items():
        np.testing.assert_array_equal(trainers[1].state_dict().get(name, value), value)


# **** Import: PyTorch networks that are not in the zoo, torch the oracle ****


class BranchNet(torch.nn.Module):
    """Grouped and dilated convs, a residual add, concat branches (one a max pool, sliced), a
    channel shuffle, LayerNorm over channels, GELU, ceil-mode and adaptive average pooling,
    a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(16)
        self.grouped = torch.nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)
        self.post = torch.nn.BatchNorm2d(16)
        self.a = torch.nn.Conv2d(16, 8, 1)
        self.b = torch.nn.Conv2d(16, 8, (1, 3), padding=(0, 1))
        self.ln = torch.nn.LayerNorm(24)
        self.fc = torch.nn.Linear(24 * 2 * 2, 10)

    def forward(self, x):
        x = torch_F.relu(self.bn(self.stem(x)))
        x = self.post(x + torch_F.leaky_relu(self.grouped(x), 0.1))
        x = torch.cat(
            [self.a(x), torch_F.relu6(self.b(x)), torch_F.max_pool2d(x, 3, 1, 1)[:, :8]], 1
        )
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = torch_F.gelu(self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        x = torch_F.adaptive_avg_pool2d(torch_F.avg_pool2d(x, 2, ceil_mode=True), (2, 2))
        return self.fc(torch_F.dropout(torch.flatten(x, 1), 0.2, self.training))


class GateNet(torch.nn.Module):
    """Reflection padding, "same" padding, a highway-style gate (sigmoid, tanh, sub, mul, a
    scalar factor), a spatial mean, a linear layer without bias, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = torch.nn.ReflectionPad2d(1)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.gate = torch.nn.Conv2d(8, 8, 3, padding="same")
        self.fc = torch.nn.Linear(8, 5, bias=False)

    def forward(self, x):
        h = torch.tanh(self.conv(self.pad(x)))
        t = torch.sigmoid(self.gate(h))
        y = h + t * (torch_F.pad(torch.relu(h), (0, 0, 0, 0)) - h) * 0.5
        return torch.softmax(self.fc(y.mean((2, 3))), 1)


def _torch_to_onnx(model: torch.nn.Module, x: torch.Tensor, path, dynamo: bool = True) -> None:
    """``torch.onnx.export`` with the default (torch.export) exporter or the legacy one, quiet."""
    options = {} if dynamo else {"opset_version": 17}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, **options)


def _torch_model(cls: type, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = cls()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.parametrize("cls", [BranchNet, GateNet])
def test_torch_network_imports_with_torch_outputs(cls, dynamo, tmp_path):
    model = _torch_model(cls)
    x = torch.randn(2, 3, 16, 16)
    _torch_to_onnx(model, x, tmp_path / "net.onnx", dynamo)
    imported = engine.import_onnx(tmp_path / "net.onnx")
    assert imported.input_shape == (3, 16, 16)
    exe = engine.compile(imported, imported.input_shape, batch=2)
    exe.poison_buffers()
    with torch.no_grad():
        expected = model(x).numpy()
    assert rel_error(exe.run(x.numpy()), expected) < 1e-5
    torch_keys, keys = set(model.state_dict()), set(imported.state_dict())
    assert all(k.replace(".", "").replace("_", "").isalnum() for k in keys)  # valid names
    if cls is GateNet:
        assert all(k.startswith("onnx__MatMul") for k in keys - torch_keys)  # legacy: fc.weight^T
    else:
        assert {"grouped.weight", "post.running_var", "ln.weight", "fc.bias"} <= keys


class TrainNet(torch.nn.Module):
    """No conv right before a BatchNorm (an exporter folds those in eval mode), no dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.grouped = torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.fc = torch.nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.bn(torch_F.relu(self.conv(x)))
        x = x + self.grouped(x)
        x = torch.cat([x, torch_F.max_pool2d(x, 3, 1, 1)], 1)
        return self.fc(torch.flatten(torch_F.avg_pool2d(x, 2), 1))


def test_imported_network_trains_like_torch(tmp_path):
    """One SGD step with momentum from the same weights: the same loss, weights and running
    statistics as torch's, keyed by torch's ``state_dict`` names."""
    model = _torch_model(TrainNet)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([1, 0, 7, 9])
    _torch_to_onnx(model, x, tmp_path / "train.onnx")
    imported = engine.import_onnx(tmp_path / "train.onnx")
    exe = engine.compile(
        imported, (3, 8, 8), batch=4, train=True, optimizer=SGD(lr=0.1, momentum=0.9)
    )
    loss = exe.train_step(x.numpy(), y.numpy())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    expected = torch_F.cross_entropy(model(x), y)
    expected.backward()
    optimizer.step()
    assert abs(loss - expected.item()) <= 1e-5 * abs(expected.item())
    state = exe.state_dict()
    assert list(imported.state_dict()) == list(model.state_dict())  # names and order
    for name, value in model.state_dict().items():
        if "num_batches" not in name:
            assert rel_error(state[name], value.numpy()) < 1e-5, name
    imported.load_state_dict(model.state_dict())  # torch's weights load by torch's keys


def test_onnx_forms_torch_does_not_write_import_as_onnx_runtime_runs_them(tmp_path, rng):
    """SAME_UPPER auto padding with stride 2, Clip with a minimum only, asymmetric MaxPool
    pads, AveragePool pads wider than half the kernel, Mul by a [1, C, 1, 1] weight, Gemm
    with transB=0, and a Reshape whose shape is computed from Shape, Gather, Unsqueeze, Cast
    and Concat: ONNX Runtime is the oracle."""

    def init(name: str, array) -> TensorProto:
        return onnx.numpy_helper.from_array(np.asarray(array), name)

    weights = [
        init("conv.weight", rng.standard_normal((6, 4, 3, 3)).astype(np.float32)),
        init("conv.bias", rng.standard_normal(6).astype(np.float32)),
        init("zero", np.float32(0.0)),
        init("scale", rng.uniform(0.5, 1.5, (1, 6, 1, 1)).astype(np.float32)),
        init("first", np.int64(0)),
        init("axes", np.array([0], np.int64)),
        init("rest", np.array([-1], np.int64)),
        init("fc.weight", rng.standard_normal((6, 3)).astype(np.float32)),
        init("fc.bias", rng.standard_normal(3).astype(np.float32)),
    ]
    make = helper.make_node
    nodes = [
        make("Conv", ["x", "conv.weight", "conv.bias"], ["c"], "conv", auto_pad="SAME_UPPER",
             strides=[2, 2]),
        make("Clip", ["c", "zero", ""], ["r"], "relu"),
        make("MaxPool", ["r"], ["m"], "max", kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
        make("AveragePool", ["m"], ["a"], "avg", kernel_shape=[3, 3], pads=[2, 2, 2, 2],
             count_include_pad=1),
        make("Mul", ["a", "scale"], ["s"], "scale"),
        make("GlobalMaxPool", ["s"], ["g"], "pool"),
        make("Shape", ["g"], ["shape"], "shape"),
        make("Gather", ["shape", "first"], ["n"], "batch"),
        make("Unsqueeze", ["n", "axes"], ["n1"], "unsqueeze"),
        make("Cast", ["n1"], ["n64"], "cast", to=TensorProto.INT64),
        make("Concat", ["n64", "rest"], ["target"], "target", axis=0),
        make("Reshape", ["g", "target"], ["flat"], "flatten"),
        make("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], "fc"),
        make("Softmax", ["logits"], ["y"], "softmax", axis=-1),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "forms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 9, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "forms.onnx"))
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    _, exe = _reimport(tmp_path / "forms.onnx", 2)
    assert rel_error(exe.run(x), _onnx_runtime(tmp_path / "forms.onnx", x)) < 1e-5
    assert {n.op for n in exe.traced_graph.nodes} >= {"pad", "channel_scale", "linear"}


# **** Errors name what is wrong ****


def _onnx_file(path, nodes: list, initializers: list, out_shape: list[int]) -> None:
    """A small hand-made ONNX model: input x [1, 4, 6, 6], output y."""
    graph = helper.make_graph(
        nodes,
        "handmade",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_unsupported_ops_are_listed_with_their_nodes(tmp_path):
    weight = onnx.numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "conv.weight")
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c"], ["h"], "act"),
        helper.make_node("Erf", ["h"], ["e"], "erf"),
        helper.make_node("HardSwish", ["e"], ["y"], "act2"),
    ]
    _onnx_file(tmp_path / "odd.onnx", nodes, [weight], [1, 4, 6, 6])
    with pytest.raises(ValueError, match=r"Erf \(at erf\); HardSwish \(at act, act2\)"):
        engine.import_onnx(tmp_path / "odd.onnx")


def test_an_op_that_cannot_be_expressed_names_its_node_and_shapes(tmp_path):
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"], "pool"),
        helper.make_node("Add", ["x", "g"], ["y"], "broadcast_add"),
    ]
    _onnx_file(tmp_path / "add.onnx", nodes, [], [1, 4, 6, 6])
    model = engine.import_onnx(tmp_path / "add.onnx")
    with pytest.raises(ValueError, match=r"broadcast_add .*\[1, 4, 6, 6\] and \[1, 4, 1, 1\]"):
        engine.compile(model, (4, 6, 6), batch=1)
    with pytest.raises(ValueError, match=r"input 'x' has shape \[N, 4, 6, 6\].* \[1, 4, 5, 6\]"):
        engine.compile(model, (4, 5, 6), batch=1)


def test_corrupt_and_missing_files(tmp_path):
    exe = engine.compile(zoo.get("lenet5"), (1, 28, 28), batch=1)
    engine.export_onnx(exe, tmp_path / "good.onnx")
    blob = (tmp_path / "good.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("truncated.onnx", "noise.onnx"):
        with pytest.raises(ValueError, match=f"{name}: not a valid ONNX model"):
            engine.import_onnx(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        engine.import_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match=r"opset must be in \[17, "):
        engine.export_onnx(exe, tmp_path / "old.onnx", opset=13)


def test_without_onnx_both_directions_say_how_to_install_it(tmp_path, monkeypatch):
    exe = engine.compile(zoo.get("lenet5"), (1, 28, 28), batch=1)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    hint = 'pip install "convforge\\[onnx\\]"'
    with pytest.raises(ImportError, match=hint):
        engine.export_onnx(exe, tmp_path / "lenet.onnx")
    with pytest.raises(ImportError, match=hint):
        engine.import_onnx(tmp_path / "lenet.onnx")


# **** convforge export ****


def _main(*argv: str) -> int:
    try:
        return cli.main(list(argv))
    except SystemExit as exit_:
        return exit_.code


def test_cli_exports_a_checkpoint_with_its_weights_and_normalisation(tmp_path, capsys):
    checkpoint, path = str(tmp_path / "lenet.ckpt"), tmp_path / "lenet.onnx"
    train = ["train", "lenet5", "--data", "digits", "--epochs", "1", "--batch", "32"]
    assert _main(*train, "--no-progress", "--checkpoint", checkpoint) == 0
    assert _main("export", "--checkpoint", checkpoint, "--onnx", str(path)) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"wrote {path}: lenet5")
    exe = engine.compile(zoo.get("lenet5", num_classes=10), (1, 28, 28), batch=1)
    load_weights(checkpoint, exe)
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    assert rel_error(_onnx_runtime(path, x), exe.run(x)) < 1e-5
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(metadata) == {"convforge.model", "convforge.mean", "convforge.std"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export"], "which model?"),
        (["export", "capsnet"], "capsule_routing (at capsule_routing)"),
        (["export", "lenet5", "--opset", "9"], "opset must be in [17, "),
        (["export", "lenet5", "--checkpoint", "missing.ckpt"], "does not exist"),
        (["export", "lenet5", "--input", "1x2x2"], "lenet5 at input (1, 2, 2)"),
    ],
)
def test_cli_mistakes_give_one_line_and_status_2(argv, message, tmp_path, capsys):
    assert _main(*argv, "--onnx", str(tmp_path / "out.onnx")) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("convforge export: error: ") and message in err
    assert not (tmp_path / "out.onnx").exists()


def test_cli_exports_initial_weights_without_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "resnet.onnx"
    assert _main("export", "resnet20_cifar", "--batch", "2", "--onnx", str(path)) == 0
    nn.manual_seed(0)
    exe = engine.compile(zoo.get("resnet20_cifar"), (3, 32, 32), batch=2)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert rel_error(_onnx_runtime(path, x), exe.run(x)) < 1e-5
