"""``convforge compress``, ``lottery`` and the ``.cfz`` side of ``eval`` and ``summary``, on
scikit-learn's digits (resized to LeNet-300-100's 28x28)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import engine
import zoo
from engine.cli_training import RUN_DEFAULTS, _fit_to
from engine.compress import load_compressed, save_compressed
from engine.data import Normalize
from graph import nn
from graph.compress.kmeans import share_weights
from graph.compress.prune import magnitude_masks, prunable
from tests.engine.test_cli import _main, _one_line_error

MODEL = "lenet_300_100"


def _initial_cfz(path) -> dict[str, np.ndarray]:
    """A .cfz of the untrained model at 70% sparsity, with a train checkpoint's metadata;
    returns the weights it stands for."""
    nn.manual_seed(0)
    state = zoo.get(MODEL).state_dict()
    names = prunable(state)
    masks = magnitude_masks({n: state[n] for n in names}, fraction=0.7)
    shared = {n: share_weights(state[n], 5, masks[n]) for n in names}
    run = {**RUN_DEFAULTS, "data": "digits"}
    metadata = {
        "model": MODEL,
        "arguments": run,
        "model_args": {"num_classes": 10},
        "input_shape": [1, 28, 28],
        "mean": [0.3],
        "std": [0.4],
    }
    save_compressed(path, shared, state, metadata, dict.fromkeys(names, 5))
    return {**state, **{n: s.weights() for n, s in shared.items()}}


def test_eval_reads_a_cfz_as_the_weights_it_holds(tmp_path, capsys):
    path = tmp_path / "m.cfz"
    weights = _initial_cfz(path)
    assert _main("eval", "--checkpoint", str(path), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    test = _fit_to(engine.data.load_dataset("digits", seed=0)[1], (28, 28))
    exe = engine.compile(zoo.get(MODEL), (1, 28, 28), batch=64)
    exe.load_state_dict(weights)
    norm = Normalize(np.array([0.3], np.float32), np.array([0.4], np.float32))
    expected = engine.train.evaluate(exe, test, norm)
    assert report["top1"] == expected["top1"] and report["images"] == len(test)
    for name, array in load_compressed(path).tensors.items():
        np.testing.assert_array_equal(array, weights[name])


def test_damaged_cfz_is_one_line_naming_the_fault(tmp_path, capsys):
    path = tmp_path / "m.cfz"
    _initial_cfz(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 100])
    err = _one_line_error(capsys, "eval", "eval", "--checkpoint", str(path))
    assert f"{path}: truncated: section classifier.2.bias ends at byte" in err
    damaged = bytearray(blob)
    damaged[-5000] ^= 0xFF
    path.write_bytes(bytes(damaged))
    err = _one_line_error(capsys, "summary", "summary", MODEL, "--checkpoint", str(path))
    assert re.search(r"corrupted: section \S+ fails its CRC-32", err)


def test_compress_refuses_bad_flags_before_work(tmp_path, capsys):
    ckpt = tmp_path / "none.ckpt"
    err = _one_line_error(capsys, "compress", "compress", "--checkpoint", str(ckpt))
    assert "does not exist" in err
    err = _one_line_error(
        capsys, "compress", "compress", "--checkpoint", str(ckpt), "--quantize", "conv=99"
    )
    assert "expected conv=BITS,fc=BITS with 1 to 16 bits" in err
    err = _one_line_error(
        capsys,
        "compress",
        "compress",
        "--checkpoint",
        str(ckpt),
        "--quantize",
        "none",
        "--out",
        str(tmp_path / "m.cfz"),
    )
    assert "--out writes shared weights" in err


@pytest.mark.slow
def test_compress_table_file_eval_and_summary_agree(tmp_path, capsys):
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "m.cfz"
    common = ["--data", "digits", "--batch", "64", "--no-progress"]
    assert _main("train", MODEL, *common, "--epochs", "2", "--checkpoint", str(ckpt)) == 0
    capsys.readouterr()
    argv = [
        "compress",
        "--checkpoint",
        str(ckpt),
        "--prune",
        "0.9",
        "--huffman",
        "--retrain-epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert _main(*argv) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split() for line in lines if line.strip()}
    for layer in ("classifier.0.weight", "classifier.2.weight", "classifier.4.weight"):
        weights, kept, bits = table[layer][1:4]
        assert float(kept) == pytest.approx(10.0, abs=0.1) and bits == "5"
    size = out.stat().st_size
    total = table["total"]
    assert total[-2] == f"{size:,}" and total[-3] == f"{4 * 266_610:,}"
    assert float(total[-1].rstrip("x")) == pytest.approx(4 * 266_610 / size, rel=1e-2)
    accuracy = re.search(
        r"top-1: dense ([\d.]+)%, pruned ([\d.]+)%, quantised ([\d.]+)%, coded ([\d.]+)%",
        "\n".join(lines),
    )
    assert accuracy and accuracy[3] == accuracy[4]
    assert _main("eval", "--checkpoint", str(out)) == 0
    assert f"top-1 {accuracy[4]}%" in capsys.readouterr().out
    assert _main("summary", MODEL, "--checkpoint", str(out)) == 0
    summary = capsys.readouterr().out
    assert "classifier.0.weight" in summary and f"{size:,}" in summary


@pytest.mark.slow
def test_lottery_prints_ticket_and_random_per_round(capsys):
    argv = [
        "lottery",
        MODEL,
        "--data",
        "digits",
        "--rounds",
        "2",
        "--rate",
        "0.5",
        "--epochs",
        "1",
        "--rewind",
        "3",
        "--no-progress",
    ]
    assert _main(*argv) == 0
    out = capsys.readouterr().out
    assert "rewound to step 3" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s", line)]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    left = [float(r[1].rstrip("%")) for r in rows]
    # 266,200 prunable weights: the output layer's 1,000 at half the rate
    assert left[1] == pytest.approx(100 * (265_200 * 0.5 + 1_000 * 0.75) / 266_200, abs=0.05)
    assert left[2] < left[1] and all(len(r) == 4 for r in rows[1:])
