"""Filters and feature maps: the first layer's filters and each layer's activations for one
image, the low-to-high hierarchy of Zeiler & Fergus (2014) as raw pictures.

Which layers: by default the output of every activation (ReLU and its kin) that is still an
image ([1, C, H, W]), evenly thinned to at most ``MAX_LAYERS``; or the value names a caller
gives (``engine.capture.capturable``). The activations come from ``Executable.run(x,
capture=...)``, so fused layers are shown as well.
"""

from __future__ import annotations

import numpy as np

from engine.executable import Executable
from graph.ops.fused import ACTIVATIONS

MAX_LAYERS = 12
MAX_CHANNELS = 64


def first_filters(exe: Executable) -> tuple[str, np.ndarray, bool]:
    """(name, images, rgb) of the first conv's filters: [O, kh, kw, 3] for RGB input, else
    each filter's first input channel [O, kh, kw]."""
    graph = exe.traced_graph
    conv = next((node for node in graph.nodes if node.op == "conv2d"), None)
    if conv is None:
        raise ValueError("the model has no conv2d layer, so no filters to show")
    weight = exe.params[conv.inputs[1].name][:MAX_CHANNELS]
    if weight.shape[1] == 3:
        return conv.name, weight.transpose(0, 2, 3, 1), True
    return conv.name, weight[:, 0], False


def activation_layers(exe: Executable, names: list[str] | None = None) -> list[str]:
    """The values to show: ``names``, or every image-shaped activation output, thinned."""
    if names:
        return names
    graph = exe.traced_graph
    layers = [
        node.outputs[0].name
        for node in graph.nodes
        if node.op in ACTIVATIONS and len(node.outputs[0].shape) == 4
    ]
    if len(layers) > MAX_LAYERS:
        keep = np.linspace(0, len(layers) - 1, MAX_LAYERS).round().astype(int)
        layers = [layers[i] for i in sorted(set(keep))]
    return layers


def activations(exe: Executable, image: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Each value's channels for ``image`` ([C, H, W], preprocessed) as [channels, H, W]
    (at most ``MAX_CHANNELS``); values with no spatial extent are refused by name."""
    x = np.zeros(exe.input_shape, exe.dtype)
    x[0] = image
    _, values = exe.run(x, capture=names)
    maps = {}
    for name in names:
        value = values[name]
        if value.ndim != 4:
            raise ValueError(
                f"{name} has shape {list(value.shape)}; feature maps need a [N, C, H, W] value"
            )
        maps[name] = value[0, :MAX_CHANNELS]
    return maps
