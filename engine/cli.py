"""The ``convforge`` command line.

- ``convforge demo``: train LeNet-5 on scikit-learn's digits for a few epochs; print the graph,
  accuracy, timings and memory.
- ``convforge train MODEL --data digits|fashion-mnist[:DIR]|mnist:DIR|cifar10:DIR|DIR ...``:
  train a zoo model with a progress bar, validating every epoch; ``--checkpoint`` saves after
  each epoch and ``--resume C`` continues the run saved in C exactly (``engine/cli_training.py``).
  Under ``mpirun -n N`` it trains data-parallel, ``--batch`` images per process
  (``engine/distributed.py``).
- ``convforge eval --checkpoint C``: loss, top-1 and top-5 of a checkpoint on its test split.
- ``convforge export [MODEL] [--checkpoint C] --onnx F``: a checkpoint's model and weights (or a
  zoo model's initial ones) as an ONNX file (``engine/cli_onnx.py``).
- ``convforge predict [MODEL] --checkpoint C IMAGE... [--top K] [--json]``: each image's most
  probable classes, from a training checkpoint or an ``engine.save`` file (``cli_predict.py``).
- ``convforge summary MODEL [--input CxHxW] [--json]``: per-layer output shapes, parameters,
  MACs, receptive fields and activation bytes, with totals (``graph/analysis.py``).
- ``convforge zoo [--json]``: every zoo model with its input shape, classes and parameters.
- ``convforge memory MODEL [--input CxHxW] [--batch B] [--train] [--recompute sqrt|LAYERS]
  [--json]``: the memory plan.
- ``convforge compress MODEL --checkpoint C [--prune F] [--quantize conv=8,fc=5] [--huffman]
  [--out F.cfz]`` and ``convforge lottery MODEL --rounds R --rate P``: Deep Compression and
  lottery tickets (``engine/cli_compress.py``); ``eval`` and ``summary`` also read a ``.cfz``.
- ``convforge landscape|consistency|features|plot|report ...`` and ``memory --plot``: pictures
  and numbers from inside a model and a run (``engine/cli_analysis.py``).
- ``convforge warmup``: compile every CPU kernel variant (and the other Numba functions: the
  ``.cfz`` coders, the augmentation kernels) into Numba's on-disk cache, so the first real
  compile in later processes loads in a fraction of a second.

A user's mistake (a missing dataset, an unknown model, a bad flag value, a missing or corrupt
checkpoint, an unwritable output folder) ends the command with one line on stderr and exit
status 2; a failure while running (a diverged training run, a kernel error) with one line and
status 1. ``CONVFORGE_TRACEBACK=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version

import numpy as np

import zoo
from engine.cli_analysis import add_commands as add_analysis_commands
from engine.cli_analysis import plot_memory
from engine.cli_compress import compress, evaluate_any, lottery, summary_any
from engine.cli_onnx import export
from engine.cli_predict import predict
from engine.cli_training import (
    OPTIMIZERS,
    RUN_DEFAULTS,
    UsageError,
    demo,
    parse_augment,
    train,
)
from engine.schedules import SCHEDULES


def warmup(args: argparse.Namespace) -> int:
    from engine.warmup import warmup as compile_all

    count, seconds = compile_all(args.jobs, progress=not args.no_progress)
    print(f"compiled {count} CPU kernel variants in {seconds:.1f} s")
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
    from graph.analysis import analyze, summary_dict, summary_table
    from graph.trace import trace

    spec = zoo.spec(args.model)
    shape = args.input or spec.input_shape
    kwargs = {"in_channels": shape[0]} if shape[0] != spec.input_shape[0] else {}
    try:
        graph = trace(zoo.get(args.model, **kwargs), shape, batch=args.batch)
    except ValueError as err:  # a layer that does not fit this input: the tracer's message
        raise UsageError(f"{args.model} at input {shape}: {err}") from None
    result = analyze(graph, args.model)
    print(json.dumps(summary_dict(result)) if args.json else summary_table(result))
    return 0


def memory(args: argparse.Namespace) -> int:
    """The memory plan a compile would make (nothing is allocated): the report of
    ``Executable.memory_report`` as a table or as JSON."""
    from engine.compiler import memory_plans
    from graph.memory import plan_report

    if args.recompute and not args.train:
        raise UsageError("--recompute applies to the training plan (--train)")
    spec = zoo.spec(args.model)
    shape = args.input or spec.input_shape
    model = zoo.get(args.model)
    kind = "training" if args.train else "inference"
    try:
        plan = memory_plans(model, shape, args.batch, train=args.train, recompute=args.recompute)
    except ValueError as err:
        raise UsageError(f"{args.model} at input {shape}: {err}") from None
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
    if args.plot:
        plot_memory(plan[kind], args.plot, f"{args.model}: {kind} plan, batch {args.batch}")
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
    """Every zoo model with its default input, classes and parameters (builds each one), and
    how it compares with torchvision's default constructor of the same name."""
    from graph.analysis import text_table

    models = []
    for name in zoo.names():
        spec = zoo.spec(name)
        models.append(
            {
                "name": name,
                "input_shape": list(spec.input_shape),
                "classes": spec.num_classes,
                "parameters": zoo.get(name).num_parameters(),
                "torchvision": spec.torchvision,
                "torchvision_parameters": spec.torchvision_params,
                "departs": spec.departs,
            }
        )
    if args.json:
        print(json.dumps(models))
        return 0
    rows = [("model", "input", "classes", "params", "against torchvision's default")]
    for model in models:
        shape = "x".join(map(str, model["input_shape"]))
        same = f"= torchvision.models.{model['torchvision']}()"
        rows.append(
            (
                model["name"],
                shape,
                str(model["classes"]),
                f"{model['parameters']:,}",
                model["departs"] or same,
            )
        )
    print(text_table(rows, left=2))
    return 0


