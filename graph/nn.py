"""Layer definitions that mirror ``torch.nn``: same class names, constructor arguments, defaults
and parameter names, so a model written here has the same ``state_dict`` keys (and, loaded with
the same weights, the same outputs) as its torch twin.

A Module holds NumPy weights (``Parameter``), buffers (BatchNorm running statistics) and child
modules. Calling a Module on a traced ``Tensor`` records nodes; ``graph.trace`` does that once
per compile. Weights start from PyTorch's default initialisation, drawn from a seeded generator
(``manual_seed``), so two runs of a script build identical models.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from graph import functional as F
from graph.functional import pair
from graph.trace import Tensor, active_tracer

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Seed the generator behind every layer's initial weights."""
    global _rng
    _rng = np.random.default_rng(seed)


def kaiming_normal_(param: Parameter, mode: str = "fan_out") -> None:
    """He initialisation for ReLU networks, as ``torch.nn.init.kaiming_normal_(w, mode=mode,
    nonlinearity="relu")``: N(0, 2 / fan), drawn from the seeded generator."""
    fan_out, fan_in = param.shape[0], int(np.prod(param.shape[1:]))
    receptive = int(np.prod(param.shape[2:])) if len(param.shape) > 2 else 1
    fan = fan_out * receptive if mode == "fan_out" else fan_in
    param.data[...] = _rng.normal(0.0, np.sqrt(2.0 / fan), size=param.shape)


def trunc_normal_(param: Parameter, std: float = 1.0, a: float = -2.0, b: float = 2.0) -> None:
    """N(0, std) truncated to [a, b] by redrawing the values outside, as
    ``torch.nn.init.trunc_normal_`` (ConvNeXt's initialisation), from the seeded generator."""
    values = _rng.normal(0.0, std, size=param.shape)
    outside = (values < a) | (values > b)
    while outside.any():
        values[outside] = _rng.normal(0.0, std, size=int(outside.sum()))
        outside = (values < a) | (values > b)
    param.data[...] = values


def _uniform(shape: tuple[int, ...], bound: float) -> np.ndarray:
    return _rng.uniform(-bound, bound, size=shape).astype(np.float32)


class Parameter:
    """A trainable weight: a float32 NumPy array that the tracer maps to a ``param`` value."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = np.ascontiguousarray(data, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def __repr__(self) -> str:
        return f"Parameter(shape={list(self.shape)})"


class Module:
    """Base class of every layer and model, as ``torch.nn.Module``.

    Assigning a ``Parameter`` or a ``Module`` to an attribute registers it (in assignment order,
    which fixes the ``state_dict`` order); ``register_buffer`` registers an array.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: object) -> None:
        if "_modules" not in self.__dict__:
            raise AttributeError(f"call Module.__init__() in {type(self).__name__} first")
        was_buffer = name in self._buffers
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif was_buffer and isinstance(value, np.ndarray):
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array: np.ndarray) -> None:
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args):
        tracer = active_tracer()
        if tracer is None:
            raise RuntimeError(
                f"{type(self).__name__} runs only while tracing: compile it with "
                "engine.compile(model, input_shape, batch) and call run() on the result"
            )
        tracer.enter(self)
        try:
            return self.forward(*args)
        finally:
            tracer.leave()

    # **** Walking the tree ****

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_tensors(self, prefix: str = "") -> Iterator[tuple[str, object, str]]:
        """(state_dict key, Parameter or buffer array, role) in PyTorch's state_dict order:
        a module's own parameters, then its buffers, then each child's."""
        dot = f"{prefix}." if prefix else ""
        for name, p in self._parameters.items():
            yield dot + name, p, "param"
        for name, b in self._buffers.items():
            yield dot + name, b, "state"
        for name, child in self._modules.items():
            yield from child.named_tensors(dot + name)

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for name, tensor, role in self.named_tensors():
            if role == "param":
                yield name, tensor

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed as torch's ``state_dict()``."""
        return OrderedDict(
            (name, (t.data if isinstance(t, Parameter) else t).copy())
            for name, t, _ in self.named_tensors()
        )

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy arrays (NumPy, or anything with ``.numpy()``) in by key; strict, as torch's."""
        own = {name: t for name, t, _ in self.named_tensors()}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
        for name, t in own.items():
            target = t.data if isinstance(t, Parameter) else t
            array = np.asarray(
                state[name].numpy() if hasattr(state[name], "numpy") else state[name]
            )
            if array.shape != target.shape:
                raise ValueError(
                    f"{name}: expected shape {list(target.shape)}, but got {list(array.shape)}"
                )
            target[...] = array

    def train(self, mode: bool = True) -> Module:
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    # **** Printing, as torch.nn.Module ****

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        body = "".join(
            f"\n  ({name}): " + repr(child).replace("\n", "\n  ")
            for name, child in self._modules.items()
        )
        return head + body + "\n)"


