"""Per-layer summary of a traced graph: output shape, parameters, MACs, activation bytes and
receptive field, with totals; what ``torchinfo.summary`` prints, plus the receptive field.

One row per forward node (its ``name`` is the layer path). Parameters are the ``param``-role
inputs a node reads, each counted once, at its first use, so a shared weight is not counted
twice and the total equals ``Module.num_parameters()`` when every parameter is used. MACs come
from each op's own rule (``OpDef.count_macs``): conv2d, linear and tensor products count, while
batch_norm and layer_norm count none, as in torchvision's published figures (weight layers only).
Activation bytes are the bytes of each node's outputs, batch included.

Receptive field (Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks",
Distill 2019; Dang Ha The Hien, "A guide to receptive field arithmetic"), per spatial axis of
the network's input. A sliding window with kernel ``k``, stride ``s``, low-side padding ``p`` and
dilation ``d`` (effective kernel ``k_eff = d*(k-1) + 1``) maps the field of its input to:

    jump_out  = jump_in * s
    size_out  = size_in + (k_eff - 1) * jump_in
    start_out = start_in + ((k_eff - 1) / 2 - p) * jump_in

conv2d and max/avg pooling are windows; ``pad`` is a window of kernel 1 that moves ``start`` by
the padding; a ``slice`` along H or W is one that moves it by the crop. Ops that keep the spatial
grid (activations, norms, dropout, channel shuffle, and ops joining several inputs: add, mul,
concat) keep the field. A join reports the largest of its inputs' fields: concat's channels
each keep their own branch's field and add/mul units see the union of their inputs' fields, so
the largest is what the layer's units can see at most, which is the question a receptive field
answers (Araujo et al. do the same for multi-path networks). Any other op that moves the
spatial grid (global and adaptive pooling, flatten, linear) mixes every position, so its field
is the whole input, reported as the input's size; adaptive pooling whose output grid equals its
input grid is the identity (VGG's 7x7 pool at 224) and keeps the field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from graph.ir import Graph, Node
from graph.ops import get_op

# **** Receptive field ****


@dataclass(frozen=True)
class AxisField:
    """The receptive field of a layer's units along one spatial axis, in input pixels.

    ``size``: how many input pixels one unit sees; ``jump``: the distance in input pixels
    between two adjacent units (the product of the strides so far); ``start``: the centre of the
    first unit's field as an input pixel index (0.0 is the centre of the first pixel, so a field
    reaching into the padding starts below 0; add 0.5 for the guide's convention, which centres
    pixels at 0.5). ``whole``: every unit sees the entire input (after global pooling, flatten
    or linear); size and jump are then the input's extent and start its centre, and later
    windows leave the field unchanged.
    """

    size: int
    jump: int
    start: float
    whole: bool = False

    def window(self, kernel: int, stride: int, pad_lo: int, dilation: int) -> AxisField:
        """The field after a sliding window: the recurrence of Araujo et al."""
        if self.whole:
            return self
        k_eff = dilation * (kernel - 1) + 1
        return AxisField(
            size=self.size + (k_eff - 1) * self.jump,
            jump=self.jump * stride,
            start=self.start + ((k_eff - 1) / 2 - pad_lo) * self.jump,
        )


ReceptiveField = tuple[AxisField, AxisField]  # (height, width)

# A window along one axis: (kernel, stride, low-side padding, dilation).
_Window = tuple[int, int, int, int]


def _windows(node: Node) -> tuple[_Window, _Window] | None:
    """The (height, width) windows of a sliding-window op; None for every other op."""
    attrs = node.attrs
    if node.op == "conv2d":
        top, _, left, _ = attrs["padding"]
        kernel = node.inputs[1].shape[2:]
        return tuple(zip(kernel, attrs["stride"], (top, left), attrs["dilation"], strict=True))
    if node.op in ("max_pool2d", "avg_pool2d"):
        dilation = attrs.get("dilation", (1, 1))
        return tuple(zip(attrs["kernel"], attrs["stride"], attrs["padding"], dilation, strict=True))
    if node.op == "pad":
        left, _, top, _ = attrs["pads"]
        return (1, 1, top, 1), (1, 1, left, 1)
    if node.op == "slice" and attrs["dim"] in (2, 3):
        crop = (1, 1, -attrs["start"], 1)  # a crop moves the first unit by ``start`` pixels
        return (crop, (1, 1, 0, 1)) if attrs["dim"] == 2 else ((1, 1, 0, 1), crop)
    return None


def _largest(fields: list[AxisField]) -> AxisField:
    """A whole-input field beats any other, even one whose theoretical size exceeds it."""
    return max(fields, key=lambda f: (f.whole, f.size))


def _node_field(
    node: Node, fields: dict[str, ReceptiveField], whole: ReceptiveField
) -> ReceptiveField | None:
    """The field of ``node``'s outputs from its inputs' fields; None if it reads no pixels."""
    inputs = [fields[v.name] for v in node.inputs if v.name in fields]
    if not inputs:
        return None
    joined = (_largest([f[0] for f in inputs]), _largest([f[1] for f in inputs]))
    windows = _windows(node)
    if windows is not None:
        return (joined[0].window(*windows[0]), joined[1].window(*windows[1]))
    grid = node.outputs[0].shape[2:]
    if len(node.outputs[0].shape) == 4 and all(
        len(v.shape) == 4 and v.shape[2:] == grid for v in node.inputs if v.name in fields
    ):
        return joined
    return whole


# **** Summary ****


@dataclass(frozen=True)
class LayerSummary:
    """One node's row. ``field`` is None for a node that reads no input pixels."""

    name: str
    op: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    activation_bytes: int
    field: ReceptiveField | None


