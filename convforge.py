"""ConvForge under one name, for programs that embed a model: ``import convforge``.

    import convforge

    exe = convforge.compile(convforge.zoo.get("lenet5"), (1, 28, 28), batch=1)
    convforge.save(exe, "lenet5.cf")
    probabilities = convforge.load("lenet5.cf").run(images)

``compile``, ``load``, ``save``, ``quantize``, ``Executable``, ``optim``, ``export_onnx`` and
``import_onnx`` come from ``engine``; ``nn`` is ``graph.nn``, ``functional`` is
``graph.functional`` and ``zoo`` is ``zoo``. They are the very objects of those packages, not
wrappers, so a program may mix ``convforge.compile`` with ``engine.compile`` and ``isinstance``
checks agree.
"""

from __future__ import annotations

import zoo
from engine import Executable, compile, export_onnx, import_onnx, load, optim, quantize, save
from graph import functional, nn

__all__ = [
    "Executable",
    "compile",
    "export_onnx",
    "functional",
    "import_onnx",
    "load",
    "nn",
    "optim",
    "quantize",
    "save",
    "zoo",
]
