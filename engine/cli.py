"""The ``convforge`` command line.

- ``convforge demo``: train LeNet-5 on scikit-learn's digits for a few epochs; print the graph,
  accuracy, timings and memory.
- ``convforge train MODEL --data digits|fashion-mnist|PATH ...``: train a zoo model with a
  progress bar, validating every epoch; ``--checkpoint`` saves after each epoch and
  ``--resume`` continues a run exactly.
- ``convforge eval MODEL --checkpoint C --data ...``: top-1/top-5 of a checkpoint.
- ``convforge summary MODEL [--input CxHxW] [--json]``: per-layer output shapes, parameters,
  MACs, receptive fields and activation bytes, with totals (``graph/analysis.py``).
- ``convforge zoo``: every zoo model with its input shape, classes and parameter count.
- ``convforge memory MODEL [--input CxHxW] [--batch B] [--train] [--recompute sqrt|LAYERS]
  [--json]``: the memory plan.
- ``convforge warmup``: compile every CPU kernel variant into Numba's on-disk cache, so the
  first real compile in later processes loads in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import scipy.ndimage

import engine
import zoo
from engine.augment import Augment
from engine.data import Dataset, Normalize, load_dataset
from engine.optim import SGD, Adam, AdamW
from engine.schedules import SCHEDULES, make_schedule
from engine.train import evaluate, fit, load_training_checkpoint

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def _fit_to(data: Dataset, size: tuple[int, int]) -> Dataset:
    """Bilinearly resize images to the model's input size (8x8 digits for a 28x28 LeNet)."""
    h, w = data.x.shape[2:]
    if (h, w) == tuple(size):
        return data
    zoom = (1, 1, size[0] / h, size[1] / w)
    x = scipy.ndimage.zoom(data.x, zoom, order=1).astype(np.float32)
    return Dataset(x, data.y, data.classes)


def _prepare(args: argparse.Namespace):
    """Datasets sized for the model, the model, and the normalisation fitted on training data."""
    train, test = load_dataset(args.data, seed=args.seed)
    spec = zoo.spec(args.model)
    size = tuple(args.input[1:]) if args.input else spec.input_shape[1:]
    train, test = _fit_to(train, size), _fit_to(test, size)
    kwargs = {"num_classes": len(train.classes)}
    if train.x.shape[1] != spec.input_shape[0]:
        kwargs["in_channels"] = train.x.shape[1]
    model = zoo.get(args.model, **kwargs)
    return train, test, model, kwargs, Normalize.fit(train.x)


def _optimizer(args: argparse.Namespace):
    if args.optimizer == "sgd":
        return SGD(
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            nesterov=args.nesterov,
        )
    return OPTIMIZERS[args.optimizer](lr=args.lr, weight_decay=args.weight_decay)


def _augment(spec: str | None, seed: int) -> Augment | None:
    """``crop=4,flip,rotate=10,translate=0.1,scale=0.9:1.1,elastic=34:4,jitter=0.2:0.2:0.2``."""
    if not spec:
        return None
    options: dict[str, object] = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        numbers = [float(v) for v in value.split(":")] if value else []
        if key == "flip":
            options["flip"] = True
        elif key == "crop":
            options["crop"] = int(numbers[0])
        elif key in ("rotate", "translate"):
            options[key] = numbers[0]
        elif key in ("scale", "elastic", "jitter"):
            options[key] = tuple(numbers)
        else:
            raise ValueError(f"unknown augmentation {key!r} in --augment {spec!r}")
    return Augment(**options, seed=seed)