# **** Argument types: each turns a bad value into argparse's one-line error ****


def _zoo_model(name: str) -> str:
    if name in zoo.names():
        return name
    close = difflib.get_close_matches(name, zoo.names(), n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise argparse.ArgumentTypeError(
        f"unknown model {name!r}{hint} (convforge zoo lists all {len(zoo.names())})"
    )


def _number(kind: type, low: float, inclusive: bool = True):
    """A type function for ints or floats ``>= low`` (``> low`` unless ``inclusive``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {kind.__name__}, but got {text!r}"
            ) from None
        if value < low or (value == low and not inclusive):
            rule = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"must be {rule} {low}, but got {text}")
        return value

    return parse


def _augment_spec(text: str) -> str:
    try:
        parse_augment(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


_positive = _number(int, 1)
_non_negative = _number(float, 0.0)


# **** The parser ****


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``convforge train: error: ...``), exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Subcommand(_Parser):
    """A subcommand whose positionals may stand on both sides of its options, as in
    ``convforge predict MODEL --checkpoint C IMAGE...``: plain argparse gives positionals only
    the words before the first option. A subcommand's parser is called through
    ``parse_known_args``, so that is where argparse's intermixed parsing goes in."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # the intermixed parse calls back here for each of its passes
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


class _Help(argparse.HelpFormatter):
    """Shows each flag's default; a run's arguments show the default of a new run."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = RUN_DEFAULTS.get(action.dest, action.default)
        hidden = default is None or default is False or default == argparse.SUPPRESS
        if hidden or "default:" in (action.help or ""):
            return action.help or ""
        return f"{action.help} (default: {default})"


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """Data, input size, batch, dtype and seed: train and eval share them. Their defaults live
    in ``RUN_DEFAULTS``: left as None here, a resumed run can tell a given flag from none."""
    p.add_argument(
        "--data",
        help="digits, fashion-mnist[:DIR] (DIR defaults to $CONVFORGE_FASHION_MNIST or Debian's "
        "dataset-fashion-mnist folder), mnist:DIR, cifar10:DIR (the binary version), or a "
        "folder of IDX files or of images in class sub-folders",
    )
    p.add_argument("--input", type=_input_shape, help="CxHxW to resize images to")
    p.add_argument("--batch", type=_positive, help="batch size the model is compiled for")
    p.add_argument("--dtype", choices=("float32", "float64"), help="floating-point type")
    p.add_argument("--seed", type=int, help="seed of the data split, order and augmentation")


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train a zoo model", formatter_class=_Help)
    p.add_argument("model", nargs="?", type=_zoo_model, help="zoo model (convforge zoo)")
    _add_data_options(p)
    p.add_argument("--epochs", type=_positive, help="epochs to train in all")
    p.add_argument("--lr", type=_non_negative, help="learning rate")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), help="optimizer")
    p.add_argument("--momentum", type=_non_negative, help="SGD momentum")
    p.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, help="SGD with Nesterov momentum"
    )
    p.add_argument("--weight-decay", type=_non_negative, help="L2 weight decay")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule, per epoch")
    p.add_argument(
        "--label-smoothing", type=_number(float, 0.0), help="cross-entropy label smoothing"
    )
    p.add_argument(
        "--augment",
        type=_augment_spec,
        help="comma-separated, e.g. crop=4,flip,rotate=10,translate=0.1,scale=0.9:1.1,"
        "elastic=34:4,jitter=0.2:0.2:0.2",
    )
    p.add_argument("--checkpoint", help="file written (atomically) after every epoch")
    p.add_argument("--log", help="CSV of loss, accuracy and lr per epoch, written as it trains")
    p.add_argument(
        "--blur",
        type=_number(int, 1),
        help="anti-aliased downsampling (BlurPool, Zhang 2019) with a KxK filter, for the "
        "models that have it (ResNets, VGG, AlexNet, MobileNet v2)",
    )
    p.add_argument(
        "--sync-batch-norm",
        action="store_true",
        help="under mpirun: BatchNorm statistics over every process's batch (default: each "
        "process its own, as DistributedDataParallel)",
    )
    p.add_argument(
        "--resume", help="checkpoint to continue from, with the arguments it was trained with"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=train)


def _add_eval(commands) -> None:
    p = commands.add_parser(
        "eval", help="evaluate a checkpoint on the test split", formatter_class=_Help
    )
    p.add_argument(
        "model", nargs="?", type=_zoo_model, help="zoo model (default: the checkpoint's)"
    )
    _add_data_options(p)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint of convforge train, or a .cfz of convforge compress",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=evaluate_any)


def _add_predict(commands) -> None:
    p = commands.add_parser(
        "predict",
        help="top classes of images, from a checkpoint",
        usage="convforge predict [-h] [MODEL] IMAGE [IMAGE ...] --checkpoint C [--top K] [--json]",
        formatter_class=_Help,
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE",
        help="image files, after an optional zoo model (default: the checkpoint's; none with a "
        "saved model)",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="C",
        help="a checkpoint of convforge train, or a file of engine.save",
    )
    p.add_argument("--top", type=_positive, default=5, metavar="K", help="classes per image")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=predict)


def _add_export(commands) -> None:
    p = commands.add_parser("export", help="write a model as an ONNX file", formatter_class=_Help)
    p.add_argument(
        "model", nargs="?", type=_zoo_model, help="zoo model (default: the checkpoint's)"
    )
    p.add_argument(
        "--checkpoint", help="a checkpoint of convforge train (default: initial weights, seed 0)"
    )
    p.add_argument("--onnx", required=True, help="the .onnx file to write (atomically)")
    p.add_argument("--input", type=_input_shape, help="CxHxW (default: the model's input shape)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size fixed in the file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    p.set_defaults(func=export)


def _add_model_reports(commands) -> None:
    p = commands.add_parser(
        "summary", help="per-layer shapes, params, MACs, receptive fields", formatter_class=_Help
    )
    p.add_argument("model", type=_zoo_model, help="zoo model (convforge zoo)")
    p.add_argument("--input", type=_input_shape, help="CxHxW (default: the model's input shape)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--checkpoint", help="a .cfz of convforge compress: add its per-layer sizes")
    p.set_defaults(func=summary_any)
    p = commands.add_parser(
        "memory", help="memory plan: arena, lower bound, naive bytes", formatter_class=_Help
    )
    p.add_argument("model", type=_zoo_model, help="zoo model (convforge zoo)")
    p.add_argument("--input", type=_input_shape, help="CxHxW (default: the model's input shape)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size")
    p.add_argument("--train", action="store_true", help="the training plan (SGD + momentum)")
    p.add_argument(
        "--recompute",
        type=_recompute_policy,
        help='"sqrt", or comma-separated layer names whose activations are recomputed',
    )
    p.add_argument("--plot", help="PNG of arena offset against execution step")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(func=memory)
    p = commands.add_parser(
        "zoo", help="list the zoo models with input shapes and parameters", formatter_class=_Help
    )
    p.add_argument("--json", action="store_true", help="print one JSON list instead")
    p.set_defaults(func=list_zoo)


def _add_compression(commands) -> None:
    p = commands.add_parser(
        "compress", help="prune, share weights, Huffman-code a checkpoint", formatter_class=_Help
    )
    p.add_argument(
        "model", nargs="?", type=_zoo_model, help="zoo model (default: the checkpoint's)"
    )
    _add_data_options(p)
    p.add_argument("--checkpoint", required=True, help="a checkpoint of convforge train")
    p.add_argument(
        "--prune", type=_number(float, 0.0), default=0.9, help="fraction of weights to prune"
    )
    p.add_argument("--prune-rounds", type=_positive, default=1, help="prune -> retrain rounds")
    p.add_argument("--scope", choices=("layer", "global"), default="layer", help="pruning rank")
    p.add_argument("--retrain-epochs", type=_number(int, 0), default=1, help="epochs per round")
    p.add_argument("--centroid-epochs", type=_number(int, 0), default=1, help="centroid tuning")
    p.add_argument("--lr", type=_non_negative, help="retraining lr (default: the run's / 10)")
    p.add_argument(
        "--quantize", default="conv=8,fc=5", help="bits per shared weight index, or none"
    )
    p.add_argument("--huffman", action="store_true", help="Huffman-code (else fixed width)")
    p.add_argument("--out", help="the .cfz file to write (atomically)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=compress)
    p = commands.add_parser(
        "lottery", help="lottery tickets vs random re-initialisation", formatter_class=_Help
    )
    p.add_argument("model", type=_zoo_model, help="zoo model (convforge zoo)")
    _add_data_options(p)
    p.add_argument("--rounds", type=_positive, default=5, help="pruning rounds")
    p.add_argument(
        "--rate", type=_number(float, 0.0, False), default=0.2, help="pruned share per round"
    )
    p.add_argument("--epochs", type=_positive, default=2, help="epochs per training (default: 2)")
    p.add_argument(
        "--optimizer", choices=("sgd", "adam"), default="adam", help="optimizer (default: adam)"
    )
    p.add_argument(
        "--lr", type=_non_negative, default=1.2e-3, help="learning rate (default: 0.0012)"
    )
    p.add_argument("--rewind", type=_number(int, 0), default=0, help="rewind to this step")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=lottery)


def parser() -> argparse.ArgumentParser:
    """The whole command line (``convforge --help``)."""
    top = _Parser(
        prog="convforge",
        description=__doc__.splitlines()[0],
        epilog="CONVFORGE_TRACEBACK=1 shows a traceback instead of the one-line error.",
        formatter_class=_Help,
    )
    top.add_argument("--version", action="version", version=f"convforge {_version()}")
    commands = top.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Subcommand
    )
    p = commands.add_parser(
        "demo", help="train LeNet-5 on digits, print accuracy and timings", formatter_class=_Help
    )
    p.add_argument("--epochs", type=_positive, default=5, help="epochs to train")
    p.set_defaults(func=demo)
    _add_train(commands)
    _add_eval(commands)
    _add_export(commands)
    _add_predict(commands)
    _add_compression(commands)
    p = commands.add_parser(
        "warmup", help="compile every CPU kernel into Numba's cache", formatter_class=_Help
    )
    p.add_argument("--jobs", type=_positive, default=os.cpu_count() or 1, help="compiler processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=warmup)
    _add_model_reports(commands)
    add_analysis_commands(commands)
    return top


def _version() -> str:
    try:
        return version("convforge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _recompute_policy(text: str) -> str | list[str]:
    """``sqrt``, or layer names separated by commas."""
    return text if text == "sqrt" else [name for name in text.split(",") if name]


# **** Running a command ****


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"convforge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # ``convforge zoo | head``: the reader left early, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, TypeError, KeyError, OSError) as error:  # the user's input
        return _fail(args.command, error, 2)
    except RuntimeError as error:  # a failure while running: divergence, a kernel's error
        return _fail(args.command, error, 1)


def _fail(command: str, error: Exception, status: int) -> int:
    """One line on stderr (the message's first line), unless CONVFORGE_TRACEBACK is set."""
    if os.environ.get("CONVFORGE_TRACEBACK"):
        raise error
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    print(f"convforge {command}: error: {str(message).splitlines()[0]}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
