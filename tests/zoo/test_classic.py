"""The classic zoo families: AlexNet, ZFNet, VGG, NIN, SqueezeNet, SPP-net and the LeNet variants.

Parameter counts are torchvision's where torchvision has the model, else derived by hand from the
architecture in a comment. Every model traces, compiles and runs on a small input (the adaptive
pools of AlexNet, VGG and SPP-net accept it); the small ones train on one batch; VGG-11-BN and
SqueezeNet 1.1 match a torch twin written here with torchvision's module names, which loads our
state_dict strictly, so the keys are torchvision's too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine
import zoo
from graph import nn
from tests.helpers import NET_TOLERANCE, rel_error, run_poisoned, torch_run, torch_twin

# ZFNet, 1000 classes (biases after the +):
#   conv1 96*3*7*7 + 96            =     14,208
#   conv2 256*96*5*5 + 256         =    614,656
#   conv3 384*256*3*3 + 384        =    885,120
#   conv4 384*384*3*3 + 384        =  1,327,488
#   conv5 256*384*3*3 + 256        =    884,992   convs: 3,726,464
#   fc6   (256*6*6)*4096 + 4096    = 37,752,832
#   fc7   4096*4096 + 4096         = 16,781,312
#   fc8   4096*1000 + 1000         =  4,097,000   FCs: 58,631,144
ZFNET_PARAMS = 3_726_464 + 58_631_144  # 62,357,608

# SPP-net: ZFNet's convs (3,726,464), then 21 bins of 256 channels into fc6:
#   fc6 (256*21)*4096 + 4096 = 22,024,192; fc7 16,781,312; fc8 4,097,000
SPP_NET_PARAMS = 3_726_464 + 22_024_192 + 16_781_312 + 4_097_000  # 46,628,968

# NIN on CIFAR-10 (k*k conv: out*in*k*k + out):
#   block 1: 192*3*25 + 192 = 14,592; 160*192 + 160 = 30,880; 96*160 + 96 = 15,456
#   block 2: 192*96*25 + 192 = 460,992; 192*192 + 192 = 37,056 (twice)
#   block 3: 192*192*9 + 192 = 331,968; 37,056; 10*192 + 10 = 1,930
NIN_CIFAR_PARAMS = 14_592 + 30_880 + 15_456 + 460_992 + 2 * 37_056 + 331_968 + 37_056 + 1_930

# (name, parameters with the default classes, small input for the forward run)
CASES = [
    ("alexnet", 61_100_840, (3, 64, 64)),
    ("zfnet", ZFNET_PARAMS, (3, 64, 64)),
    ("vgg11", 132_863_336, (3, 32, 32)),
    ("vgg11_bn", 132_868_840, (3, 32, 32)),
    ("vgg13", 133_047_848, (3, 32, 32)),
    ("vgg13_bn", 133_053_736, (3, 32, 32)),
    ("vgg16", 138_357_544, (3, 32, 32)),
    ("vgg16_bn", 138_365_992, (3, 32, 32)),
    ("vgg19", 143_667_240, (3, 32, 32)),
    ("vgg19_bn", 143_678_248, (3, 32, 32)),
    ("nin_cifar", NIN_CIFAR_PARAMS, (3, 32, 32)),
    ("squeezenet1_0", 1_248_424, (3, 64, 64)),
    ("squeezenet1_1", 1_235_496, (3, 64, 64)),
    ("spp_net", SPP_NET_PARAMS, (3, 80, 80)),
    ("lenet_300_100", 266_610, (1, 28, 28)),
    ("lenet_caffe", 431_080, (1, 28, 28)),
]


@pytest.mark.parametrize(("name", "params", "shape"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.slow
def test_parameter_count_and_forward(name, params, shape, rng):
    model = zoo.get(name)
    assert model.num_parameters() == params
    out = run_poisoned(model, rng.standard_normal((1, *shape)), "float32")
    assert out.shape == (1, zoo.spec(name).num_classes)
    assert np.all(np.isfinite(out))


# The input and class count each model is registered with, where not ImageNet's.
SMALL_DESIGNS = {
    "nin_cifar": ((3, 32, 32), 10),
    "lenet_300_100": ((1, 28, 28), 10),
    "lenet_caffe": ((1, 28, 28), 10),
}


def test_registered_design_inputs():
    for name, _, _ in CASES:
        spec = zoo.spec(name)
        expected = SMALL_DESIGNS.get(name, ((3, 224, 224), 1000))
        assert (spec.input_shape, spec.num_classes) == expected, name


def test_spp_net_runs_at_two_input_sizes(rng):
    """One SPP-net, one set of weights: 224x224 (13x13 conv5) and 180x180 (10x10 conv5) both
    give 21 bins per channel, so the same FC layers and the same output shape."""
    model = zoo.get("spp_net", num_classes=10)
    for size in (224, 180):
        exe = engine.compile(model, (3, size, size), batch=1)
        assert sum(p.size for p in exe.params.values()) == model.num_parameters()
        exe.poison_buffers()
        out = exe.run(rng.standard_normal((1, 3, size, size)).astype(np.float32))
        assert out.shape == (1, 10)
        assert np.all(np.isfinite(out))


TRAINED = [
    ("lenet_300_100", (1, 28, 28)),
    ("lenet_caffe", (1, 28, 28)),
    ("nin_cifar", (3, 32, 32)),
    ("squeezenet1_1", (3, 64, 64)),
    ("spp_net", (3, 80, 80)),
]


@pytest.mark.parametrize(("name", "shape"), TRAINED, ids=[t[0] for t in TRAINED])
def test_three_sgd_steps_lower_the_loss(name, shape):
    """Seeded weights and batch: with dropout, momentum 0.9 and 4 images the loss is noisy
    (SqueezeNet 1.1's third loss exceeded its first on 2 of 12 seeds tried), so the check is on
    one fixed, reproducible run."""
    nn.manual_seed(0)
    model = zoo.get(name, num_classes=10)
    exe = engine.compile(
        model, shape, batch=4, train=True, optimizer=engine.optim.SGD(lr=0.01, momentum=0.9)
    )
    data = np.random.default_rng(0)
    x = data.standard_normal((4, *shape)).astype(np.float32)
    y = data.integers(0, 10, 4)
    losses = [exe.train_step(x, y) for _ in range(3)]
    assert np.all(np.isfinite(losses)), losses
    assert losses[2] < losses[0], losses


# **** Torch twins, with torchvision's module names ****


def torch_vgg11_bn(num_classes: int) -> torch.nn.Module:
    T = torch.nn
    layers: list[torch.nn.Module] = []
    channels = 3
    for item in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
        if item == "M":
            layers.append(T.MaxPool2d(2, 2))
        else:
            layers += [T.Conv2d(channels, item, 3, padding=1), T.BatchNorm2d(item), T.ReLU()]
            channels = item

    class VGG(T.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = T.Sequential(*layers)
            self.avgpool = T.AdaptiveAvgPool2d((7, 7))
            self.classifier = T.Sequential(
                T.Linear(512 * 7 * 7, 4096),
                T.ReLU(),
                T.Dropout(),
                T.Linear(4096, 4096),
                T.ReLU(),
                T.Dropout(),
                T.Linear(4096, num_classes),
            )

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG()


def torch_squeezenet1_1(num_classes: int) -> torch.nn.Module:
    T = torch.nn

    class Fire(T.Module):
        def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int):
            super().__init__()
            self.squeeze = T.Conv2d(inplanes, squeeze, 1)
            self.squeeze_activation = T.ReLU()
            self.expand1x1 = T.Conv2d(squeeze, expand1x1, 1)
            self.expand1x1_activation = T.ReLU()
            self.expand3x3 = T.Conv2d(squeeze, expand3x3, 3, padding=1)
            self.expand3x3_activation = T.ReLU()

        def forward(self, x):
            x = self.squeeze_activation(self.squeeze(x))
            return torch.cat(
                [
                    self.expand1x1_activation(self.expand1x1(x)),
                    self.expand3x3_activation(self.expand3x3(x)),
                ],
                1,
            )

    class SqueezeNet(T.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = T.Sequential(
                T.Conv2d(3, 64, 3, stride=2),
                T.ReLU(),
                T.MaxPool2d(3, 2, ceil_mode=True),
                Fire(64, 16, 64, 64),
                Fire(128, 16, 64, 64),
                T.MaxPool2d(3, 2, ceil_mode=True),
                Fire(128, 32, 128, 128),
                Fire(256, 32, 128, 128),
                T.MaxPool2d(3, 2, ceil_mode=True),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                Fire(512, 64, 256, 256),
            )
            self.classifier = T.Sequential(
                T.Dropout(), T.Conv2d(512, num_classes, 1), T.ReLU(), T.AdaptiveAvgPool2d((1, 1))
            )

        def forward(self, x):
            return torch.flatten(self.classifier(self.features(x)), 1)

    return SqueezeNet()


def _randomise_vectors(model: nn.Module, rng: np.random.Generator) -> None:
    """Random biases, BatchNorm scales and statistics (all zero or one at the start), so that
    every bias and eval-mode BatchNorm is tested, not the identity."""
    for name, tensor, _ in model.named_tensors():
        array = tensor.data if isinstance(tensor, nn.Parameter) else tensor
        if name.endswith("running_var"):
            array[...] = rng.uniform(0.5, 2.0, array.shape)
        elif name.endswith(("running_mean", "bias")):
            array[...] = 0.1 * rng.standard_normal(array.shape)
        elif array.ndim == 1 and name.endswith("weight"):
            array[...] = rng.uniform(0.5, 1.5, array.shape)


@pytest.mark.parametrize(
    ("name", "twin", "shape"),
    [
        ("vgg11_bn", torch_vgg11_bn, (3, 32, 32)),
        ("squeezenet1_1", torch_squeezenet1_1, (3, 64, 64)),
    ],
    ids=["vgg11_bn", "squeezenet1_1"],
)
@pytest.mark.slow
def test_forward_matches_torch_twin(name, twin, shape, rng):
    model = zoo.get(name, num_classes=10)
    _randomise_vectors(model, rng)
    torch_model = torch_twin(model, twin(10), "float32")
    assert list(torch_model.state_dict()) == list(model.state_dict())
    x = rng.standard_normal((1, *shape)).astype(np.float32)
    err = rel_error(run_poisoned(model, x, "float32"), torch_run(torch_model, x))
    assert err < NET_TOLERANCE["float32"], f"relative error {err:.3e}"