# **** Containers ****


class Sequential(Module):
    def __init__(self, *args: Module | Mapping[str, Module]) -> None:
        super().__init__()
        items = (
            args[0].items()
            if len(args) == 1 and isinstance(args[0], Mapping)
            else ((str(i), m) for i, m in enumerate(args))
        )
        for name, module in items:
            setattr(self, name, module)

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x


class ModuleList(Module):
    def __init__(self, modules: Sequence[Module] = ()) -> None:
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> ModuleList:
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Identity(Module):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, x):
        return x


# **** Weight layers ****


def _check_positive(layer: str, **values: object) -> None:
    for name, value in values.items():
        items = value if isinstance(value, tuple) else (value,)
        if any(not isinstance(v, int) or v < 1 for v in items):
            raise ValueError(f"{layer} {name} must be positive integers, but got {name}={value}")


class Conv2d(Module):
    """2-D convolution; output size ``floor((H + 2P - D*(K-1) - 1) / S) + 1`` per axis.

    ``padding`` is an int, a pair, ``"same"`` or ``"valid"``; ``padding_mode`` is "zeros" or
    "reflect". Weights start as torch's: kaiming-uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        kernel, stride, dilation = pair(kernel_size), pair(stride), pair(dilation)
        _check_positive(
            "Conv2d",
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel,
            stride=stride,
            dilation=dilation,
            groups=groups,
        )
        if in_channels % groups:
            raise ValueError(
                f"Conv2d in_channels must be divisible by groups, but got "
                f"in_channels={in_channels}, groups={groups}"
            )
        if out_channels % groups:
            raise ValueError(
                f"Conv2d out_channels must be divisible by groups, but got "
                f"out_channels={out_channels}, groups={groups}"
            )
        if padding_mode not in ("zeros", "reflect"):
            raise ValueError(
                f"Conv2d padding_mode must be one of ('zeros', 'reflect'), but got "
                f"padding_mode={padding_mode!r}"
            )
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(
                f"Conv2d padding must be 'same', 'valid', an int or a pair, but "
                f"got padding={padding!r}"
            )
        if padding == "same" and stride != (1, 1):
            raise ValueError(f"Conv2d padding='same' needs stride 1, but got stride={stride}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = kernel, stride, dilation
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding")
        self.padding_mode = padding_mode
        bound = 1.0 / math.sqrt(in_channels // groups * kernel[0] * kernel[1])
        self.weight = Parameter(_uniform((out_channels, in_channels // groups, *kernel), bound))
        self.bias = Parameter(_uniform((out_channels,), bound)) if bias else None

    def forward(self, x):
        padding = self.padding
        if self.padding_mode == "reflect":
            pads = F.conv_padding(padding, self.kernel_size, self.dilation, self.stride)
            x = F.pad(x, (pads[2], pads[3], pads[0], pads[1]), mode="reflect")
            padding = 0
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        s += f", stride={self.stride}" if self.stride != (1, 1) else ""
        s += f", padding={self.padding}" if self.padding not in ((0, 0), "valid") else ""
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        return s + (", bias=False" if self.bias is None else "")


class Linear(Module):
    """``y = x W^T + b`` on [N, in_features]; weights start as torch's (U(+-1/sqrt(fan_in)))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        _check_positive("Linear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound))
        self.bias = Parameter(_uniform((out_features,), bound)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _BatchNorm(Module):
    """Inference-form batch norm with running statistics, as torch's ``_BatchNorm``."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        _check_positive(type(self).__name__, num_features=num_features)
        if not eps > 0:
            raise ValueError(f"{type(self).__name__} eps must be positive, but got eps={eps}")
        if momentum is None or not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"{type(self).__name__} momentum must be in [0, 1] (the cumulative "
                f"average of momentum=None is not supported), but got {momentum}"
            )
        if not track_running_stats:
            raise ValueError(
                f"{type(self).__name__}(track_running_stats=False) normalises with "
                "batch statistics at inference, which ConvForge does not support"
            )
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        if affine:
            self.weight = Parameter(np.ones(num_features, np.float32))
            self.bias = Parameter(np.zeros(num_features, np.float32))
        else:
            self.weight = self.bias = None
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x):
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            eps=self.eps,
            momentum=self.momentum,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2d(_BatchNorm):
    pass


class BatchNorm1d(_BatchNorm):
    pass


class LayerNorm2d(Module):
    """LayerNorm over the channels of each pixel of NCHW input (ConvNeXt's channels_first LN);
    torch.nn lacks it. Parameters ``weight`` and ``bias`` of shape [C]."""

    def __init__(self, num_channels: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        _check_positive("LayerNorm2d", num_channels=num_channels)
        self.num_channels, self.eps = num_channels, eps
        self.weight = Parameter(np.ones(num_channels, np.float32)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(num_channels, np.float32)) if elementwise_affine else None

    def forward(self, x):
        return F.layer_norm2d(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


class LocalResponseNorm(Module):
    """torch.nn.LocalResponseNorm: each value divided by ``(k + alpha / size * sum of squares
    over size neighbouring channels) ** beta`` (AlexNet's LRN, Krizhevsky et al. 2012)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        _check_positive("LocalResponseNorm", size=size)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


# **** Activations and parameter-free layers ****


class ReLU(Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()

    def forward(self, x):
        return F.relu(x)


class Hardtanh(Module):
    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> None:
        super().__init__()
        if not min_val < max_val:
            raise ValueError(f"Hardtanh needs min_val < max_val, got {min_val}, {max_val}")
        self.min_val, self.max_val = float(min_val), float(max_val)

    def forward(self, x):
        return F.hardtanh(x, self.min_val, self.max_val)


class ReLU6(Hardtanh):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__(0.0, 6.0)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class GELU(Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', but got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)


class Softmax(Module):
    """Softmax along ``dim``; ``dim=None`` picks torch's legacy axis (0 for 1-D and 3-D
    inputs, else 1)."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x):
        dim = self.dim if self.dim is not None else (0 if x.dim() in (0, 1, 3) else 1)
        return F.softmax(x, dim)


class Dropout(Module):
    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout probability must be between 0 and 1, but got p={p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class StochasticDepth(Module):
    """torchvision.ops.StochasticDepth: drops whole residual branches per sample in training."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0 or mode != "row":
            raise ValueError(f"StochasticDepth needs 0 <= p <= 1 and mode='row', got {p}, {mode}")
        self.p, self.mode = p, mode

    def forward(self, x):
        return F.stochastic_depth(x, self.p, self.mode)


class MaxPool2d(Module):
    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        dilation=1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        if return_indices:
            raise ValueError("MaxPool2d(return_indices=True) is not supported")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x):
        return F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__()
        if divisor_override is not None:
            raise ValueError("AvgPool2d(divisor_override=...) is not supported")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        return F.avg_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(AdaptiveAvgPool2d):
    def __init__(self, output_size, return_indices: bool = False) -> None:
        super().__init__(output_size)
        if return_indices:
            raise ValueError("AdaptiveMaxPool2d(return_indices=True) is not supported")

    def forward(self, x):
        return F.adaptive_max_pool2d(x, self.output_size)


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)


class ChannelShuffle(Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        _check_positive("ChannelShuffle", groups=groups)
        self.groups = groups

    def forward(self, x):
        return F.channel_shuffle(x, self.groups)


class ZeroPad2d(Module):
    """Pads (left, right, top, bottom) with zeros; an int pads all four sides."""

    mode = "constant"

    def __init__(self, padding: int | Sequence[int]) -> None:
        super().__init__()
        self.padding = (padding,) * 4 if isinstance(padding, int) else tuple(padding)

    def forward(self, x):
        return F.pad(x, self.padding, self.mode)


class ReflectionPad2d(ZeroPad2d):
    mode = "reflect"


__all__ = [
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "ChannelShuffle",
    "Conv2d",
    "Dropout",
    "Flatten",
    "GELU",
    "Hardtanh",
    "Identity",
    "LayerNorm2d",
    "LeakyReLU",
    "Linear",
    "LocalResponseNorm",
    "MaxPool2d",
    "Module",
    "ModuleList",
    "Parameter",
    "ReLU",
    "ReLU6",
    "ReflectionPad2d",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "StochasticDepth",
    "Tanh",
    "Tensor",
    "ZeroPad2d",
    "kaiming_normal_",
    "manual_seed",
    "trunc_normal_",
]
