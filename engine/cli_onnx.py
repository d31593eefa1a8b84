"""``convforge export``: a zoo model, with the weights of a ``convforge train`` checkpoint or its
initial ones, written as an ONNX file (``engine/onnx_export.py``).

- ``convforge export --checkpoint C --onnx out.onnx``: the checkpoint's model (its zoo name,
  constructor arguments, input shape and dtype are recorded in it) with its trained weights.
  A model named as well must be the checkpoint's.
- ``convforge export MODEL --onnx out.onnx``: MODEL with the initial weights ``convforge train
  MODEL`` starts from (seed 0), for trying a runtime before training.

The file fixes the batch (``--batch``, default 1) and input shape (``--input``), as ConvForge
graphs do. It expects inputs normalised as the run normalised its data: the checkpoint's
per-channel mean and std are stored in the model's metadata (``convforge.mean``,
``convforge.std``), beside ``convforge.model``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import engine
import zoo
from engine.checkpoint import load_checkpoint
from engine.cli_training import UsageError
from engine.onnx_export import export_onnx, require_onnx
from engine.train import load_weights
from graph import nn


def export(args: argparse.Namespace) -> int:
    try:
        require_onnx()
    except ImportError as error:
        raise UsageError(str(error)) from None
    _check_output(args.onnx)
    name, kwargs, shape, dtype, metadata = _model_source(args)
    shape = tuple(args.input or shape)
    if args.input and args.checkpoint and args.input[0] != shape[0]:
        raise UsageError(f"--input must keep the checkpoint's {shape[0]} channels")
    if not args.checkpoint and shape[0] != zoo.spec(name).input_shape[0]:
        kwargs["in_channels"] = shape[0]
    nn.manual_seed(0)  # the initial weights of ``convforge train`` (its default seed)
    model = zoo.get(name, **kwargs)
    try:
        exe = engine.compile(model, shape, batch=args.batch, dtype=dtype)
    except ValueError as error:  # a layer that does not fit this input: the tracer's message
        raise UsageError(f"{name} at input {shape}: {error}") from None
    if args.checkpoint:
        load_weights(args.checkpoint, exe)
    metadata["convforge.model"] = name
    export_onnx(exe, args.onnx, args.opset, metadata=metadata)
    print(
        f"wrote {args.onnx}: {name}, input [{args.batch}, {', '.join(map(str, shape))}] "
        f"{dtype}, opset {args.opset}, {os.path.getsize(args.onnx) / 2**20:,.1f} MiB"
    )
    return 0


def _check_output(path: str) -> None:
    """Name a wrong ``--onnx`` before the model is built."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"--onnx {path} is a directory; name a file, e.g. {path}/model.onnx")
    if not target.parent.is_dir():
        raise UsageError(f"--onnx {path}: the folder {target.parent} does not exist")


def _model_source(args: argparse.Namespace) -> tuple[str, dict, tuple, str, dict[str, str]]:
    """Zoo name, constructor arguments, input shape, dtype and ONNX metadata: the checkpoint's,
    or the named model's defaults."""
    if not args.checkpoint:
        if args.model is None:
            raise UsageError("which model? e.g. convforge export resnet18 --onnx resnet18.onnx")
        return args.model, {}, zoo.spec(args.model).input_shape, "float32", {}
    if not Path(args.checkpoint).is_file():
        raise UsageError(f"checkpoint {args.checkpoint} does not exist")
    saved = load_checkpoint(args.checkpoint)[1]
    if not {"model", "model_args", "input_shape", "arguments"} <= set(saved):
        raise UsageError(f"{args.checkpoint} was not written by convforge train")
    if args.model is not None and args.model != saved["model"]:
        raise UsageError(
            f"model {args.model} contradicts the checkpoint {args.checkpoint}, which holds "
            f"{saved['model']}; leave the model out to export the checkpoint's"
        )
    metadata = {
        f"convforge.{key}": json.dumps(saved[key]) for key in ("mean", "std") if key in saved
    }
    shape = tuple(saved["input_shape"])
    return saved["model"], dict(saved["model_args"]), shape, saved["arguments"]["dtype"], metadata
