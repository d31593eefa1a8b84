"""The IR as tracing builds it: node names, printing, the tabular view and the verifier.

Imports nothing from backends/ or engine/ (like tinygrad's test/null).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from graph import functional as F
from graph import nn
from graph.ir import Graph, TensorType
from graph.trace import trace


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 10))

    def forward(self, x):
        x = self.features(x)
        x = F.flatten(x, 1)
        return self.classifier(x)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one ReLU module called twice, a residual ``+``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(F.flatten(self.avgpool(x), 1))


def _lenet_graph(dtype: str = "float32") -> Graph:
    return trace(LeNet(), (3, 28, 28), batch=2, dtype=dtype)


# **** Node names ****


def test_trace_gives_one_node_per_layer_named_by_path():
    graph = _lenet_graph()
    names = [node.name for node in graph.nodes]
    assert names == [
        "features.0",
        "features.1",
        "features.2",
        "features.3",
        "features.4",
        "features.5",
        "flatten",
        "classifier.0",
        "classifier.1",
        "classifier.2",
    ]
    ops = [node.op for node in graph.nodes]
    assert ops == ["conv2d", "relu", "max_pool2d"] * 2 + ["flatten", "linear", "relu", "linear"]
    assert [v.name for v in graph.inputs] == ["input"]
    assert graph.outputs == [graph.nodes[-1].outputs[0]]


def test_container_ops_and_repeated_calls_get_distinct_names():
    graph = trace(TinyResNet(), (3, 8, 8), batch=2)
    names = [node.name for node in graph.nodes]
    block = ["conv1", "bn1", "relu", "conv2", "bn2", "add", "relu_1"]
    downsample_block = [
        "conv1",
        "bn1",
        "relu",
        "conv2",
        "bn2",
        "downsample.0",
        "downsample.1",
        "add",
        "relu_1",
    ]
    assert names == (
        ["conv1", "bn1", "relu"]
        + [f"layer1.0.{n}" for n in block]
        + [f"layer1.1.{n}" for n in block]
        + [f"layer2.0.{n}" for n in downsample_block]
        + ["avgpool", "flatten", "fc"]
    )
    assert len(set(names)) == len(names)
    add = next(n for n in graph.nodes if n.name == "layer2.0.add")
    assert [v.name for v in add.inputs] == ["layer2.0.bn2", "layer2.0.downsample.1"]


def test_repeated_functional_ops_in_one_forward_are_numbered():
    class Triple(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.ReLU())

        def forward(self, x):
            y = self.body(x)
            return F.add(y + x, x)

    graph = trace(nn.Sequential(Triple()), (2, 4, 4))
    assert [node.name for node in graph.nodes] == ["0.body.0", "0.add", "0.add_1"]


def test_a_leaf_module_emitting_two_ops_names_the_second_by_op():
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"))
    graph = trace(conv, (2, 5, 5), batch=1)
    assert [(n.name, n.op) for n in graph.nodes] == [("0", "pad"), ("0.conv2d", "conv2d")]


def test_softmax_without_dim_uses_torchs_legacy_axis():
    graph = trace(nn.Sequential(nn.Flatten(), nn.Softmax()), (2, 3, 4), batch=2)
    assert graph.nodes[-1].attrs["dim"] == 1


def test_params_are_graph_values_with_state_dict_names_and_roles():
    model = TinyResNet()
    graph = trace(model, (3, 8, 8), batch=1)
    floating = [k for k, v in model.state_dict().items() if v.dtype.kind == "f"]
    assert [v.name for v in graph.params] == floating
    state = model.state_dict()
    for value in graph.params:
        assert value.shape == state[value.name].shape
        expected_role = "state" if value.name.endswith(("running_mean", "running_var")) else "param"
        assert value.role == expected_role, value.name
        assert value.producer is None
        assert value.users, f"{value.name} is never read"
    assert "bn1.num_batches_tracked" not in graph.values


# **** Printing ****


def test_str_prints_one_line_per_node_with_types_and_non_default_attrs():
    graph = _lenet_graph()
    lines = str(graph).splitlines()
    assert lines[0] == "graph(%input : f32[2,3,28,28]):"
    assert lines[-1].strip() == "return %classifier.2"
    body = lines[1:-1]
    assert len(body) == len(graph.nodes)
    for line, node in zip(body, graph.nodes, strict=True):
        assert line.strip().startswith(f"%{node.name} : "), line
        assert f"= {node.op}" in line
    # the output types follow from the output-size formula floor((W + 2P - K) / S) + 1
    assert (
        "%features.0 : f32[2,6,28,28] = conv2d[padding=2](%input, %features.0.weight, "
        "%features.0.bias)" in body[0]
    )
    assert "%features.3 : f32[2,16,10,10] = conv2d(%features.2, " in body[3]
    assert "f32[2,6,14,14]" in body[2] and "max_pool2d[" in body[2]
    for default in ("padding", "dilation", "ceil_mode"):
        assert default not in body[2]
    assert "%classifier.0 : f32[2,120] = linear(%flatten, " in body[7]


def test_str_shows_only_attrs_that_differ_from_the_defaults():
    model = nn.Sequential(
        nn.LeakyReLU(),
        nn.LeakyReLU(0.2),
        nn.Conv2d(4, 4, 3, stride=2, dilation=2, groups=2),
        nn.BatchNorm2d(4),
        nn.BatchNorm2d(4, eps=1e-3),
    )
    lines = str(trace(model, (4, 9, 9), dtype="float64")).splitlines()[1:-1]
    assert "f64[1,4,9,9] = leaky_relu(%input)" in lines[0]
    assert "leaky_relu[negative_slope=0.2](%0)" in lines[1]
    assert "conv2d[stride=2, dilation=2, groups=2](" in lines[2]
    assert "f64[1,4,3,3]" in lines[2]
    assert "= batch_norm(%2, " in lines[3]
    assert "batch_norm[eps=0.001](%3, " in lines[4]


def test_print_tabular_has_a_macs_column_with_hand_counts():
    graph = _lenet_graph()
    text = graph.print_tabular()
    lines = text.splitlines()
    assert lines[0].split() == ["name", "op", "output", "MACs", "bytes"]
    assert len(lines) == 1 + len(graph.nodes)
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    # conv: N * OC * OH * OW * (C / groups) * KH * KW; linear: N * in * out
    assert rows["features.0"][3] == f"{2 * 6 * 28 * 28 * 3 * 5 * 5:,}"
    assert rows["features.3"][3] == f"{2 * 16 * 10 * 10 * 6 * 5 * 5:,}"
    assert rows["classifier.0"][3] == f"{2 * 400 * 120:,}"
    assert rows["features.1"][3] == "0"
    assert rows["features.0"][4] == f"{2 * 6 * 28 * 28 * 4:,}"


# **** The verifier ****


def test_verify_accepts_traced_graphs():
    for graph in (_lenet_graph(), _lenet_graph("float64"), trace(TinyResNet(), (3, 8, 8), 3)):
        graph.verify()


def test_verify_rejects_a_tampered_shape():
    graph = _lenet_graph()
    node = graph.nodes[3]
    node.outputs[0].type = TensorType((2, 16, 9, 10))
    with pytest.raises(ValueError, match=r"features\.3: conv2d shape rule gives.*2,16,10,10"):
        graph.verify()


def test_verify_rejects_tampered_attrs():
    graph = _lenet_graph()
    graph.nodes[0].attrs["groups"] = 2  # 3 input channels do not divide by 2
    with pytest.raises(ValueError, match="groups"):
        graph.verify()


def test_verify_rejects_use_before_definition():
    graph = _lenet_graph()
    graph.nodes[1], graph.nodes[2] = graph.nodes[2], graph.nodes[1]
    with pytest.raises(ValueError, match=r"features\.2: input %features\.1 was used before"):
        graph.verify()


def test_verify_rejects_duplicate_names_missing_users_and_undefined_outputs():
    graph = _lenet_graph()
    graph.nodes[4].name = graph.nodes[3].name
    with pytest.raises(ValueError, match="used twice"):
        graph.verify()

    graph = _lenet_graph()
    graph.nodes[0].outputs[0].users.remove(graph.nodes[1])
    with pytest.raises(ValueError, match=r"features\.1: %features\.0 does not list it"):
        graph.verify()

    graph = _lenet_graph()
    graph.nodes.pop()
    with pytest.raises(ValueError, match=r"%classifier\.2 is never defined"):
        graph.verify()


def test_add_value_rejects_bad_roles_and_reused_names():
    graph = Graph()
    graph.add_value("x", TensorType((1, 2)), "input")
    with pytest.raises(ValueError, match="role"):
        graph.add_value("y", TensorType((1, 2)), "weights")
    with pytest.raises(ValueError, match="'x'"):
        graph.add_value("x", TensorType((1, 2)), "act")
    assert graph.unique_name("x") == "x_1"


def test_graph_package_imports_no_backend_engine_or_zoo():
    """DESIGN.md: ``zoo -> graph <- backends <- engine``; graph imports none of the others."""
    code = (
        "import pkgutil, importlib, sys, graph\n"
        "for m in pkgutil.walk_packages(graph.__path__, 'graph.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('backends', 'engine', 'zoo'))\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_copy_is_equal_and_independent():
    from graph.autodiff import autodiff

    graph = autodiff(trace(LeNet(), (3, 28, 28), batch=2))
    copied = graph.copy()
    copied.verify()
    assert str(copied) == str(graph)
    assert [v.name for v in copied.inputs] == ["input", "target"]
    assert list(copied.grads) == list(graph.grads) and copied.backward_start == graph.backward_start
    copied.nodes.pop()
    copied.values["input"].users.clear()
    assert graph.nodes[-1].name != copied.nodes[-1].name and graph.values["input"].users