@dataclass(frozen=True)
class Summary:
    """A model's rows and totals. ``input_shape`` is (C, H, W); every figure is for ``batch``
    images at once, as traced (MACs and activation bytes grow with the batch, params do not)."""

    model: str
    input_shape: tuple[int, int, int]
    batch: int
    dtype: str
    layers: list[LayerSummary]
    params: int
    macs: int
    activation_bytes: int
    param_bytes: int


def analyze(graph: Graph, model: str = "graph") -> Summary:
    """Summarise the forward nodes of ``graph`` (a training graph's backward part is skipped).

    Args:
        graph: a traced graph (``graph.trace.trace``) whose first input is the [N, C, H, W]
            image batch.
        model: the name printed in the table's title and the JSON's ``model`` key.
    """
    image = graph.inputs[0]
    n, c, h, w = image.shape
    whole = (AxisField(h, h, (h - 1) / 2, whole=True), AxisField(w, w, (w - 1) / 2, whole=True))
    fields: dict[str, ReceptiveField] = {image.name: (AxisField(1, 1, 0.0), AxisField(1, 1, 0.0))}
    counted: set[str] = set()
    layers, param_bytes = [], 0
    for node in graph.nodes[: graph.backward_start]:
        if not node.outputs:
            continue
        new_params = [v for v in node.inputs if v.role == "param" and v.name not in counted]
        counted.update(v.name for v in new_params)
        param_bytes += sum(v.type.nbytes for v in new_params)
        field = _node_field(node, fields, whole)
        if field is not None:
            fields.update((v.name, field) for v in node.outputs)
        in_types, out_types = [v.type for v in node.inputs], [v.type for v in node.outputs]
        layers.append(
            LayerSummary(
                name=node.name,
                op=node.op,
                output_shape=node.outputs[0].shape,
                params=sum(v.type.numel for v in new_params),
                macs=get_op(node.op).count_macs(in_types, out_types, node.attrs),
                activation_bytes=sum(t.nbytes for t in out_types),
                field=field,
            )
        )
    return Summary(
        model=model,
        input_shape=(c, h, w),
        batch=n,
        dtype=image.type.dtype,
        layers=layers,
        params=sum(row.params for row in layers),
        macs=sum(row.macs for row in layers),
        activation_bytes=sum(row.activation_bytes for row in layers),
        param_bytes=param_bytes,
    )


# **** Output ****


def summary_dict(result: Summary) -> dict:
    """The summary as JSON-ready plain types; each layer's ``receptive_field`` holds
    ``size``, ``jump`` and ``start`` as [height, width] lists and ``whole``, or is None."""
    out = asdict(result)
    out["input_shape"] = list(result.input_shape)
    for row, layer in zip(out["layers"], result.layers, strict=True):
        row["output_shape"] = list(layer.output_shape)
        row.pop("field")
        row["receptive_field"] = _field_dict(layer.field)
    return out


def _field_dict(field: ReceptiveField | None) -> dict | None:
    if field is None:
        return None
    return {
        "size": [a.size for a in field],
        "jump": [a.jump for a in field],
        "start": [a.start for a in field],
        "whole": field[0].whole and field[1].whole,
    }


def _pair(a: object, b: object) -> str:
    return f"{a}x{b}"


def _row(layer: LayerSummary) -> tuple[str, ...]:
    f = layer.field
    return (
        layer.name,
        layer.op,
        str(list(layer.output_shape)),
        f"{layer.params:,}",
        f"{layer.macs:,}",
        _pair(f[0].size, f[1].size) if f else "-",
        _pair(f[0].jump, f[1].jump) if f else "-",
        f"{f[0].start:g},{f[1].start:g}" if f else "-",
    )


def text_table(rows: list[tuple[str, ...]], left: int) -> str:
    """Rows as aligned columns, two spaces apart: the first ``left`` columns flush left (names),
    the others flush right (numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


def _scaled(value: int, units: tuple[str, ...], base: int) -> str:
    """``value`` in the largest unit that keeps it at least 1 (1.81 G, 44.59 MiB)."""
    if abs(value) < base:
        return f"{value} {units[0]}".rstrip()
    scaled, unit = float(value), units[0]
    for unit in units:
        if abs(scaled) < base or unit == units[-1]:
            break
        scaled /= base
    return f"{scaled:.2f} {unit}".rstrip()


def summary_table(result: Summary) -> str:
    """An aligned text table, one row per layer, then the totals.

    RF is the receptive field size (height x width, input pixels), jump the distance between
    adjacent units and start the centre of the first unit's field (see ``AxisField``).
    """
    header = ("layer", "op", "output", "params", "MACs", "RF", "jump", "start")
    lines = text_table([header, *map(_row, result.layers)], left=3).split("\n")
    rule = "-" * len(lines[0])
    shape = "x".join(map(str, result.input_shape))
    byte_units, count_units = ("B", "KiB", "MiB", "GiB"), ("", "K", "M", "G", "T")
    totals = [
        f"Total params: {result.params:,} ({_scaled(result.params, count_units, 1000)})",
        f"Total MACs: {result.macs:,} ({_scaled(result.macs, count_units, 1000)})",
        f"Activation bytes: {result.activation_bytes:,} "
        f"({_scaled(result.activation_bytes, byte_units, 1024)})",
        f"Params bytes: {result.param_bytes:,} ({_scaled(result.param_bytes, byte_units, 1024)})",
    ]
    title = f"{result.model}: input {result.batch}x{shape} {result.dtype}"
    return "\n".join([title, rule, lines[0], rule, *lines[1:], rule, *totals])
