"""Functional ops on traced tensors, with ``torch.nn.functional``'s names, argument order and
defaults. Each call normalises its arguments to the op's tuple attributes and emits one node.

Use these inside a Module's ``forward`` where torch code would call ``F.*``, ``torch.cat``,
``torch.flatten`` or ``+``: ``graph.functional.cat([a, b], dim=1)``, ``F.add(x, identity)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from graph.trace import Tensor, active_tracer

IntOrPair = int | Sequence[int]


def pair(value: IntOrPair, name: str = "value") -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(1, 3) -> (1, 3)``, as torch's ``_pair``."""
    if isinstance(value, int):
        return (value, value)
    items = tuple(value) if isinstance(value, Sequence) else ()
    if len(items) != 2 or not all(isinstance(v, int) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, but got {name}={value!r}")
    return items


def _emit(op: str, inputs: Sequence[object], **attrs: object) -> Tensor:
    """Emit through the tracer of the first traced input (or the active one: an op may read
    parameters only, such as reshaping a weight)."""
    tensor = next((x for x in inputs if isinstance(x, Tensor)), None)
    tracer = tensor.tracer if tensor is not None else active_tracer()
    if tracer is None:
        raise RuntimeError(f"graph.functional.{op} runs only while tracing a model")
    return tracer.emit(op, inputs, attrs)


def _axis(dim: int, rank: int, what: str = "dim") -> int:
    if not -rank <= dim < rank:
        raise ValueError(f"{what} must be in [{-rank}, {rank}), but got {what}={dim}")
    return dim % rank


def conv_padding(
    padding: IntOrPair | str, kernel: tuple[int, int], dilation: tuple[int, int], stride
) -> tuple[int, int, int, int]:
    """Resolve ints, pairs, "valid" and "same" to (top, bottom, left, right), as PyTorch does
    (for "same" with an even dilated kernel the extra row/column goes after)."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if pair(stride) != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, but got stride={stride}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=False)]
        return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    if isinstance(padding, str):
        raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
    ph, pw = pair(padding, "padding")
    return (ph, ph, pw, pw)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    dilation = pair(dilation, "dilation")
    pads = conv_padding(padding, tuple(weight.shape[2:]), dilation, stride)
    inputs = [input, weight] + ([bias] if bias is not None else [])
    return _emit(
        "conv2d",
        inputs,
        stride=pair(stride, "stride"),
        padding=pads,
        dilation=dilation,
        groups=groups,
    )


def linear(input, weight, bias=None) -> Tensor:
    return _emit("linear", [input, weight] + ([bias] if bias is not None else []))


def relu(input, inplace: bool = False) -> Tensor:
    return _emit("relu", [input])


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    return _emit("leaky_relu", [input], negative_slope=float(negative_slope))


def sigmoid(input) -> Tensor:
    return _emit("sigmoid", [input])


def tanh(input) -> Tensor:
    return _emit("tanh", [input])


def gelu(input, approximate: str = "none") -> Tensor:
    return _emit("gelu", [input], approximate=approximate)


def dropout(input, p: float = 0.5, training: bool = False, inplace: bool = False) -> Tensor:
    """Recorded as a node (training graphs need it); the identity at inference."""
    return _emit("dropout", [input], p=float(p))


def stochastic_depth(input, p: float, mode: str = "row") -> Tensor:
    """Drop path (Huang et al. 2016), as ``torchvision.ops.stochastic_depth`` in "row" mode:
    in training each sample is zeroed with probability ``p`` and kept ones scaled by 1/(1-p);
    the identity at inference."""
    if mode != "row":
        raise ValueError(f"stochastic_depth supports mode='row' only, but got mode={mode!r}")
    return _emit("dropout", [input], p=float(p), per_sample=True)


def hardtanh(input, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Tensor:
    return _emit("hardtanh", [input], min_val=float(min_val), max_val=float(max_val))


def relu6(input, inplace: bool = False) -> Tensor:
    """min(max(x, 0), 6) (MobileNet v2), as ``F.relu6``: a hardtanh(0, 6)."""
    return hardtanh(input, 0.0, 6.0)


def add(input, other) -> Tensor:
    return _emit("add", [input, other])


def sub(input, other) -> Tensor:
    return _emit("sub", [input, other])


def neg(input) -> Tensor:
    return _emit("neg", [input])


def scale(input, factor: float) -> Tensor:
    """``input * factor`` for a constant factor."""
    return _emit("scale", [input], factor=float(factor))


def channel_scale(input, scale) -> Tensor:
    """``input * scale.view(1, C, 1, 1)``: a learned per-channel scale (ConvNeXt's layer
    scale), ``scale`` a [C] or [C, 1, 1] parameter."""
    return _emit("channel_scale", [input, scale])


def mul(input, other) -> Tensor:
    return _emit("mul", [input, other])


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> Tensor:
    kernel = pair(kernel_size, "kernel_size")
    return _emit(
        "max_pool2d",
        [input],
        kernel=kernel,
        stride=kernel if stride is None else pair(stride, "stride"),
        padding=pair(padding, "padding"),
        dilation=pair(dilation, "dilation"),
        ceil_mode=bool(ceil_mode),
    )


def avg_pool2d(
    input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True
) -> Tensor:
    kernel = pair(kernel_size, "kernel_size")
    return _emit(
        "avg_pool2d",
        [input],
        kernel=kernel,
        stride=kernel if stride is None else pair(stride, "stride"),
        padding=pair(padding, "padding"),
        ceil_mode=bool(ceil_mode),
        count_include_pad=bool(count_include_pad),
    )


def _output_size(input, output_size) -> tuple[int, int]:
    """torch allows None for "keep this axis"."""
    if isinstance(output_size, int):
        return (output_size, output_size)
    size = tuple(output_size)
    return tuple(input.shape[2 + i] if s is None else s for i, s in enumerate(size))


def adaptive_avg_pool2d(input, output_size) -> Tensor:
    """A (1, 1) output is recorded as global_avg_pool2d (one reduction, no windows)."""
    size = _output_size(input, output_size)
    if size == (1, 1):
        return _emit("global_avg_pool2d", [input])
    return _emit("adaptive_avg_pool2d", [input], output_size=size)


def adaptive_max_pool2d(input, output_size) -> Tensor:
    return _emit("adaptive_max_pool2d", [input], output_size=_output_size(input, output_size))


def batch_norm(
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
) -> Tensor:
    if (weight is None) != (bias is None):
        raise ValueError("batch_norm needs both weight and bias, or neither")
    affine = [weight, bias] if weight is not None else []
    return _emit(
        "batch_norm",
        [input, running_mean, running_var, *affine],
        eps=float(eps),
        momentum=float(momentum),
    )


def layer_norm2d(input, weight=None, bias=None, eps: float = 1e-6) -> Tensor:
    affine = [weight, bias] if weight is not None else []
    return _emit("layer_norm2d", [input, *affine], eps=float(eps))


def local_response_norm(
    input, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Tensor:
    """PyTorch's ``F.local_response_norm``: x / (k + alpha / size * sum of x^2 over ``size``
    neighbouring channels) ** beta, the window from ``size // 2`` channels before."""
    attrs = dict(size=int(size), alpha=float(alpha), beta=float(beta), k=float(k))
    return _emit("local_response_norm", [input], **attrs, before=int(size) // 2)


def softmax(input, dim: int) -> Tensor:
    return _emit("softmax", [input], dim=_axis(dim, input.dim()))


def flatten(input, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    rank = input.dim()
    return _emit(
        "flatten",
        [input],
        start_dim=_axis(start_dim, rank, "start_dim"),
        end_dim=_axis(end_dim, rank, "end_dim"),
    )


def reshape(input, *shape: int | Sequence[int]) -> Tensor:
    """``x.reshape(n, -1)`` or ``x.reshape((n, -1))``; one -1 is inferred."""
    dims = list(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else list(shape)
    if dims.count(-1) > 1:
        raise ValueError(f"reshape can infer only one -1, but got shape {dims}")
    if -1 in dims:
        known = 1
        for d in dims:
            known *= d if d != -1 else 1
        numel = 1
        for d in input.shape:
            numel *= d
        dims[dims.index(-1)] = numel // known if known and numel % known == 0 else 0
    return _emit("reshape", [input], shape=tuple(dims))


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat needs at least one tensor")
    return _emit("concat", tensors, dim=_axis(dim, tensors[0].dim()))


def split(tensor, split_size_or_sections: int | Sequence[int], dim: int = 0) -> list[Tensor]:
    """As ``torch.split``: equal chunks of ``split_size`` (the last may be smaller), or the given
    section sizes."""
    dim = _axis(dim, tensor.dim())
    size = tensor.shape[dim]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step < 1:
            raise ValueError(f"split size must be positive, but got {step}")
        sections = [min(step, size - start) for start in range(0, size, step)]
    else:
        sections = list(split_size_or_sections)
        if sum(sections) != size or min(sections) < 1:
            raise ValueError(f"split sections {sections} must be positive and sum to {size}")
    parts, start = [], 0
    for length in sections:
        parts.append(_emit("slice", [tensor], dim=dim, start=start, length=length))
        start += length
    return parts


def chunk(input, chunks: int, dim: int = 0) -> list[Tensor]:
    """As ``torch.chunk``: ``chunks`` pieces of ceil(size / chunks) (ShuffleNet's split)."""
    size = input.shape[_axis(dim, input.dim())]
    return split(input, -(-size // chunks), dim)


def transpose(input, dim0: int, dim1: int) -> Tensor:
    """As ``torch.transpose(input, dim0, dim1).contiguous()``."""
    a, b = sorted((_axis(dim0, input.dim()), _axis(dim1, input.dim())))
    return input if a == b else _emit("transpose", [input], dim0=a, dim1=b)


def squash(input, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """The capsule non-linearity along ``dim`` (see ``graph/ops/capsule.py``)."""
    return _emit("squash", [input], dim=_axis(dim, input.dim()), eps=float(eps))


def capsule_predict(input, weight) -> Tensor:
    """[N, I, Din] capsules and [I, J, Dout, Din] weights -> [N, I, J, Dout] predictions."""
    return _emit("capsule_predict", [input, weight])


def capsule_routing(predictions, iterations: int = 3, eps: float = 1e-8) -> Tensor:
    """Routing by agreement over [N, I, J, D] predictions -> [N, J, D] output capsules."""
    return _emit("capsule_routing", [predictions], iterations=int(iterations), eps=float(eps))


def capsule_length(input, eps: float = 1e-8) -> Tensor:
    """[N, J, D] capsules -> [N, J] lengths (the margin loss's class scores)."""
    return _emit("capsule_length", [input], eps=float(eps))


def channel_shuffle(input, groups: int) -> Tensor:
    return _emit("channel_shuffle", [input], groups=int(groups))


def pad(input, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> Tensor:
    """``F.pad`` on NCHW with ``pad=(left, right, top, bottom)`` (or ``(left, right)``)."""
    pads = tuple(pad) + (0, 0) * (len(tuple(pad)) == 2)
    if len(pads) != 4:
        raise ValueError(f"pad takes 2 or 4 sizes for the last two axes, but got pad={pad}")
    return _emit("pad", [input], pads=pads, mode=mode, value=float(value or 0.0))
