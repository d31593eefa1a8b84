"""The ``convforge`` subcommands that look inside a model (``engine.analysis``):

- ``landscape [MODEL] --checkpoint C [--data D] --out landscape.png``: the loss landscape
  (Li et al. 2018) around the trained weights, or along the line to ``--interpolate C2``; the
  grid goes to a CSV beside the picture (``--csv`` to name it).
- ``consistency [MODEL] --checkpoint C [--data D] [--json] [--plot curve.png]``: shift-
  invariance consistency (Zhang 2019), accuracy and the accuracy-versus-diagonal-shift curve.
- ``features [MODEL] --checkpoint C --image IMG --out DIR``: the first layer's filters and each
  layer's feature maps for one image, one PNG each.
- ``plot curves.csv --out curves.png``: the curves of ``convforge train --log curves.csv``.
- ``report [MODEL] [--checkpoint C [--data D]] --out report.html``: one self-contained page.

``convforge memory MODEL --plot plan.png`` draws the memory plan (``plot_memory``). MODEL, where
optional, defaults to the checkpoint's and must agree with it when given.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

import zoo
from engine.analysis import plots
from engine.cli_training import UsageError
from graph.memory import MemoryPlan


def landscape_command(args: argparse.Namespace) -> int:
    from engine.analysis.landscape import interpolate, landscape, write_landscape_csv
    from engine.analysis.run import load_run
    from engine.checkpoint import load_checkpoint

    _check_output(args.out, "--out")
    csv_path = args.csv or str(Path(args.out).with_suffix(".csv"))
    _check_output(csv_path, "--csv")
    run = load_run(args.checkpoint, args.model, args.data, samples=args.samples)
    progress = not args.no_progress
    if args.interpolate:
        start = load_checkpoint(args.checkpoint)[0]
        end = load_run(args.interpolate, run.model, with_data=False)  # checks it fits
        result = interpolate(
            run.exe, run.test, run.norm, start, end.exe.params, args.grid, progress=progress
        )
        title, xlabel = f"{run.model}: {args.checkpoint} -> {args.interpolate}", "t"
    else:
        result = landscape(
            run.exe, run.test, run.norm, args.grid, args.span, args.dims, args.seed, progress
        )
        title, xlabel = f"{run.model}: {args.checkpoint}", "alpha"
    write_landscape_csv(result, csv_path)
    figure = plots.landscape_figure(
        result.alphas, result.betas, result.loss, result.accuracy, title, xlabel
    )
    plots.save_png(figure, args.out)
    center = np.unravel_index(np.argmin(result.loss), result.loss.shape)
    print(
        f"{result.loss.size} points on {len(run.test)} images; lowest loss "
        f"{result.loss.min():.4f} at grid index {tuple(int(i) for i in center)}; wrote "
        f"{args.out} and {csv_path}"
    )
    return 0


def consistency_command(args: argparse.Namespace) -> int:
    from engine.analysis.consistency import consistency
    from engine.analysis.run import load_run

    if args.plot:
        _check_output(args.plot, "--plot")
    run = load_run(args.checkpoint, args.model, args.data, samples=args.samples)
    result = consistency(run.exe, run.test, run.norm, args.pad, args.seed)
    if args.plot:
        title = f"{run.model}: accuracy vs diagonal shift"
        plots.save_png(
            plots.consistency_figure(result.shifts, result.shift_accuracy, title), args.plot
        )
    if args.json:
        print(json.dumps({"model": run.model, "checkpoint": args.checkpoint, **result.as_dict()}))
        return 0
    print(
        f"{run.model} on {len(run.test)} images, shifts up to {result.pad} px: "
        f"consistency {100 * result.consistency:.2f}%, accuracy {100 * result.accuracy:.2f}%"
    )
    curve = ", ".join(
        f"{s:+d}: {100 * a:.1f}%" for s, a in zip(result.shifts, result.shift_accuracy, strict=True)
    )
    print(f"accuracy by diagonal shift: {curve}")
    return 0


def features_command(args: argparse.Namespace) -> int:
    from engine.analysis.features import activation_layers, activations, first_filters
    from engine.analysis.run import load_run
    from engine.cli_predict import _read_image

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} is a file; name a folder for the PNGs")
    run = load_run(args.checkpoint, args.model, with_data=False)
    image = run.norm(_read_image(args.image, run.exe.input_shape[1:])[None])[0]
    names = activation_layers(run.exe, args.layers.split(",") if args.layers else None)
    maps = activations(run.exe, image, names)
    out.mkdir(parents=True, exist_ok=True)
    conv, filters, rgb = first_filters(run.exe)
    written = [out / "filters.png"]
    plots.save_png(plots.image_grid_figure(filters, f"{conv}: filters", rgb), written[0])
    for index, (name, channels) in enumerate(maps.items(), start=1):
        path = out / f"{index:02d}_{_file_name(name)}.png"
        title = f"{name}: {len(channels)} channels, {channels.shape[1]}x{channels.shape[2]}"
        plots.save_png(plots.image_grid_figure(channels, title), path)
        written.append(path)
    print(f"wrote {len(written)} pictures to {out}: " + ", ".join(p.name for p in written))
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from engine.analysis.curves import read_curves

    _check_output(args.out, "--out")
    if not Path(args.curves).is_file():
        raise UsageError(f"{args.curves} does not exist")
    rows = read_curves(args.curves)
    plots.save_png(plots.curves_figure(rows, args.curves), args.out)
    print(f"{len(rows)} epochs from {args.curves}; wrote {args.out}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from engine.analysis.report import build_report
    from engine.analysis.run import load_run
    from engine.checkpoint import write_atomically

    _check_output(args.out, "--out")
    if args.data and not args.checkpoint:
        raise UsageError("--data applies with --checkpoint (the run's test data)")
    run = None
    if args.checkpoint:
        run = load_run(args.checkpoint, args.model, args.data, samples=args.samples)
        name, meta = run.model, run.meta
        model, shape = zoo.get(name, **meta["model_args"]), tuple(meta["input_shape"])
    elif args.model is None:
        raise UsageError("which model? e.g. convforge report lenet5 --out report.html")
    else:
        name, model, shape = args.model, zoo.get(args.model), zoo.spec(args.model).input_shape
    page = build_report(name, model, shape, run, args.grid, progress=not args.no_progress)
    write_atomically(Path(args.out), page.encode())
    print(f"wrote {args.out} ({len(page) / 1024:.0f} KiB)")
    return 0


def plot_memory(plan: MemoryPlan, path: str, title: str) -> None:
    """``convforge memory --plot``: the plan's picture (``plots.memory_plan_figure``)."""
    _check_output(path, "--plot")
    plots.save_png(plots.memory_plan_figure(plan, title), path)


