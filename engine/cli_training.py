"""The training subcommands of ``convforge``: ``train``, ``eval`` and ``demo``.

A training run is defined by its arguments (``RUN_DEFAULTS``: model, data, batch, optimizer,
seed, ...). Every checkpoint it writes stores them, so:

- ``train --resume C`` continues that run exactly without repeating a flag: the seed (and with
  it the data split, the batch order, augmentation and dropout), the schedule and the epoch all
  come from the checkpoint, and a flag that contradicts it stops the run before it starts,
  naming the flag, the given and the saved value;
- ``eval --checkpoint C`` compiles an inference plan for the checkpoint's model and loads its
  weights only, whatever optimizer trained it.

Everything a user can get wrong (data, model, flags, the checkpoint, its folder) is checked
before the first epoch; ``engine.cli.main`` turns the errors into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage

import engine
import zoo
from engine.augment import Augment
from engine.checkpoint import load_checkpoint
from engine.data import Dataset, Normalize, load_dataset
from engine.distributed import DataParallel, World, failing_together
from engine.optim import SGD, Adam, AdamW
from engine.schedules import make_schedule
from engine.train import (
    EpochResult,
    evaluate,
    fit,
    ignore,
    load_training_checkpoint,
    load_weights,
)
from graph import nn

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}

# The arguments that define a training run, with their defaults: stored in every checkpoint,
# taken from it by --resume, which refuses a flag that contradicts them, except --epochs: a
# resumed run may train for longer (its schedule keeps the state it was saved with).
RUN_DEFAULTS: dict[str, object] = {
    "epochs": 5,
    "data": "digits",
    "input": None,
    "batch": 64,
    "dtype": "float32",
    "seed": 0,
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "label_smoothing": 0.0,
    "augment": None,
}


class UsageError(ValueError):
    """A mistake in what the user asked for, found by the command line itself."""


# **** Arguments of a run ****


def resolve_run(args: argparse.Namespace, saved: dict | None, path: str | None) -> dict:
    """Fill ``args`` with the run's arguments: the defaults for a new run, the checkpoint's
    (``saved`` metadata from ``path``) for a resumed one, where a given flag must agree."""
    given = {key: getattr(args, key, None) for key in RUN_DEFAULTS}
    if saved is None:
        if args.model is None:
            raise UsageError("which model? e.g. convforge train lenet5 (convforge zoo lists them)")
        run = {key: RUN_DEFAULTS[key] if v is None else _as_json(v) for key, v in given.items()}
        vars(args).update(run)
        return run
    run = saved.get("arguments")
    if not isinstance(run, dict) or set(run) != set(RUN_DEFAULTS) or "model" not in saved:
        raise UsageError(
            f"{path} does not record the arguments of its run (it was not written by this "
            "version of convforge train), so it cannot be resumed exactly"
        )
    if args.model is not None and args.model != saved["model"]:
        raise UsageError(_contradiction("model", args.model, saved["model"], path))
    for key, value in given.items():
        if value is not None and _as_json(value) != run[key] and key != "epochs":
            raise UsageError(_contradiction(f"--{key.replace('_', '-')}", value, run[key], path))
    args.model = saved["model"]
    run["epochs"] = given["epochs"] or run["epochs"]
    vars(args).update(run)
    return run


def _as_json(value: object) -> object:
    """``value`` as the checkpoint's JSON gives it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def _contradiction(flag: str, given: object, saved: object, path: str | None) -> str:
    return (
        f"{flag} {given} contradicts the checkpoint {path}, whose run used {flag} {saved}; "
        "leave the flag out to resume that run, or start a new run without --resume"
    )


