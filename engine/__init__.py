"""What users call: ``engine.compile(model, input_shape, batch)`` returns an ``Executable``;
``engine.fit`` trains one; ``engine.optim`` holds the optimizers."""

from engine import optim
from engine.compiler import compile
from engine.executable import Executable
from engine.train import evaluate, fit

__all__ = ["Executable", "compile", "evaluate", "fit", "optim"]
