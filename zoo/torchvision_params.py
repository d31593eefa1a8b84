"""torchvision's parameter counts for its default models, the reference ``zoo.get(name)`` is held
to (``tests/zoo/test_torchvision_defaults.py``).

Every count is the ``"num_params"`` of the builder's ImageNet-1K weights, as torchvision's own
source records it in each ``*_Weights`` enum's ``meta`` (``torchvision/models/<file>.py``) and
its documentation prints it (``pytorch.org/vision/stable/models/generated/
torchvision.models.<builder>.html``). torchvision computes that figure on the model its builder
returns with those weights; the builder makes it with the same arguments as with no weights
(``num_classes`` is overwritten with ``len(categories)`` = 1000, the default anyway), so it is
also the default constructor's count. One builder differs: ``googlenet(weights=...)`` removes
the auxiliary heads after loading unless ``aux_logits=True`` is passed, while ``googlenet()``
keeps them (``GoogLeNet(aux_logits=True)`` is the class default), so its entry adds the heads
back by hand below. ``inception_v3(weights=...)`` keeps its ``AuxLogits`` head by default
(``kwargs.get("aux_logits", True)``), so its weights' count is already the default model's.

Parameters are what ``torch.nn.Module.parameters()`` yields: BatchNorm's weight and bias count,
its running statistics (buffers) do not, as in ``graph.nn``.
"""

from __future__ import annotations

# **** Auxiliary heads, summed from torchvision's source ****

# googlenet.py: InceptionAux(in_channels, 1000) = BasicConv2d(in_channels, 128, 1) (bias-free
# conv + BatchNorm2d(128): in*128 + 2*128), Linear(2048, 1024), Linear(1024, 1000).
#   aux1 (in 512): 512*128 + 256 = 65,792; 2048*1024 + 1024 = 2,098,176;
#                  1024*1000 + 1000 = 1,025,000                           -> 3,188,968
#   aux2 (in 528): 528*128 + 256 = 67,840; + 2,098,176 + 1,025,000         -> 3,191,016
_GOOGLENET_AUX = 3_188_968 + 3_191_016  # 6,379,984

# inception.py: InceptionAux(768, 1000) = BasicConv2d(768, 128, 1), BasicConv2d(128, 768, 5),
# Linear(768, 1000): 768*128 + 256 = 98,560; 128*768*5*5 + 2*768 = 2,459,136;
# 768*1000 + 1000 = 769,000 -> 3,326,696. Included in Inception_V3_Weights' 27,161,264, which
# leaves 27,161,264 - 3,326,696 = 23,834,568 for the model built with aux_logits=False.

TORCHVISION_PARAMS: dict[str, int] = {
    # alexnet.py, AlexNet_Weights.IMAGENET1K_V1
    "alexnet": 61_100_840,
    # vgg.py, VGG11_Weights ... VGG19_BN_Weights .IMAGENET1K_V1
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    # resnet.py, ResNet18_Weights ... Wide_ResNet50_2_Weights (V1 and V2 agree)
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
    # googlenet.py, GoogLeNet_Weights.IMAGENET1K_V1: 6,624,904 without the auxiliary heads;
    # the default googlenet() has them: 6,624,904 + 6,379,984 = 13,004,888
    "googlenet": 6_624_904 + _GOOGLENET_AUX,
    # inception.py, Inception_V3_Weights.IMAGENET1K_V1 (AuxLogits included)
    "inception_v3": 27_161_264,
    # mobilenetv2.py, MobileNet_V2_Weights (_COMMON_META, shared by V1 and V2)
    "mobilenet_v2": 3_504_872,
    # shufflenetv2.py, ShuffleNet_V2_X0_5_Weights ... ShuffleNet_V2_X2_0_Weights .IMAGENET1K_V1
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
    # squeezenet.py, SqueezeNet1_0_Weights and SqueezeNet1_1_Weights .IMAGENET1K_V1
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    # convnext.py, ConvNeXt_Tiny_Weights ... ConvNeXt_Base_Weights .IMAGENET1K_V1
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
}
