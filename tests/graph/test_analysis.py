"""graph.analysis: receptive fields worked by hand, parameters against ``num_parameters()``,
MACs against torchvision's published figures, and the JSON and table output.

Imports nothing from backends/; the CLI tests call ``engine.cli.main`` only.
"""

from __future__ import annotations

import json
from functools import cache

import pytest

import zoo
from graph import functional as F
from graph import nn
from graph.analysis import AxisField, Summary, analyze, summary_dict, summary_table
from graph.autodiff import autodiff
from graph.trace import trace

# torchvision's published GFLOPS (multiply-accumulates, 1000 classes, batch 1, the model's
# default input: 224x224, inception_v3 299x299). Models that other engineers have not added
# to the zoo yet are skipped with that reason.
TORCHVISION_GMACS = {
    "resnet18": 1.814,
    "resnet50": 4.089,
    "alexnet": 0.714,
    "vgg16": 15.470,
    "googlenet": 1.498,
    "inception_v3": 5.713,
    "mobilenet_v2": 0.301,
    "shufflenet_v2_x1_0": 0.145,
    "squeezenet1_1": 0.349,
    "convnext_tiny": 4.456,
}


_AUX_HEADS = ("googlenet", "inception_v3")


@cache
def _zoo_summary(name: str) -> tuple[Summary, int]:
    """A zoo model's summary at its default input, and its ``num_parameters()``. The summary
    counts the parameters the traced forward pass uses, so GoogLeNet and Inception v3 are built
    without the auxiliary heads (torchvision's default has them, off the inference path)."""
    model = zoo.get(name, **({"aux_logits": False} if name in _AUX_HEADS else {}))
    return analyze(trace(model, zoo.spec(name).input_shape), name), model.num_parameters()


def _fields(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, AxisField]:
    """Each layer's field along the height axis (the nets below are square unless noted)."""
    return {row.name: row.field[0] for row in analyze(trace(model, input_shape)).layers}


# **** Receptive fields ****


def test_three_stacked_3x3_convs_see_7x7():
    model = nn.Sequential(*(nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)))
    rows = analyze(trace(model, (4, 16, 16))).layers
    # Each 3x3 stride-1 conv adds (3-1)*1 = 2 pixels: 3, 5, 7. Padding 1 = (3-1)/2 keeps the
    # first unit centred on pixel 0.
    assert [row.field for row in rows] == [
        (AxisField(s, 1, 0.0), AxisField(s, 1, 0.0)) for s in (3, 5, 7)
    ]


def test_stride_two_network_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=2, padding=3),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 8, 3, stride=1, padding=0),
    )
    fields = _fields(model, (3, 64, 64))
    # conv 7x7/2 pad 3: size 1 + (7-1)*1 = 7,  jump 1*2 = 2, start 0 + ((7-1)/2 - 3)*1 = 0
    assert fields["0"] == AxisField(7, 2, 0.0)
    # maxpool 3/2 pad 1: size 7 + (3-1)*2 = 11, jump 2*2 = 4, start 0 + ((3-1)/2 - 1)*2 = 0
    assert fields["1"] == AxisField(11, 4, 0.0)
    # conv 3x3/1 pad 0: size 11 + (3-1)*4 = 19, jump 4*1 = 4, start 0 + ((3-1)/2 - 0)*4 = 4
    assert fields["2"] == AxisField(19, 4, 4.0)


def test_dilation_grows_the_field_exponentially():
    model = nn.Sequential(
        *(nn.Conv2d(2, 2, 3, padding=d, dilation=d) for d in (1, 2, 4)),
        nn.MaxPool2d(2, stride=2, dilation=2),
    )
    fields = _fields(model, (2, 64, 64))
    # Yu & Koltun 2016: 3x3 convs with dilation 1, 2, 4 have k_eff = 3, 5, 9, so sizes
    # 3, 3 + 4 = 7, 7 + 8 = 15 (2^(i+2) - 1); padding = dilation keeps start at 0.
    assert [fields[k] for k in "012"] == [AxisField(s, 1, 0.0) for s in (3, 7, 15)]
    # maxpool 2/2 dilation 2: k_eff = 2*(2-1)+1 = 3, size 15 + 2 = 17, jump 2, start 0 + 1 = 1
    assert fields["3"] == AxisField(17, 2, 1.0)


def test_axes_are_independent_for_asymmetric_kernels_and_padding():
    model = nn.Sequential(nn.ZeroPad2d((1, 0, 2, 0)), nn.Conv2d(1, 1, (1, 5), stride=(1, 2)))
    rows = analyze(trace(model, (1, 16, 16))).layers
    # pad (left 1, top 2): a kernel-1 window moving start by -pad: (-2, -1).
    assert rows[0].field == (AxisField(1, 1, -2.0), AxisField(1, 1, -1.0))
    # conv 1x5, stride (1, 2): height keeps size 1; width 1 + 4 = 5, jump 2, start -1 + 2 = 1.
    assert rows[1].field == (AxisField(1, 1, -2.0), AxisField(5, 2, 1.0))