def check_writable(path: str | None, flag: str = "--checkpoint") -> None:
    """Probe the folder of an output file (``flag``'s) before training, so a typo costs no
    epoch."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        example = "run.ckpt" if flag == "--checkpoint" else "curves.csv"
        raise UsageError(f"{flag} {path} is a directory; name a file, e.g. {path}/{example}")
    if not target.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {target.parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}."):
            pass
    except OSError as error:
        raise UsageError(
            f"{flag} {path}: cannot write in {target.parent} ({error.strerror})"
        ) from None


# How many ':'-separated numbers each --augment item takes.
_AUGMENT_ARITY = {
    "flip": 0, "crop": 1, "rotate": 1, "translate": 1, "scale": 2, "elastic": 2, "jitter": 3,
}  # fmt: skip


def parse_augment(spec: str, seed: int = 0) -> Augment:
    """``crop=4,flip,rotate=10,translate=0.1,scale=0.9:1.1,elastic=34:4,jitter=0.2:0.2:0.2``
    as an ``Augment`` drawing from ``seed``."""
    options: dict[str, object] = {}
    for item in spec.split(","):
        key, _, value = item.strip().partition("=")
        try:
            numbers = [float(v) for v in value.split(":")] if value else []
        except ValueError:
            raise UsageError(f"augmentation {key}={value}: not a number") from None
        if key not in _AUGMENT_ARITY:
            known = ", ".join(_AUGMENT_ARITY)
            raise UsageError(f"unknown augmentation {key!r}; known: {known}")
        if len(numbers) != _AUGMENT_ARITY[key]:
            raise UsageError(
                f"augmentation {item}: {key} takes {_AUGMENT_ARITY[key]} number(s) separated by "
                f"':', but got {len(numbers)}"
            )
        if key == "flip":
            options["flip"] = True
        elif key == "crop":
            options["crop"] = int(numbers[0])
        elif key in ("rotate", "translate"):
            options[key] = numbers[0]
        else:
            options[key] = tuple(numbers)
    return Augment(**options, seed=seed)


# **** Building a run ****


def _fit_to(data: Dataset, size: tuple[int, int]) -> Dataset:
    """Bilinearly resize images to the model's input size (8x8 digits for a 28x28 LeNet)."""
    h, w = data.x.shape[2:]
    if (h, w) == tuple(size):
        return data
    zoom = (1, 1, size[0] / h, size[1] / w)
    x = scipy.ndimage.zoom(data.x, zoom, order=1).astype(np.float32)
    return Dataset(x, data.y, data.classes)


def prepare(args: argparse.Namespace):
    """Datasets sized for the model, the model (initial weights drawn from ``args.seed``), its
    constructor arguments, and the normalisation fitted on the training split."""
    train, test = load_dataset(args.data, seed=args.seed)
    spec = zoo.spec(args.model)
    size = tuple(args.input[1:]) if args.input else spec.input_shape[1:]
    train, test = _fit_to(train, size), _fit_to(test, size)
    kwargs = {"num_classes": len(train.classes)}
    if train.x.shape[1] != spec.input_shape[0]:
        kwargs["in_channels"] = train.x.shape[1]
    if getattr(args, "blur", 0):
        if "blur" not in inspect.signature(spec.build).parameters:
            with_blur = [
                n for n in zoo.names() if "blur" in inspect.signature(zoo.spec(n).build).parameters
            ]
            raise UsageError(
                f"--blur: {args.model} has no anti-aliased form; these have: {', '.join(with_blur)}"
            )
        kwargs["blur"] = args.blur
    nn.manual_seed(args.seed)
    model = zoo.get(args.model, **kwargs)
    return train, test, model, kwargs, Normalize.fit(train.x)


def saved_blur(saved: dict) -> int:
    """The BlurPool filter size a checkpoint's model was built with (0: none), so that every
    command rebuilds the same architecture (the filter is fixed, not a tensor of the file)."""
    return int((saved.get("model_args") or {}).get("blur", 0))


