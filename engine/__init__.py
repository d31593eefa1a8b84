"""What users call: ``engine.compile(model, input_shape, batch)`` returns an ``Executable``;
``engine.save``/``engine.load`` write it to one file and read it back without the Python model;
``engine.fit`` trains one; ``engine.optim`` holds the optimizers."""

from engine import optim
from engine.compiler import compile
from engine.executable import Executable
from engine.onnx_io import export_onnx, import_onnx
from engine.quantize import calibrate, quantize
from engine.saved import load, save
from engine.train import evaluate, fit

__all__ = [
    "Executable",
    "calibrate",
    "compile",
    "evaluate",
    "export_onnx",
    "fit",
    "import_onnx",
    "load",
    "optim",
    "quantize",
    "save",
]
