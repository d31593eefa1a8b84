"""graph.nn mirrors torch.nn: state_dict keys in the same order with the same shapes, the same
constructor arguments and defaults, torch's default initialisation bounds.

Imports nothing from backends/ or engine/.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from graph import nn

# **** Twin models: one builder, called with graph.nn or torch.nn ****


def _block_class(lib):
    class BasicBlock(lib.Module):
        def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
            super().__init__()
            self.conv1 = lib.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = lib.BatchNorm2d(c_out)
            self.relu = lib.ReLU()
            self.conv2 = lib.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = lib.BatchNorm2d(c_out)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = lib.Sequential(
                    lib.Conv2d(c_in, c_out, 1, stride, bias=False), lib.BatchNorm2d(c_out)
                )

    return BasicBlock


def _tiny_resnet(lib):
    class TinyResNet(lib.Module):
        def __init__(self) -> None:
            super().__init__()
            block = _block_class(lib)
            self.conv1 = lib.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = lib.BatchNorm2d(8)
            self.layer1 = lib.Sequential(block(8, 8), block(8, 8))
            self.layer2 = lib.Sequential(block(8, 16, stride=2))
            self.fc = lib.Linear(16, 10)

    return TinyResNet()


def _nested(lib):
    class Heads(lib.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = lib.Sequential(
                lib.Conv2d(3, 4, 3), lib.BatchNorm2d(4, affine=False), lib.ReLU()
            )
            self.heads = lib.ModuleList([lib.Linear(4, 2), lib.Linear(4, 3, bias=False)])
            self.heads.append(lib.Sequential(lib.Flatten(), lib.Linear(4, 5)))
            self.bn = lib.BatchNorm1d(5)

    return Heads()


MODELS = {
    "conv_bias": lambda lib: lib.Conv2d(3, 8, 3),
    "conv_no_bias": lambda lib: lib.Conv2d(4, 8, (1, 3), stride=2, groups=2, bias=False),
    "batchnorm": lambda lib: lib.BatchNorm2d(6),
    "linear": lambda lib: lib.Linear(7, 3),
    "sequential": lambda lib: lib.Sequential(
        lib.Conv2d(1, 6, 5),
        lib.BatchNorm2d(6),
        lib.ReLU(),
        lib.MaxPool2d(2),
        lib.Sequential(lib.Conv2d(6, 16, 5), lib.Dropout(), lib.Flatten()),
        lib.Linear(16, 10),
        lib.Softmax(dim=1),
    ),
    "nested_modulelist": _nested,
    "basic_block": lambda lib: _block_class(lib)(4, 8, stride=2),
    "tiny_resnet": _tiny_resnet,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_dict_keys_order_and_shapes_match_torch(name):
    ours = MODELS[name](nn).state_dict()
    theirs = MODELS[name](torch.nn).state_dict()
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        assert ours[key].shape == tuple(tensor.shape), key
        assert ours[key].dtype == np.dtype(str(tensor.dtype).removeprefix("torch.")), key


def test_named_parameters_and_counts_match_torch():
    ours, theirs = _tiny_resnet(nn), _tiny_resnet(torch.nn)
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    assert [k for k, _ in ours.named_modules()] == [k for k, _ in theirs.named_modules()]


# **** Arguments and defaults ****

SIGNATURE_TWINS = [
    "Conv2d",
    "Linear",
    "BatchNorm2d",
    "BatchNorm1d",
    "ReLU",
    "LeakyReLU",
    "GELU",
    "Dropout",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "Flatten",
    "ChannelShuffle",
    "ZeroPad2d",
    "ReflectionPad2d",
]


@pytest.mark.parametrize("name", SIGNATURE_TWINS)
def test_constructor_arguments_and_defaults_mirror_torch(name):
    """Same argument names, order and defaults. torch adds device= and dtype=, and torch 2.13's
    BatchNorm a keyword-only bias=, which ConvForge lacks."""
    ours = list(inspect.signature(getattr(nn, name)).parameters.values())
    theirs = list(inspect.signature(getattr(torch.nn, name)).parameters.values())
    theirs = [p for p in theirs if p.name not in ("device", "dtype") and p.kind != p.KEYWORD_ONLY]
    assert [p.name for p in ours] == [p.name for p in theirs]
    assert [p.default for p in ours] == [p.default for p in theirs]


def test_stored_attributes_mirror_torch():
    pairs = [
        (nn.LeakyReLU(), torch.nn.LeakyReLU(), ["negative_slope"]),
        (nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3), ["num_features", "eps", "momentum"]),
        (nn.Flatten(), torch.nn.Flatten(), ["start_dim", "end_dim"]),
        (nn.Dropout(), torch.nn.Dropout(), ["p"]),
        (nn.Linear(3, 4), torch.nn.Linear(3, 4), ["in_features", "out_features"]),
        (nn.GELU(), torch.nn.GELU(), ["approximate"]),
        (
            nn.Conv2d(4, 8, 3, padding=1, groups=2),
            torch.nn.Conv2d(4, 8, 3, padding=1, groups=2),
            [
                "in_channels",
                "out_channels",
                "kernel_size",
                "stride",
                "padding",
                "dilation",
                "groups",
                "padding_mode",
            ],
        ),
        (nn.Conv2d(4, 8, 2, padding="same"), torch.nn.Conv2d(4, 8, 2, padding="same"), ["padding"]),
    ]
    for ours, theirs, names in pairs:
        for attr in names:
            assert getattr(ours, attr) == getattr(theirs, attr), (type(ours).__name__, attr)
    assert nn.LeakyReLU().negative_slope == 0.01
    assert nn.BatchNorm2d(3).eps == 1e-5


# **** Initialisation ****


@pytest.mark.parametrize(
    "layer, fan_in",
    [
        (lambda: nn.Conv2d(16, 32, 3), 16 * 3 * 3),
        (lambda: nn.Conv2d(16, 32, (1, 5), groups=4), 4 * 1 * 5),
        (lambda: nn.Conv2d(32, 32, 3, groups=32), 9),
        (lambda: nn.Linear(200, 64), 200),
    ],
)
def test_default_init_has_torch_bounds(layer, fan_in):
    """kaiming_uniform(a=sqrt(5)) and torch's bias init are both U(-1/sqrt(fan_in), +...)."""
    nn.manual_seed(1)
    module = layer()
    bound = 1.0 / math.sqrt(fan_in)
    for name in ("weight", "bias"):
        data = getattr(module, name).data
        assert data.dtype == np.float32
        assert np.abs(data).max() <= bound, name
    weight = module.weight.data
    assert np.abs(weight).max() > 0.95 * bound  # fills the interval, not a narrower one
    assert abs(weight.std() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)  # uniform
    assert abs(weight.mean()) < 0.1 * bound