def take_checkpoint_run(
    args: argparse.Namespace, saved: dict, path: str, keys: tuple[str, ...]
) -> None:
    """Rebuild the run that wrote ``saved`` (a checkpoint's or a ``.cfz``'s metadata) in
    ``args``: its model (a given one must agree) with the same BlurPool, and each of ``keys``
    (data, input, seed: the same held-out split) that was not given."""
    run = saved.get("arguments")
    if not isinstance(run, dict) or "model" not in saved:
        raise UsageError(f"{path} was not written by convforge train or compress")
    if args.model is not None and args.model != saved["model"]:
        raise UsageError(
            f"model {args.model} contradicts the checkpoint {path}, which holds "
            f"{saved['model']}; leave the model out to use the checkpoint's"
        )
    args.model = saved["model"]
    args.blur = saved_blur(saved)
    for key in keys:
        if getattr(args, key, None) is None:
            setattr(args, key, run[key])


def _resolve_blur(args: argparse.Namespace, saved: dict | None) -> None:
    """``--blur`` of a new run, or the checkpoint's for a resumed one (which must agree)."""
    if saved is None:
        args.blur = args.blur or 0
        return
    if args.blur is not None and args.blur != saved_blur(saved):
        raise UsageError(_contradiction("--blur", args.blur, saved_blur(saved), args.resume))
    args.blur = saved_blur(saved)


def _optimizer(args: argparse.Namespace):
    if args.optimizer == "sgd":
        return SGD(
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            nesterov=args.nesterov,
        )
    return OPTIMIZERS[args.optimizer](lr=args.lr, weight_decay=args.weight_decay)


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


def _saved_metadata(path: str) -> dict:
    """A checkpoint's metadata; the file is checked whole (digest) here, before any work."""
    if not Path(path).is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    return load_checkpoint(path)[1]


# **** Subcommands ****


def train(args: argparse.Namespace) -> int:
    """``convforge train``: every check first, then compile, (resume,) fit, report."""
    saved = _saved_metadata(args.resume) if args.resume else None
    run = resolve_run(args, saved, args.resume)
    _resolve_blur(args, saved)
    first_epoch = saved["next_epoch"] if saved else 0
    if first_epoch >= args.epochs:
        raise UsageError(
            f"{args.resume} has already trained {first_epoch} epochs; pass --epochs N with "
            f"N > {first_epoch} to train on"
        )
    check_writable(args.checkpoint)
    check_writable(args.log, "--log")
    augment = parse_augment(args.augment, args.seed) if args.augment else None
    data, test, model, kwargs, norm = prepare(args)
    if saved:  # the statistics the run was trained with, bit for bit
        norm = Normalize(np.array(saved["mean"], np.float32), np.array(saved["std"], np.float32))
    world = World.from_environment()
    log = _logger(args.json) if world.is_root else ignore
    start = time.perf_counter()
    exe = engine.compile(
        model,
        data.sample_shape,
        batch=args.batch,
        dtype=args.dtype,
        train=True,
        optimizer=_optimizer(args),
        label_smoothing=args.label_smoothing,
        sync_batch_norm=world.size if args.sync_batch_norm and world.size > 1 else None,
    )
    schedule = _schedule(args)
    log(
        f"{args.model}: {model.num_parameters():,} parameters, compiled for "
        f"[{args.batch}, {', '.join(map(str, data.sample_shape))}] in "
        f"{time.perf_counter() - start:.2f} s; {len(data)} training and {len(test)} test images"
    )
    if saved:
        load_training_checkpoint(args.resume, exe, schedule)
        log(f"resumed {args.resume} at epoch {first_epoch + 1}")
    if world.size > 1:
        exe = DataParallel(exe, world)
        log(f"data-parallel on {world.size} processes: global batch {exe.global_batch}")
    metadata = {
        "model": args.model,
        "arguments": run,
        "model_args": kwargs,
        "input_shape": list(data.sample_shape),
        "mean": norm.mean.tolist(),
        "std": norm.std.tolist(),
        "history": (saved or {}).get("history", [])[:first_epoch],  # for convforge report
        "processes": world.size,  # informative: a resumed run may use another number
    }
    with failing_together(world):
        results = fit(
            exe,
            data,
            test,
            args.epochs,
            schedule,
            augment=augment,
            preprocess=norm,
            seed=args.seed,
            start_epoch=first_epoch,
            checkpoint=args.checkpoint,
            metadata=metadata,
            progress=not (args.no_progress or args.json),
            log=log,
            on_epoch=_record_epoch(metadata["history"], args.log),
        )
    if world.is_root:
        _report_training(args, model.num_parameters(), results)
    return 0