def _check_output(path: str, flag: str) -> None:
    """Refuse an output whose folder is missing before any work."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {path} is a directory; name a file")
    if not target.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {target.parent} does not exist")


def _file_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value)


# **** Registration (engine.cli.parser calls add_commands) ****


def add_commands(commands) -> None:
    from engine.cli import _Help, _number, _positive, _zoo_model

    def common(p, data: bool = True) -> None:
        p.add_argument(
            "model", nargs="?", type=_zoo_model, help="zoo model (default: the checkpoint's)"
        )
        p.add_argument("--checkpoint", required=True, help="a checkpoint of convforge train")
        if data:
            p.add_argument("--data", help="data as convforge train takes it (default: the run's)")
            p.add_argument(
                "--samples", type=_positive, default=256, help="test images used (the first N)"
            )
        p.add_argument("--seed", type=int, default=0, help="seed of the random draws")

    p = commands.add_parser(
        "landscape", help="loss landscape around a checkpoint", formatter_class=_Help
    )
    common(p)
    p.add_argument("--grid", type=_number(int, 2), default=21, help="points per axis")
    p.add_argument(
        "--span", type=_number(float, 0.0, False), default=1.0, help="grid covers [-span, span]"
    )
    p.add_argument("--dims", type=int, choices=(1, 2), default=2, help="random directions")
    p.add_argument(
        "--interpolate",
        metavar="C2",
        help="instead: the line from C to checkpoint C2 (t in [-0.5, 1.5])",
    )
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--csv", help="the grid as CSV (default: --out with .csv)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=landscape_command)

    p = commands.add_parser(
        "consistency", help="shift-invariance consistency", formatter_class=_Help
    )
    common(p)
    p.add_argument("--pad", type=_positive, help="largest shift in pixels (default: H/8)")
    p.add_argument("--plot", help="PNG of accuracy against diagonal shift")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=consistency_command)

    p = commands.add_parser(
        "features", help="first-layer filters and feature maps as PNGs", formatter_class=_Help
    )
    common(p, data=False)
    p.add_argument("--image", required=True, help="the input image")
    p.add_argument("--layers", help="comma-separated value names (default: every activation)")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.set_defaults(func=features_command)

    p = commands.add_parser("plot", help="plot the curves of train --log", formatter_class=_Help)
    p.add_argument("curves", help="a CSV written by convforge train --log")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.set_defaults(func=plot_command)

    p = commands.add_parser(
        "report", help="one HTML page about a model or a run", formatter_class=_Help
    )
    p.add_argument(
        "model", nargs="?", type=_zoo_model, help="zoo model (default: the checkpoint's)"
    )
    p.add_argument(
        "--checkpoint", help="a checkpoint of convforge train: adds curves, landscape, consistency"
    )
    p.add_argument("--data", help="test data for the checkpoint (default: the run's)")
    p.add_argument("--samples", type=_positive, default=128, help="test images used")
    p.add_argument("--grid", type=_number(int, 2), default=7, help="landscape points per axis")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=report_command)