def test_joins_take_the_largest_field_and_global_pooling_the_whole_input():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wide = nn.Conv2d(2, 2, 3, padding=1)
            self.narrow = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            wide, narrow = self.wide(x), self.narrow(x)
            joined = F.cat([narrow, F.add(narrow, wide)], 1)
            return F.flatten(F.adaptive_avg_pool2d(joined, 1), 1)

    fields = _fields(Net(), (2, 12, 10))
    assert fields["narrow"].size == 1 and fields["wide"].size == 3
    # add and concat report the largest of their inputs' fields (the 3x3 branch's).
    assert fields["add"] == fields["concat"] == AxisField(3, 1, 0.0)
    # Global pooling and flatten see every pixel: the input's extent (height 12), centred.
    assert fields["global_avg_pool2d"] == fields["flatten"] == AxisField(12, 12, 5.5, whole=True)


def test_resnet18_field_matches_the_hand_count():
    rows = _zoo_summary("resnet18")[0].layers
    last_conv = [row for row in rows if row.op == "conv2d"][-1]
    # conv1 7 (jump 2), maxpool 11 (jump 4); layer1: four 3x3 at jump 4, 11 + 4*8 = 43;
    # layer2: 3x3/2 at jump 4 -> 51 (jump 8), three 3x3 at jump 8 -> 99; layer3: +16 -> 115
    # (jump 16), +3*32 -> 211; layer4: +32 -> 243 (jump 32), +3*64 -> 435.
    assert last_conv.field[0] == AxisField(435, 32, 0.0)
    assert rows[-1].field[0].whole and rows[-1].field[0].size == 224


# **** Parameters, MACs, bytes ****


def test_a_shared_weight_is_counted_once_at_its_first_use():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    model = Twice()
    result = analyze(trace(model, (3, 8, 8), batch=2))
    assert [row.params for row in result.layers] == [3 * 3 * 9 + 3, 0]
    assert result.params == model.num_parameters()
    assert result.param_bytes == 4 * model.num_parameters()
    # MACs and activation bytes count the whole batch of 2.
    assert result.layers[0].macs == 2 * 3 * 8 * 8 * (3 * 9)
    assert result.activation_bytes == 2 * (2 * 3 * 8 * 8 * 4)


def test_a_training_graph_is_summarised_up_to_its_loss():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    forward = trace(model, (1, 4, 4), batch=2)
    train = analyze(autodiff(forward))
    assert [row.name for row in train.layers[:-1]] == [n.name for n in forward.nodes]
    assert train.params == model.num_parameters()


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.slow
def test_parameter_totals_match_num_parameters(name: str):
    result, expected = _zoo_summary(name)
    assert result.params == expected


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_macs_match_torchvision(name: str):
    if name not in zoo.names():
        pytest.skip(f"{name} is not in the zoo yet")
    result = _zoo_summary(name)[0]
    assert result.macs / 1e9 == pytest.approx(TORCHVISION_GMACS[name], rel=0.01)


# **** Output ****


def test_summary_dict_is_json_with_the_documented_keys():
    data = json.loads(json.dumps(summary_dict(_zoo_summary("resnet18")[0])))
    assert {"model", "input_shape", "params", "macs", "layers"} <= set(data)
    assert data["model"] == "resnet18" and data["input_shape"] == [3, 224, 224]
    first = data["layers"][0]
    assert first["name"] == "conv1" and first["output_shape"] == [1, 64, 112, 112]
    assert first["receptive_field"] == {
        "size": [7, 7],
        "jump": [2, 2],
        "start": [0.0, 0.0],
        "whole": False,
    }
    assert data["params"] == sum(row["params"] for row in data["layers"])


def test_summary_table_has_a_row_per_layer_and_totals_last():
    result = _zoo_summary("lenet5")[0]
    lines = summary_table(result).splitlines()
    assert any(line.startswith(result.layers[-1].name) for line in lines)
    assert lines[-4:] == [
        f"Total params: {result.params:,} (61.71 K)",
        f"Total MACs: {result.macs:,} (416.52 K)",
        f"Activation bytes: {result.activation_bytes:,} ({result.activation_bytes / 1024:.2f} KiB)",
        f"Params bytes: {result.param_bytes:,} ({result.param_bytes / 1024:.2f} KiB)",
    ]


def test_cli_summary_prints_the_table_and_totals(capsys):
    from engine.cli import main

    assert main(["summary", "resnet20_cifar"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 272,474" in out and "Total MACs:" in out
    assert main(["summary", "lenet5", "--input", "1x28x28", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "lenet5" and data["params"] == zoo.get("lenet5").num_parameters()


def test_cli_zoo_lists_each_model(capsys, monkeypatch):
    from engine.cli import main

    monkeypatch.setattr(zoo, "names", lambda: ["lenet5", "resnet20_cifar"])
    assert main(["zoo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["lenet5", "1x28x28", "10", "61,706"]
    assert lines[2].split()[:4] == ["resnet20_cifar", "3x32x32", "10", "272,474"]
    assert "not in torchvision" in lines[1]
