"""What users call: ``engine.compile(model, input_shape, batch)`` returns an ``Executable``."""

from engine.compiler import compile
from engine.executable import Executable

__all__ = ["Executable", "compile"]
