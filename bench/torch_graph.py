"""A torch twin of any traced graph: our IR run node by node with ``torch.nn.functional``.

``TorchGraph(graph, state, device)`` holds the graph's parameters and state as torch tensors on
``device`` and runs ``graph.nodes`` in order, one functional call per node, freeing each value
after its last use (as eager PyTorch does). It needs no torchvision and no per-architecture
code, so the GPU benchmark gets PyTorch + cuDNN on exactly our architecture and weights, and
the parity tests get an oracle that shares no kernel with either of our backends.

Covered: the forward ops of inference graphs (conv2d with any stride, padding, dilation and
groups; pooling; batch_norm in eval form; activations; shape ops; the inference passes' fused
conv2d/linear and BatchNorm folds). Anything else raises
NotImplementedError naming the ops and a layer of each, when the twin is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from graph.ir import Graph, Node
from graph.ops.fused import activation_of, epilogue_inputs

Function = Callable[[Node, list[torch.Tensor]], torch.Tensor]


def _conv2d(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    x, weight, bias = args[0], args[1], args[2] if len(args) == 3 else None
    top, bottom, left, right = node.attrs["padding"]
    if (top, left) != (bottom, right):  # "same" with an even kernel: torch pads first, too
        x, padding = F.pad(x, (left, right, top, bottom)), (0, 0)
    else:
        padding = (top, left)
    attrs = node.attrs
    return F.conv2d(x, weight, bias, attrs["stride"], padding, attrs["dilation"], attrs["groups"])


def _max_pool2d(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    a = node.attrs
    return F.max_pool2d(
        args[0], a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]
    )


def _avg_pool2d(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    a = node.attrs
    return F.avg_pool2d(
        args[0], a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"]
    )


def _batch_norm(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    x, mean, var, *affine = args  # inputs in F.batch_norm's order; weight and bias optional
    weight, bias = affine if affine else (None, None)
    return F.batch_norm(x, mean, var, weight, bias, training=False, eps=node.attrs["eps"])


def _layer_norm2d(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    """ConvNeXt's channel LayerNorm: each pixel over C, biased variance (graph/ops/norm.py)."""
    x = args[0]
    mean = x.mean(1, keepdim=True)
    var = (x - mean).square().mean(1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + node.attrs["eps"])
    if len(args) == 3:
        y = y * args[1][:, None, None] + args[2][:, None, None]
    return y


