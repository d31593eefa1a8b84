"""``import convforge``: the one name an embedding program needs (the very objects of ``engine``,
``graph`` and ``zoo``), shipped as a top-level module, and ``examples/serve.py`` run as a user
would run it, in its own process."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import convforge
import engine
import graph.functional
import graph.nn
import zoo

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAME_OBJECTS = {
    "Executable": engine.Executable,
    "compile": engine.compile,
    "load": engine.load,
    "save": engine.save,
    "export_onnx": engine.export_onnx,
    "import_onnx": engine.import_onnx,
    "optim": engine.optim,
    "quantize": engine.quantize,
    "nn": graph.nn,
    "functional": graph.functional,
    "zoo": zoo,
}


def test_every_name_is_the_packages_own_object():
    assert sorted(convforge.__all__) == sorted(SAME_OBJECTS)
    for name, expected in SAME_OBJECTS.items():
        assert getattr(convforge, name) is expected, name


def test_setup_py_ships_the_module():
    """``py_modules``: the wheel (and the sdist it is built from) carry ``convforge.py``."""
    for node in ast.walk(ast.parse((REPO_ROOT / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == "py_modules":
            assert ast.literal_eval(node.value) == ["convforge"]
            return
    raise AssertionError("setup.py has no py_modules")


class _Tiny(convforge.nn.Module):
    """Written with convforge's names only, as an embedding program would."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = convforge.nn.Conv2d(1, 4, 3)
        self.fc = convforge.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(convforge.functional.flatten(convforge.functional.relu(self.conv(x)), 1))


@pytest.fixture
def saved(tmp_path, rng) -> tuple[str, convforge.Executable]:
    exe = convforge.compile(_Tiny(), (1, 8, 8), batch=1)
    path = str(tmp_path / "tiny.cf")
    convforge.save(exe, path)
    return path, exe


def test_save_and_load_through_convforge(saved, rng):
    path, exe = saved
    x = rng.random((1, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(convforge.load(path).run(x), exe.run(x))


def test_serve_example_answers_each_image(saved, tmp_path, rng):
    path, exe = saved
    images = []
    for i in range(2):
        pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        images.append((str(tmp_path / f"{i}.png"), pixels))
        Image.fromarray(pixels, "L").save(images[-1][0])
    missing = str(tmp_path / "missing.png")
    stdin = "\n".join([images[0][0], missing, images[1][0]]) + "\n"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "serve.py"), path, "--top", "2"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    first, error, second = (json.loads(line) for line in result.stdout.splitlines())
    assert error == {"image": missing, "error": "No such file or directory"}
    for answer, (image, pixels) in zip((first, second), images, strict=True):
        logits = exe.run((pixels / np.float32(255.0))[None, None].astype(np.float32))[0]
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert answer["image"] == image
        assert [row["index"] for row in answer["top"]] == list(np.argsort(-probabilities)[:2])
        got = [row["probability"] for row in answer["top"]]
        np.testing.assert_allclose(got, np.sort(probabilities)[::-1][:2], rtol=1e-5)
