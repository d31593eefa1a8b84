"""Saved models: ``engine.save``/``engine.load`` give back an executable that behaves exactly like
the saved one (outputs bit for bit, weights, listing, training continued), also in a fresh
process; every bad file is a ValueError naming the file and the fault; writes are atomic."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import engine
import graph.functional as F
import graph.nn as nn
import zoo
from engine import checkpoint
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.optim import SGD, Adam
from engine.saved import FORMAT_VERSION, graph_from_json, graph_to_json
from engine.train import save_training_checkpoint
from graph.trace import trace

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class SmallNet(nn.Module):
    """Conv, BatchNorm, a LeakyReLU with an inexact float slope, dropout: every kind of state
    a saved model must bring back (running statistics, ``num_batches_tracked``, the dropout
    stream, optimizer slots)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6, eps=1e-3, momentum=0.3)
        self.act = nn.LeakyReLU(1 / 3)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(0.1 + 0.2)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.conv(x))))
        return self.fc(self.dropout(F.flatten(x, 1)))


def _randomise_state(exe: engine.Executable, rng: np.random.Generator) -> None:
    """BatchNorm statistics away from their defaults, so a lost buffer changes the outputs."""
    for name, array in exe.params.items():
        if name.endswith("running_mean"):
            array[...] = 0.1 * rng.standard_normal(array.shape)
        elif name.endswith("running_var"):
            array[...] = rng.uniform(0.5, 1.5, array.shape)
    for counter in exe.extra_state.values():
        counter[...] = rng.integers(1, 1000)


def _assert_same_weights(loaded: engine.Executable, saved: engine.Executable) -> None:
    expected, got = saved.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].tobytes() == array.tobytes(), name
    assert list(loaded.params) == list(saved.params)


def _assert_same_run(loaded: engine.Executable, saved: engine.Executable, x: np.ndarray) -> None:
    loaded.poison_buffers()
    assert loaded.run(x).tobytes() == saved.run(x).tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("name", "input_shape"),
    [("lenet5", (1, 28, 28)), ("resnet18_cifar", (3, 32, 32)), ("mobilenet_v2", (3, 32, 32))],
)
def test_round_trip_is_exact(tmp_path, rng, name, input_shape, dtype):
    exe = engine.compile(zoo.get(name), input_shape, batch=2, dtype=dtype)
    _randomise_state(exe, rng)
    path = tmp_path / "model.cf"
    engine.save(exe, path)
    loaded = engine.load(path)
    x = rng.standard_normal((2, *input_shape)).astype(dtype)
    _assert_same_run(loaded, exe, x)
    _assert_same_weights(loaded, exe)
    assert str(loaded.graph) == str(exe.graph)
    assert str(loaded.traced_graph) == str(exe.traced_graph)
    assert loaded.options == exe.options and repr(loaded) == repr(exe)


def test_unoptimized_plan_round_trips(tmp_path, rng):
    exe = engine.compile(SmallNet(), (2, 8, 8), batch=3, optimize=False, reorder=False)
    path = tmp_path / "model.cf"
    engine.save(exe, path)
    loaded = engine.load(path)
    assert loaded.options == exe.options
    assert str(loaded.graph) == str(exe.graph) == str(exe.traced_graph)
    _assert_same_run(loaded, exe, rng.standard_normal((3, 2, 8, 8)).astype(np.float32))


def test_graph_json_keeps_attribute_types_and_floats_exactly():
    graph = trace(SmallNet(), (2, 8, 8), batch=2)
    back = graph_from_json(json.loads(json.dumps(graph_to_json(graph))))
    assert str(back) == str(graph)
    assert [v.name for v in back.inputs] == [v.name for v in graph.inputs]
    assert [v.name for v in back.params] == [v.name for v in graph.params]
    for ours, theirs in zip(back.nodes, graph.nodes, strict=True):
        assert ours.attrs == theirs.attrs, ours.name
        for key, value in theirs.attrs.items():
            assert type(ours.attrs[key]) is type(value), (ours.name, key)
    slopes = [n.attrs for n in back.nodes if n.op == "leaky_relu"]
    assert slopes and slopes[0]["negative_slope"] == 1 / 3


FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    import numpy as np
    import engine

    exe = engine.load(sys.argv[1])
    exe.poison_buffers()
    np.save(sys.argv[3], exe.run(np.load(sys.argv[2])))
    """
)


def test_load_in_a_fresh_process_gives_the_same_outputs(tmp_path, rng):
    exe = engine.compile(zoo.get("resnet18_cifar"), (3, 32, 32), batch=2)
    _randomise_state(exe, rng)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    paths = [tmp_path / name for name in ("model.cf", "x.npy", "out.npy")]
    engine.save(exe, paths[0])
    np.save(paths[1], x)
    subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, *map(str, paths)],
        cwd=REPO_ROOT,
        check=True,
        timeout=300,
    )
    assert np.load(paths[2]).tobytes() == exe.run(x).tobytes()


# **** Training ****


@pytest.mark.parametrize(
    "optimizer",
    [lambda: SGD(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True), lambda: Adam(lr=1e-3)],
    ids=["sgd", "adam"],
)
def test_training_continues_identically(tmp_path, rng, optimizer):
    exe = engine.compile(
        SmallNet(), (2, 8, 8), batch=4, train=True, optimizer=optimizer(), label_smoothing=0.1
    )
    batches = [
        (rng.standard_normal((4, 2, 8, 8)).astype(np.float32), rng.integers(0, 5, 4))
        for _ in range(5)
    ]
    for x, y in batches[:2]:
        exe.train_step(x, y)
    exe.optimizer.lr = 0.02  # as a schedule would have set it
    exe.train()
    path = tmp_path / "model.cf"
    engine.save(exe, path)
    loaded = engine.load(path)
    assert loaded.training and loaded.optimizer.steps == 2 and loaded.optimizer.lr == 0.02
    assert type(loaded.optimizer) is type(exe.optimizer)
    assert loaded.options == exe.options
    for x, y in batches[2:]:
        assert loaded.train_step(x, y) == exe.train_step(x, y)
    _assert_same_weights(loaded, exe)
    for name, array in exe.optimizer_state.items():
        assert loaded.optimizer_state[name].tobytes() == array.tobytes(), name
    assert loaded.rng_state["dropout.rng"].tobytes() == exe.rng_state["dropout.rng"].tobytes()
    _assert_same_run(loaded.eval(), exe.eval(), batches[0][0])


def test_inference_model_from_a_training_checkpoint(tmp_path, rng):
    model = zoo.get("lenet5", num_classes=7)
    exe = engine.compile(model, (1, 28, 28), batch=4, train=True, optimizer=SGD(momentum=0.9))
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    exe.train_step(x, rng.integers(0, 7, 4))
    path = tmp_path / "run.ckpt"
    metadata = {  # what convforge train records
        "model": "lenet5",
        "arguments": {"batch": 4, "dtype": "float32"},
        "model_args": {"num_classes": 7},
        "input_shape": [1, 28, 28],
    }
    save_training_checkpoint(str(path), exe, 1, None, 0, metadata)
    loaded = engine.load(path)
    assert loaded.optimizer is None and loaded.training_graph is None
    _assert_same_weights(loaded, exe)
    _assert_same_run(loaded, exe.eval(), x)
    with pytest.raises(RuntimeError, match="train_step needs an optimizer"):
        loaded.train_step(x, np.zeros(4, np.int64))


def test_a_checkpoint_without_the_model_is_refused(tmp_path):
    path = tmp_path / "weights.ckpt"
    save_checkpoint(path, {"w": np.zeros(3, np.float32)}, {"epoch": 1})
    with pytest.raises(ValueError, match=r"weights\.ckpt: .*neither a saved model"):
        engine.load(path)


# **** Bad files ****


@pytest.fixture
def saved(tmp_path) -> tuple[pathlib.Path, engine.Executable]:
    exe = engine.compile(SmallNet(), (2, 8, 8), batch=2)
    path = tmp_path / "model.cf"
    engine.save(exe, path)
    return path, exe


def _flip(path: pathlib.Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_in_the_header_json(saved):
    path, _ = saved
    header = path.read_bytes()[8:]
    _flip(path, 8 + header.index(b"conv.weight"))  # JSON stays valid: the digest catches it
    with pytest.raises(ValueError, match=r"model\.cf: corrupted checkpoint, the SHA-256"):
        engine.load(path)
    _flip(path, 8)  # the header's opening brace
    with pytest.raises(ValueError, match=r"model\.cf: not a ConvForge checkpoint: header is not"):
        engine.load(path)


def test_flipped_byte_in_the_tensor_data(saved):
    path, _ = saved
    _flip(path, path.stat().st_size - 5)
    with pytest.raises(ValueError, match=r"model\.cf: corrupted checkpoint, the SHA-256"):
        engine.load(path)


def test_truncated_file(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model\.cf: truncated or corrupted checkpoint"):
        engine.load(path)


def _rewrite(path: pathlib.Path, edit) -> None:
    """Change the saved model's metadata and write it back with a valid digest."""
    tensors, metadata = load_checkpoint(path)
    edit(metadata["saved_model"])
    save_checkpoint(path, tensors, metadata)


def test_newer_format_version(saved):
    path, _ = saved
    _rewrite(path, lambda model: model.update(version=FORMAT_VERSION + 1))
    newer = rf"model\.cf: saved by a newer ConvForge .*version {FORMAT_VERSION + 1}"
    with pytest.raises(ValueError, match=newer):
        engine.load(path)


def test_unknown_op(saved):
    path, _ = saved
    _rewrite(path, lambda model: model["graph"]["nodes"][0].update(op="warp_drive"))
    with pytest.raises(ValueError, match=r"model\.cf: .*'warp_drive', which this version"):
        engine.load(path)


def test_graph_that_breaks_a_shape_rule(saved):
    path, _ = saved
    _rewrite(path, lambda model: model["graph"]["nodes"][0]["attrs"].update(stride=[2, 2]))
    with pytest.raises(ValueError, match=r"model\.cf: invalid saved model: conv: conv2d shape"):
        engine.load(path)


def test_weights_that_do_not_fit_the_graph(saved):
    path, _ = saved
    tensors, metadata = load_checkpoint(path)
    tensors["fc.weight"] = tensors["fc.weight"][:, :10]
    save_checkpoint(path, tensors, metadata)
    with pytest.raises(ValueError, match=r"model\.cf: the saved weights do not fit.*fc\.weight"):
        engine.load(path)
    del tensors["fc.weight"]
    save_checkpoint(path, tensors, metadata)
    with pytest.raises(ValueError, match=r"model\.cf: .* missing \['fc\.weight'\]"):
        engine.load(path)


def test_failed_write_leaves_the_old_file_whole(saved, monkeypatch, rng):
    path, exe = saved
    before = path.read_bytes()
    other = engine.compile(SmallNet(), (2, 8, 8), batch=2)

    def write_half_then_fail(fd: int, data: memoryview) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_all", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        engine.save(other, path)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # the temporary file is gone
    _assert_same_run(engine.load(path), exe, rng.standard_normal((2, 2, 8, 8)).astype("f4"))
