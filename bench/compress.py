"""Deep Compression and lottery tickets on Fashion-MNIST, through the ``convforge`` commands.

- LeNet-300-100 and Caffe's LeNet (``lenet_300_100``, ``lenet_caffe``): ``convforge train``,
  then ``convforge compress`` (global magnitude pruning in rounds with masked retraining,
  k-means sharing at conv 8 / fc 5 bits with centroid fine-tuning, Huffman coding). The ratio
  counts every byte of the ``.cfz`` against the float32 checkpoint's tensors; top-1 on the
  10,000 test images for the dense, pruned, quantised and coded (decoded from the file)
  models. Target (Han et al. 2016: 40x and 39x on MNIST): >= 40x for <= 0.5 points of top-1.
- ``convforge lottery lenet_300_100`` (Adam 1.2e-3, 30% per round where the paper prunes 20%,
  to go under 20% in fewer rounds; survivors reset to their initial values; one epoch per
  training): the sparsest ticket that reaches the dense top-1, against the random
  re-initialisation of its mask. Target: <= 20% of the weights.

Epochs are few (the machine has two shared cores): the bench runs in minutes, not hours, so
the dense models are short of their converged accuracy. Run: ``python bench/compress.py``
(``--quick`` for a smoke run). Needs Fashion-MNIST (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import environment_line, print_table  # noqa: E402

from engine import cli  # noqa: E402

# model -> (train epochs, train lr, prune, prune rounds, retrain epochs per round). Caffe's
# LeNet (no ReLU after its convs) diverges at convforge train's default lr of 0.05.
SETTINGS = {"lenet_300_100": (3, 0.05, 0.93, 2, 1), "lenet_caffe": (2, 0.01, 0.95, 3, 2)}
_ACCURACY = r"top-1: dense ([\d.]+)%, pruned ([\d.]+)%, quantised ([\d.]+)%, coded ([\d.]+)%"
_DATA = "--data fashion-mnist --batch 64 --no-progress"


def _run(command: str) -> str:
    """One ``convforge`` command line in-process; its stdout (echoed), or an error."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(command.split())
    print(out.getvalue(), end="", flush=True)
    if status != 0:
        raise SystemExit(f"convforge {command} failed with status {status}")
    return out.getvalue()


def compress_row(model: str, folder: Path, quick: bool) -> list[str]:
    epochs, lr, prune, rounds, retrain = SETTINGS[model]
    if quick:
        epochs, rounds, retrain = 1, 1, 1
    ckpt, out = folder / f"{model}.ckpt", folder / f"{model}.cfz"
    start = time.perf_counter()
    _run(f"train {model} {_DATA} --epochs {epochs} --lr {lr} --checkpoint {ckpt}")
    report = _run(
        f"compress --checkpoint {ckpt} --prune {prune} --scope global --prune-rounds {rounds} "
        f"--retrain-epochs {retrain} --huffman --out {out} --no-progress"
    )
    total = next(line for line in report.splitlines() if line.startswith("total")).split()
    dense, pruned, quantised, coded = (float(v) for v in re.search(_ACCURACY, report).groups())
    ratio = float(total[-1].rstrip("x"))
    met = "yes" if ratio >= 40 and dense - coded <= 0.5 else "no"
    accuracies = [f"{v:.2f}" for v in (dense, pruned, quantised, coded)]
    seconds = f"{time.perf_counter() - start:.0f}"
    sizes = [total[1], f"{total[2]}%", total[-3], total[-2], f"{ratio:.1f}x"]
    return [model, *sizes, *accuracies, f"{coded - dense:+.2f}", met, seconds]


def lottery_rows(quick: bool) -> tuple[list[list[str]], str]:
    rounds, epochs = (2, 1) if quick else (5, 1)
    report = _run(f"lottery lenet_300_100 {_DATA} --rounds {rounds} --rate 0.3 --epochs {epochs}")
    rows = [line.split() for line in report.splitlines() if re.match(r"\s+\d+\s", line)]
    rows = [row + ["-"] * (4 - len(row)) for row in rows]  # the dense row has no control
    dense = float(rows[0][2].rstrip("%"))
    winners = [r for r in rows[1:] if float(r[2].rstrip("%")) >= dense]
    if not winners:
        return rows, f"no ticket reached the dense top-1 {dense:.2f}%"
    sparsest = min(winners, key=lambda r: float(r[1].rstrip("%")))
    left, ticket, random = (float(v.rstrip("%")) for v in sparsest[1:4])
    met = "met" if left <= 20 and random < dense else "not met"
    return rows, (
        f"sparsest ticket at the dense top-1 ({dense:.2f}%): {left:.1f}% of the weights, ticket "
        f"{ticket:.2f}%, random re-init {random:.2f}% (target <= 20%, random below dense: {met})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch each (a smoke run)")
    args = parser.parse_args()
    print(environment_line())
    with tempfile.TemporaryDirectory() as folder:
        rows = [compress_row(model, Path(folder), args.quick) for model in SETTINGS]
    lottery, verdict = lottery_rows(args.quick)
    print("\nDeep Compression on Fashion-MNIST (top-1 %, test set)")
    header = "model weights kept bytes-before .cfz-bytes ratio dense pruned quantised coded"
    print_table([*header.split(), "delta", ">=40x, <=0.5 pt", "s"], rows)
    print("\nLottery ticket, LeNet-300-100 on Fashion-MNIST")
    print_table(["round", "weights left", "ticket top-1", "random top-1"], lottery)
    print(verdict)


if __name__ == "__main__":
    main()