def _channel_scale(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    x, scale = args
    return x * scale.reshape(1, -1, *(1,) * (x.dim() - 2))


def _channel_shuffle(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    x, groups = args[0], node.attrs["groups"]
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _batch_norm_fold(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    """[alpha; beta] of an inference BatchNorm (graph/ops/fused.py)."""
    mean, var, *affine = args
    alpha = torch.rsqrt(var + node.attrs["eps"])
    if affine:
        alpha = alpha * affine[0]
    beta = (affine[1] if affine else 0) - mean * alpha
    return torch.stack([alpha, beta])


def _fused(layer: Function) -> Function:
    """A conv2d_fused or linear_fused node: the layer, then its epilogue part by part."""

    def run(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
        epilogue = node.attrs["epilogue"]
        extra = dict(zip(epilogue_inputs(epilogue), args[2:], strict=True))
        y = layer(node, args[:2] + ([extra["bias"]] if "bias" in extra else []))
        if "batch_norm" in extra:
            alpha, beta = (v.reshape(1, -1, *(1,) * (y.dim() - 2)) for v in extra["batch_norm"])
            y = y * alpha + beta
        if "add" in extra:
            y = y + extra["add"]
        activation = activation_of(epilogue)
        return FUNCTIONS[activation](node, [y]) if activation else y

    return run


# op name -> f(n, a): node ``n``'s output from its input tensors ``a``, in the node's order
FUNCTIONS: dict[str, Function] = {
    # convolution, linear, normalisation
    "conv2d": _conv2d,
    "linear": lambda n, a: F.linear(*a),
    "batch_norm": _batch_norm,
    "layer_norm2d": _layer_norm2d,
    "softmax": lambda n, a: F.softmax(a[0], n.attrs["dim"]),
    # pooling
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "global_avg_pool2d": lambda n, a: a[0].mean((2, 3), keepdim=True),
    "adaptive_avg_pool2d": lambda n, a: F.adaptive_avg_pool2d(a[0], n.attrs["output_size"]),
    "adaptive_max_pool2d": lambda n, a: F.adaptive_max_pool2d(a[0], n.attrs["output_size"]),
    # elementwise
    "add": lambda n, a: a[0] + a[1],
    "sub": lambda n, a: a[0] - a[1],
    "mul": lambda n, a: a[0] * a[1],
    "neg": lambda n, a: -a[0],
    "scale": lambda n, a: a[0] * n.attrs["factor"],
    "channel_scale": _channel_scale,
    "relu": lambda n, a: F.relu(a[0]),
    "leaky_relu": lambda n, a: F.leaky_relu(a[0], n.attrs["negative_slope"]),
    "hardtanh": lambda n, a: F.hardtanh(a[0], n.attrs["min_val"], n.attrs["max_val"]),
    "sigmoid": lambda n, a: torch.sigmoid(a[0]),
    "tanh": lambda n, a: torch.tanh(a[0]),
    "gelu": lambda n, a: F.gelu(a[0], approximate=n.attrs["approximate"]),
    "dropout": lambda n, a: a[0],  # the identity at inference
    # data movement
    "flatten": lambda n, a: torch.flatten(a[0], n.attrs["start_dim"], n.attrs["end_dim"]),
    "reshape": lambda n, a: a[0].reshape(n.attrs["shape"]),
    "concat": lambda n, a: torch.cat(a, n.attrs["dim"]),
    "slice": lambda n, a: a[0].narrow(n.attrs["dim"], n.attrs["start"], n.attrs["length"]),
    "channel_shuffle": _channel_shuffle,
    "transpose": lambda n, a: a[0].transpose(n.attrs["dim0"], n.attrs["dim1"]).contiguous(),
    "pad": lambda n, a: F.pad(a[0], n.attrs["pads"], n.attrs["mode"], n.attrs["value"]),
    # the inference passes' fused ops
    "batch_norm_fold": _batch_norm_fold,
}
FUNCTIONS["conv2d_fused"] = _fused(FUNCTIONS["conv2d"])
FUNCTIONS["linear_fused"] = _fused(FUNCTIONS["linear"])


class TorchGraph:
    """Runs ``graph`` (a traced inference graph, one input and one output) with torch.

    Args:
        graph: e.g. ``exe.graph`` of a compiled executable.
        state: every parameter and state array by name (``exe.state_dict()``), copied to
            ``device`` in its own dtype.
        device: a torch device ("cpu", "cuda").
    """

    def __init__(self, graph: Graph, state: Mapping[str, np.ndarray], device: str) -> None:
        missing = {node.op: node.name for node in graph.nodes if node.op not in FUNCTIONS}
        if missing:
            listing = ", ".join(f"{op} (at {name})" for op, name in sorted(missing.items()))
            raise NotImplementedError(f"TorchGraph has no torch function for: {listing}")
        if len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise ValueError(
                f"TorchGraph runs graphs of one input and one output, but got "
                f"{len(graph.inputs)} and {len(graph.outputs)}"
            )
        self.graph = graph
        self.tensors = {
            v.name: torch.as_tensor(np.asarray(state[v.name]), device=device) for v in graph.params
        }
        # the last node reading each value: the run drops it there, as eager torch frees it
        self._last_use: dict[str, int] = {}
        for i, node in enumerate(graph.nodes):
            for value in node.inputs:
                self._last_use[value.name] = i
        self._last_use.pop(graph.outputs[0].name, None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        live = {self.graph.inputs[0].name: x}
        for i, node in enumerate(self.graph.nodes):
            args = [live[v.name] if v.name in live else self.tensors[v.name] for v in node.inputs]
            out = FUNCTIONS[node.op](node, args)
            if tuple(out.shape) != node.outputs[0].shape:
                raise RuntimeError(
                    f"{node.name}: TorchGraph's {node.op} gave shape {list(out.shape)}, but the "
                    f"graph says {list(node.outputs[0].shape)}"
                )
            live[node.outputs[0].name] = out
            for value in node.inputs:
                if self._last_use.get(value.name) == i and value.name in live:
                    del live[value.name]
        return live[self.graph.outputs[0].name]