def _record_epoch(history: list[dict], log: str | None):
    """Each epoch's row goes into the checkpoint's ``history`` and, with ``--log``, the
    curves CSV (``engine.analysis.curves``), written as training goes."""
    from engine.analysis.curves import epoch_row, write_curves

    def record(result: EpochResult) -> None:
        history.append(epoch_row(result))
        if log is not None:
            write_curves(log, history)

    return record


def _logger(quiet_stdout: bool):
    """Progress lines go to stdout, or to stderr when stdout carries JSON."""
    stream = sys.stderr if quiet_stdout else sys.stdout
    return lambda line: print(line, file=stream)


def _report_training(args: argparse.Namespace, params: int, results: list[EpochResult]) -> None:
    if args.json:
        report = {
            "model": args.model,
            "parameters": params,
            "arguments": {key: getattr(args, key) for key in RUN_DEFAULTS},
            "checkpoint": args.checkpoint,
            "epochs": [vars(result) for result in results],
        }
        print(json.dumps(report))
    elif results:
        total = sum(r.seconds for r in results)
        print(
            f"trained {len(results)} epochs in {total:.1f} s; final test top-1 "
            f"{100 * results[-1].top1:.2f}%"
        )


def evaluate_checkpoint(args: argparse.Namespace) -> int:
    """``convforge eval``: the checkpoint's model compiled for inference, its weights only (the
    optimizer that trained it does not matter), on the test split it was trained beside."""
    saved = _saved_metadata(args.checkpoint)
    take_checkpoint_run(args, saved, args.checkpoint, ("data", "input", "seed", "dtype"))
    args.batch = args.batch or RUN_DEFAULTS["batch"]
    data, test, model, _, _ = prepare(args)
    norm = Normalize(np.array(saved["mean"], np.float32), np.array(saved["std"], np.float32))
    exe = engine.compile(model, test.sample_shape, batch=args.batch, dtype=args.dtype)
    load_weights(args.checkpoint, exe)
    scores = evaluate(exe, test, norm)
    if args.json:
        report = {"model": args.model, "data": args.data, "images": len(test), **scores}
        print(json.dumps(report))
    else:
        print(
            f"{args.model} on {args.data} ({len(test)} test images): loss "
            f"{scores['loss']:.4f}, top-1 {100 * scores['top1']:.2f}%, "
            f"top-5 {100 * scores['top5']:.2f}%"
        )
    return 0


def demo(args: argparse.Namespace) -> int:
    """LeNet-5 on digits: the README's first command."""
    from engine.cli import parser

    train_args = parser().parse_args(
        ["train", "lenet5", "--data", "digits", "--epochs", str(args.epochs), "--batch", "32"]
        + ["--lr", "0.05", "--schedule", "cosine", "--no-progress"]
    )
    resolve_run(train_args, None, None)
    data, _, model, _, _ = prepare(train_args)
    exe = engine.compile(model, data.sample_shape, batch=train_args.batch)
    print(exe.graph, end="\n\n")
    exe.graph.print_tabular()
    print()
    start = time.perf_counter()
    train(train_args)
    batch = np.zeros(exe.input_shape, np.float32)
    rows = exe.profile(batch, 200)
    per_batch = sum(r["us"] for r in rows)
    print(
        f"inference: {per_batch:.0f} us per batch of {train_args.batch} "
        f"({per_batch / train_args.batch:.2f} us per image); memory: parameters "
        f"{4 * model.num_parameters() / 1024:.0f} KiB, activation arena "
        f"{exe.memory_report()['arena_bytes'] / 1024:.0f} KiB; demo took "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0