def test_torch_draws_within_the_same_bounds():
    """The oracle side of the bound: torch's own init respects 1/sqrt(fan_in) too."""
    torch.manual_seed(0)
    conv, linear = torch.nn.Conv2d(16, 32, 3), torch.nn.Linear(200, 64)
    for module, fan_in in ((conv, 144), (linear, 200)):
        bound = 1.0 / math.sqrt(fan_in)
        assert module.weight.abs().max().item() <= bound
        assert module.weight.abs().max().item() > 0.95 * bound
        assert module.bias.abs().max().item() <= bound


def test_batchnorm_starts_as_torch():
    ours, theirs = nn.BatchNorm2d(5).state_dict(), torch.nn.BatchNorm2d(5).state_dict()
    for key, tensor in theirs.items():
        np.testing.assert_array_equal(ours[key], tensor.numpy(), err_msg=key)


def test_manual_seed_makes_models_identical():
    nn.manual_seed(123)
    a = _tiny_resnet(nn).state_dict()
    nn.manual_seed(123)
    b = _tiny_resnet(nn).state_dict()
    c = _tiny_resnet(nn).state_dict()
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


# **** state_dict round trips ****


def test_load_state_dict_round_trip():
    nn.manual_seed(1)
    source = _tiny_resnet(nn)
    rng = np.random.default_rng(0)
    state = source.state_dict()
    for key, array in state.items():
        if array.dtype.kind == "f":
            state[key] = rng.standard_normal(array.shape).astype(np.float32)
    source.load_state_dict(state)
    nn.manual_seed(2)
    target = _tiny_resnet(nn)
    target.load_state_dict(source.state_dict())
    for key, array in target.state_dict().items():
        np.testing.assert_array_equal(array, state[key], err_msg=key)


def test_load_state_dict_accepts_torch_tensors():
    theirs = _tiny_resnet(torch.nn)
    with torch.no_grad():
        theirs.bn1.running_mean.uniform_(-1, 1)
    ours = _tiny_resnet(nn)
    ours.load_state_dict(theirs.state_dict())
    for key, tensor in theirs.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[key], tensor.numpy(), err_msg=key)


def test_state_dict_returns_copies():
    model = nn.Linear(3, 2)
    state = model.state_dict()
    state["weight"][...] = 7.0
    assert not np.any(model.weight.data == 7.0)


def test_load_state_dict_is_strict():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = model.state_dict()
    missing = dict(state)
    del missing["1.running_var"]
    with pytest.raises(KeyError, match=r"missing \['1\.running_var'\]"):
        model.load_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected \['2\.weight'\]"):
        model.load_state_dict({**state, "2.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"0\.weight: expected shape \[4, 3, 3, 3\]"):
        model.load_state_dict({**state, "0.weight": np.zeros((4, 3, 3, 2))})


# **** Calling a module ****


def test_calling_a_module_outside_tracing_raises_a_helpful_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(RuntimeError, match=r"Sequential runs only while tracing.*engine\.compile"):
        model(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(RuntimeError, match="Conv2d runs only while tracing"):
        model[0](np.zeros((1, 3, 8, 8), np.float32))


def test_module_subclass_must_call_init_first():
    class Broken(nn.Module):
        def __init__(self) -> None:
            self.conv = nn.Conv2d(1, 1, 1)

    with pytest.raises(AttributeError, match=r"Module\.__init__\(\) in Broken"):
        Broken()


def test_repr_mirrors_torch_for_simple_layers():
    for ours, theirs in [
        (nn.Linear(3, 4), torch.nn.Linear(3, 4)),
        (
            nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
            torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
        ),
    ]:
        assert repr(ours).replace(", bias=True", "") == repr(theirs).replace(", bias=True", "")
