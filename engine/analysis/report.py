"""``convforge report``: one self-contained HTML page about a model (and a trained run of it).

Always: the summary table (``graph.analysis``: per-layer shapes, parameters, MACs, receptive
fields, and the totals), the memory plans (numbers and the picture of the training plan) and
the graph listing of the inference plan. With a checkpoint: the training curves recorded in it,
a loss landscape and the shift-invariance consistency on a subset of its test data.

Pictures are PNGs inlined as ``data:`` URIs and the style sheet is inline, so the file opens
anywhere by itself; the page has no script.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from engine.analysis import plots
from engine.analysis.consistency import consistency
from engine.analysis.landscape import landscape
from engine.analysis.run import TrainedRun
from engine.compiler import memory_plans
from graph.analysis import analyze
from graph.memory import plan_report
from graph.nn import Module
from graph.trace import trace

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #36c; } h2 { margin-top: 2em; color: #36c; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; } td.n { text-align: right; }
th { background: #eef; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def build_report(
    name: str,
    model: Module,
    input_shape: Sequence[int],
    run: TrainedRun | None = None,
    grid: int = 7,
    span: float = 1.0,
    progress: bool = False,
) -> str:
    """The page as a string; ``run`` (a loaded checkpoint with test data) adds its sections."""
    forward = trace(model, input_shape, batch=1)
    sections = [
        _summary_section(name, forward),
        _memory_section(model, input_shape),
    ]
    if run is not None:
        sections += _run_sections(run, grid, span, progress)
    listing = run.exe.graph if run is not None else _inference_listing(model, input_shape)
    sections.append(_section("Graph (inference plan)", f"<pre>{html.escape(str(listing))}</pre>"))
    title = f"ConvForge report: {name}"
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>"


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>\n" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def _cell(value: object) -> str:
    if isinstance(value, int):
        return f"<td class='n'>{value:,}</td>"
    if isinstance(value, float):
        return f"<td class='n'>{value:.4g}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _summary_section(name: str, forward) -> str:
    result = analyze(forward, name)
    totals = _table(
        ("input", "parameters", "MACs per image", "activation bytes", "parameter bytes"),
        [
            (
                "x".join(map(str, result.input_shape)),
                result.params,
                result.macs,
                result.activation_bytes,
                result.param_bytes,
            )
        ],
    )
    rows = [
        (
            layer.name,
            layer.op,
            "x".join(map(str, layer.output_shape)),
            layer.params,
            layer.macs,
            f"{layer.field[0].size}x{layer.field[1].size}" if layer.field else "-",
        )
        for layer in result.layers
    ]
    layers = _table(("layer", "op", "output", "params", "MACs", "receptive field"), rows)
    return _section("Summary", totals + "<h3>Layers</h3>" + layers)


def _memory_section(model: Module, input_shape: Sequence[int]) -> str:
    plans = memory_plans(model, input_shape, batch=1, train=True)
    keys = ("naive_bytes", "arena_bytes", "lower_bound_bytes", "peak_step")
    reports = {kind: plan_report(plan) for kind, plan in plans.items()}
    rows = [(kind, *(report[k] for k in keys)) for kind, report in reports.items()]
    table = _table(("plan (batch 1)", *keys), rows)
    picture = plots.png(plots.memory_plan_figure(plans["training"], "training plan, batch 1"))
    return _section("Memory plan", table + _image(picture, "memory plan"))


def _run_sections(run: TrainedRun, grid: int, span: float, progress: bool) -> list[str]:
    sections = []
    history = run.meta.get("history") or []
    if history:
        picture = plots.png(plots.curves_figure(history, f"{run.model}: {run.checkpoint}"))
        sections.append(_section("Training curves", _image(picture, "training curves")))
    else:
        sections.append(_section("Training curves", "<p>The checkpoint records no epochs.</p>"))
    result = landscape(run.exe, run.test, run.norm, grid, span, dims=2, progress=progress)
    picture = plots.png(
        plots.landscape_figure(result.alphas, result.betas, result.loss, result.accuracy, run.model)
    )
    note = (
        f"<p>{grid}x{grid} grid over [-{span}, {span}]^2 along two filter-normalised random "
        f"directions; loss over {len(run.test)} test images.</p>"
    )
    sections.append(_section("Loss landscape", note + _image(picture, "loss landscape")))
    shift = consistency(run.exe, run.test, run.norm)
    table = _table(
        ("consistency", "accuracy", "pad (pixels)", "images"),
        [(shift.consistency, shift.accuracy, shift.pad, shift.pairs)],
    )
    picture = plots.png(
        plots.consistency_figure(shift.shifts, shift.shift_accuracy, "accuracy vs diagonal shift")
    )
    sections.append(_section("Shift-invariance", table + _image(picture, "shift curve")))
    return sections


def _inference_listing(model: Module, input_shape: Sequence[int]) -> str:
    """The inference plan's graph without compiling kernels: traced, then the passes."""
    from backends import get_backend
    from graph.passes.inference import optimize_for_inference

    forward = trace(model, input_shape, batch=1)
    return str(optimize_for_inference(forward, get_backend("cpu").supported_ops))