def _schedule(args: argparse.Namespace):
    options = {
        "step": {"step_size": max(1, args.epochs // 3)},
        "multistep": {"milestones": [args.epochs // 2, 3 * args.epochs // 4]},
        "exponential": {"gamma": 0.9},
        "cosine": {"T_max": args.epochs},
        "warmup-cosine": {"warmup_iters": 1, "T_max": max(1, args.epochs - 1)},
        "plateau": {"patience": 2},
        "none": {},
    }
    return make_schedule(args.schedule, args.lr, **options[args.schedule])


def train(args: argparse.Namespace) -> int:
    data, test, model, kwargs, norm = _prepare(args)
    validation = test
    shape = data.sample_shape
    start = time.perf_counter()
    exe = engine.compile(
        model,
        shape,
        batch=args.batch,
        dtype=args.dtype,
        train=True,
        optimizer=_optimizer(args),
        label_smoothing=args.label_smoothing,
    )
    schedule = _schedule(args)
    print(
        f"{args.model}: {model.num_parameters():,} parameters, compiled for "
        f"[{args.batch}, {', '.join(map(str, shape))}] in {time.perf_counter() - start:.2f} s; "
        f"{len(data)} training and {len(validation)} test images"
    )
    first_epoch = 0
    if args.resume:
        first_epoch = load_training_checkpoint(args.resume, exe, schedule)["next_epoch"]
        print(f"resumed from {args.resume} at epoch {first_epoch + 1}")
    metadata = {
        "model": args.model,
        "model_args": kwargs,
        "input_shape": list(shape),
        "data": args.data,
        "mean": norm.mean.tolist(),
        "std": norm.std.tolist(),
    }
    results = fit(
        exe,
        data,
        validation,
        args.epochs,
        schedule,
        preprocess=norm,
        seed=args.seed,
        start_epoch=first_epoch,
        checkpoint=args.checkpoint,
        metadata=metadata,
        progress=not args.no_progress,
    )
    if results:
        total = sum(r.seconds for r in results)
        print(
            f"trained {len(results)} epochs in {total:.1f} s; final test top-1 "
            f"{100 * results[-1].top1:.2f}%"
        )
    return 0


def evaluate_checkpoint(args: argparse.Namespace) -> int:
    data, test, model, _, norm = _prepare(args)
    exe = engine.compile(
        model, test.sample_shape, batch=args.batch, dtype=args.dtype, train=True, optimizer=SGD()
    )
    meta = load_training_checkpoint(args.checkpoint, exe)
    if "mean" in meta:
        norm = Normalize(np.array(meta["mean"], np.float32), np.array(meta["std"], np.float32))
    scores = evaluate(exe, test, norm)
    print(
        f"{args.model} on {args.data} ({len(test)} test images): loss {scores['loss']:.4f}, "
        f"top-1 {100 * scores['top1']:.2f}%, top-5 {100 * scores['top5']:.2f}%"
    )
    return 0


def demo(args: argparse.Namespace) -> int:
    """LeNet-5 on digits: the README's first command."""
    args = _parser().parse_args(
        [
            "train",
            "lenet5",
            "--data",
            "digits",
            "--epochs",
            str(args.epochs),
            "--batch",
            "32",
            "--lr",
            "0.05",
            "--schedule",
            "cosine",
            "--no-progress",
        ]
    )
    data, _, model, _, _ = _prepare(args)
    exe = engine.compile(model, data.sample_shape, batch=args.batch)
    print(exe.graph, end="\n\n")
    exe.graph.print_tabular()
    print()
    start = time.perf_counter()
    train(args)
    batch = np.zeros(exe.input_shape, np.float32)
    rows = exe.profile(batch, 200)
    per_batch = sum(r["us"] for r in rows)
    print(
        f"inference: {per_batch:.0f} us per batch of {args.batch} "
        f"({per_batch / args.batch:.2f} us per image); memory: parameters "
        f"{4 * model.num_parameters() / 1024:.0f} KiB, activation arena "
        f"{exe._inference.memory.arena_bytes / 1024:.0f} KiB; demo took "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


def warmup(args: argparse.Namespace) -> int:
    import backends.cpu  # noqa: F401  (registers the kernels)
    from backends.cpu.kernels import KERNELS

    start, count = time.perf_counter(), 0
    for kernel in KERNELS:
        for dtype in ("float32", "float64"):
            for parallel in (False, True):
                kernel.shim(dtype, parallel)
                count += 1
            for sources in kernel.aliased_variants():  # written in place
                kernel.shim(dtype, kernel.parallel_inplace, sources)
                count += 1
                if kernel.parallel_inplace:  # small steps run serially
                    kernel.shim(dtype, False, sources)
                    count += 1
    print(f"compiled {count} CPU kernel variants in {time.perf_counter() - start:.1f} s")
    return 0


def _input_shape(text: str) -> tuple[int, int, int]:
    """``CxHxW`` (``3x224x224``) as a tuple of three positive ints."""
    try:
        shape = tuple(int(v) for v in text.split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"input must be CxHxW, e.g. 3x224x224, but got {text!r}")
    return shape


def summary(args: argparse.Namespace) -> int:
    """Per-layer shapes, parameters, MACs and receptive fields; traces the model, no compile."""
    import json

    from graph.analysis import analyze, summary_dict, summary_table
    from graph.trace import trace

    spec = zoo.spec(args.model)
    shape = args.input or spec.input_shape
    kwargs = {"in_channels": shape[0]} if shape[0] != spec.input_shape[0] else {}
    try:
        graph = trace(zoo.get(args.model, **kwargs), shape, batch=args.batch)
    except ValueError as err:  # a layer that does not fit this input: the tracer's message
        raise SystemExit(f"convforge summary: {args.model} at input {shape}: {err}") from None
    result = analyze(graph, args.model)
    print(json.dumps(summary_dict(result)) if args.json else summary_table(result))
    return 0


def memory(args: argparse.Namespace) -> int:
    """The memory plan a compile would make (nothing is allocated): the report of
    ``Executable.memory_report`` as a table or as JSON."""
    import json

    from engine.compiler import memory_plans
    from graph.memory import plan_report

    if args.recompute and not args.train:
        raise SystemExit("convforge memory: --recompute applies to the training plan (--train)")
    spec = zoo.spec(args.model)
    shape = args.input or spec.input_shape
    model = zoo.get(args.model)
    kind = "training" if args.train else "inference"
    try:
        plan = memory_plans(model, shape, args.batch, train=args.train, recompute=args.recompute)
    except ValueError as err:
        raise SystemExit(f"convforge memory: {args.model} at input {shape}: {err}") from None
    trainable = 4 * model.num_parameters()
    tensors = [np.asarray(getattr(t, "data", t)) for _, t, _ in model.named_tensors()]
    persistent = 4 * sum(a.size for a in tensors if np.issubdtype(a.dtype, np.floating))
    report = {
        "model": args.model,
        "input_shape": list(shape),
        "batch": args.batch,
        "plan": kind,
        **plan_report(plan[kind]),
        "param_bytes": persistent,
        "grad_bytes": trainable if args.train else 0,
        "optimizer_bytes": trainable if args.train else 0,  # SGD momentum
    }
    if args.json:
        print(json.dumps(report))
        return 0
    for key, value in report.items():
        if key == "peak_layers":
            print(f"{'live at peak':>36}:")
            for layer in value:
                print(f"{layer['name']:>36}  {layer['bytes'] / 2**20:,.1f} MiB")
        elif key.endswith("_bytes"):
            print(f"{key:>36}: {value:,} ({value / 2**20:,.1f} MiB)")
        else:
            print(f"{key:>36}: {value}")
    ratio = report["arena_bytes"] / max(report["lower_bound_bytes"], 1)
    print(f"{'arena / lower bound':>36}: {ratio:.4f}")
    return 0


def list_zoo(args: argparse.Namespace) -> int:
    """Every zoo model with its default input, classes and parameters (builds each one)."""
    from graph.analysis import text_table

    rows = [("model", "input", "classes", "params")]
    for name in zoo.names():
        spec = zoo.spec(name)
        shape = "x".join(map(str, spec.input_shape))
        params = zoo.get(name).num_parameters()
        rows.append((name, shape, str(spec.num_classes), f"{params:,}"))
    print(text_table(rows, left=2))
    return 0


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=zoo.names())
    p.add_argument("--data", default="digits", help="digits, fashion-mnist or a directory")
    p.add_argument(
        "--input",
        type=lambda s: tuple(int(v) for v in s.split("x")),
        help="CxHxW to resize images to (default: the model's input shape)",
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=int, default=0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convforge", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="train LeNet-5 on digits, print accuracy and timings")
    p.add_argument("--epochs", type=int, default=5)
    p.set_defaults(func=demo)
    p = commands.add_parser("train", help="train a zoo model")
    _add_training_options(p)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument(
        "--augment",
        help="e.g. crop=4,flip,rotate=10,translate=0.1,scale=0.9:1.1,"
        "elastic=34:4,jitter=0.2:0.2:0.2",
    )
    p.add_argument("--checkpoint", help="file to save after every epoch")
    p.add_argument("--resume", help="checkpoint to continue from")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=train)
    p = commands.add_parser("eval", help="evaluate a checkpoint on the test split")
    _add_training_options(p)
    p.add_argument("--checkpoint", required=True)
    p.set_defaults(func=evaluate_checkpoint)
    p = commands.add_parser("warmup", help="compile every CPU kernel into Numba's cache")
    p.set_defaults(func=warmup)
    p = commands.add_parser("summary", help="per-layer shapes, params, MACs, receptive fields")
    p.add_argument("model", choices=zoo.names())
    p.add_argument("--input", type=_input_shape, help="CxHxW (default: the model's input shape)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(func=summary)
    p = commands.add_parser("memory", help="memory plan: arena, lower bound, naive bytes")
    p.add_argument("model", choices=zoo.names())
    p.add_argument("--input", type=_input_shape, help="CxHxW (default: the model's input shape)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--train", action="store_true", help="the training plan (SGD + momentum)")
    p.add_argument(
        "--recompute",
        type=_recompute_policy,
        help='"sqrt", or comma-separated layer names whose activations are recomputed',
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(func=memory)
    p = commands.add_parser("zoo", help="list the zoo models with input shapes and parameters")
    p.set_defaults(func=list_zoo)
    return parser


def _recompute_policy(text: str) -> str | list[str]:
    """``sqrt``, or layer names separated by commas."""
    return text if text == "sqrt" else [name for name in text.split(",") if name]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
