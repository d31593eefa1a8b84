"""Which ONNX opsets the importer reads: 7 (the first with NumPy broadcasting, and the oldest
the ONNX model zoo's classic CNNs use) up to the newest the installed ``onnx`` knows.

The handlers read every form those versions define (attributes that became inputs, changed
defaults, Softmax's 2-D coercion before 13). A model older than opset 7 (per-op ``broadcast``
and ``consumed_inputs`` attributes) is brought up to 7 by ``onnx.version_converter``; when the
converter cannot, the error says so and why. A model newer than ``onnx`` knows cannot be
checked: the error says which ``onnx`` is installed.
"""

from __future__ import annotations

from typing import Any

MIN_OPSET = 7


def default_opset(proto: Any) -> int:
    """The model's version of the default (``ai.onnx``) domain."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def readable(onnx: Any, proto: Any, source: str) -> Any:
    """``proto``, converted to opset ``MIN_OPSET`` when it is older.

    Raises:
        ValueError: the opset is newer than the installed ``onnx`` knows, or older than
            ``MIN_OPSET`` and the version converter fails on it.
    """
    version, newest = default_opset(proto), onnx.defs.onnx_opset_version()
    if version > newest:
        raise ValueError(
            f"{source}: opset {version} is newer than the installed onnx {onnx.__version__} "
            f"knows (up to {newest}): pip install --upgrade onnx"
        )
    if version >= MIN_OPSET:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, MIN_OPSET)
        onnx.checker.check_model(converted)
    except Exception as error:  # the converter raises RuntimeError, ValueError, its own types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"{source}: opset {version} is older than {MIN_OPSET}, the oldest ConvForge reads, "
            f"and onnx.version_converter could not convert it to opset {MIN_OPSET}: {first}"
        ) from None
    return converted
