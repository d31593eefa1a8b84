"""ONNX in and out of ConvForge: the one module embedding programs import for it.

- ``export_onnx(exe, path, opset=17)`` writes a compiled model's traced graph and weights as a
  standard ONNX file (``engine/onnx_export.py``); ONNX Runtime gives the same outputs.
- ``import_onnx(path)`` reads an ONNX model (from ``torch.onnx.export``, ``export_onnx`` or
  an older exporter such as Caffe2's, opset 7 to the newest ``onnx`` knows) as a ``graph.nn``
  module that ``engine.compile`` traces, runs and trains like any other
  (``engine/onnx_import.py``, with ``onnx_constants.py`` and ``onnx_opsets.py``).

Both need the optional ``onnx`` package (``pip install "convforge[onnx]"``), imported only when
they are called.
"""

from engine.onnx_export import export_onnx, require_onnx
from engine.onnx_import import import_onnx

__all__ = ["export_onnx", "import_onnx", "require_onnx"]
