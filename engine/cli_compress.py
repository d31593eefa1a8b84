"""The compression subcommands of ``convforge``: ``compress`` and ``lottery``, and the ``.cfz``
side of ``eval`` and ``summary``.

- ``compress MODEL --checkpoint C``: Deep Compression (Han et al. 2016) on a checkpoint of
  ``convforge train``: magnitude pruning to ``--prune`` in ``--prune-rounds`` rounds, each
  followed by ``--retrain-epochs`` of masked retraining; per-layer k-means weight sharing
  (``--quantize conv=8,fc=5``) with grouped-gradient centroid fine-tuning; then the ``.cfz``
  file, Huffman-coded with ``--huffman`` (fixed-width fields without). It prints each layer's
  weights, kept share, bits, bytes before and after and ratio, the totals (counting every byte
  of the file: header, codebooks, code tables, streams and the uncompressed tensors), and the
  test top-1 of the dense, pruned, quantised and coded (decoded from the file) models.
- ``lottery MODEL --data D --rounds R --rate p``: iterative magnitude pruning and the winning
  ticket against a random re-initialisation of its mask (Frankle & Carbin 2019).
- ``eval --checkpoint F.cfz`` and ``summary MODEL --checkpoint F.cfz``: a compressed file is
  recognised by its magic bytes; eval decodes it and evaluates it as ``eval`` does a checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import engine
import zoo
from engine.cli_training import (
    RUN_DEFAULTS,
    UsageError,
    _saved_metadata,
    evaluate_checkpoint,
    prepare,
    take_checkpoint_run,
)
from engine.compress import (
    TicketTrainer,
    compile_masked,
    finetune_centroids,
    is_compressed,
    load_compressed,
    retrain,
    rewound_weights,
    save_compressed,
    set_masks,
)
from engine.data import Normalize
from engine.optim import SGD, Adam
from engine.train import evaluate, load_weights
from graph import nn
from graph.compress import cfz
from graph.compress.kmeans import DEFAULT_BITS, share_weights
from graph.compress.lottery import find_tickets
from graph.compress.prune import iterative_fractions, layer_kind, magnitude_masks, prunable

# Keys of a training checkpoint's metadata that rebuild its model and data (kept in a .cfz).
_REBUILD = ("model", "arguments", "model_args", "input_shape", "mean", "std")


# **** Arguments ****


def parse_bits(text: str) -> dict[str, int] | None:
    """``conv=8,fc=5`` (either may be left out: its default) or ``none``."""
    if text == "none":
        return None
    bits = dict(DEFAULT_BITS)
    for item in filter(None, text.split(",")):
        kind, _, value = item.partition("=")
        if kind not in bits or not value.isdigit() or not 1 <= int(value) <= 16:
            raise UsageError(
                f"--quantize {text}: expected conv=BITS,fc=BITS with 1 to 16 bits, or none, "
                f"but got {item!r}"
            )
        bits[kind] = int(value)
    return bits


def _checkpoint_run(args: argparse.Namespace, saved: dict, path: str) -> None:
    """The model and data arguments of the run that wrote ``saved``, as ``eval`` takes them."""
    take_checkpoint_run(args, saved, path, ("data", "input", "seed", "batch", "dtype"))


def _norm(saved: dict) -> Normalize:
    return Normalize(np.array(saved["mean"], np.float32), np.array(saved["std"], np.float32))


# **** compress ****


def compress(args: argparse.Namespace) -> int:
    """``convforge compress``: check everything, then prune, share, code, report."""
    bits = parse_bits(args.quantize)
    if args.out is not None:
        if bits is None:
            raise UsageError("--out writes shared weights: pass --quantize (e.g. conv=8,fc=5)")
        if not Path(args.out).parent.is_dir():
            raise UsageError(f"--out {args.out}: the folder {Path(args.out).parent} does not exist")
    saved = _saved_metadata(args.checkpoint)
    _checkpoint_run(args, saved, args.checkpoint)
    run, norm = saved["arguments"], _norm(saved)
    train, test, model, _, _ = prepare(args)
    names = prunable(model.state_dict())
    optimizer = SGD(
        lr=args.lr if args.lr is not None else run["lr"] / 10,  # Han et al.: retrain at 1/10
        momentum=run["momentum"],
        weight_decay=run["weight_decay"],
    )
    ones = {n: np.ones(model.state_dict()[n].shape, bool) for n in names}
    exe = compile_masked(model, ones, optimizer, train.sample_shape, args.batch, args.dtype)
    load_weights(args.checkpoint, exe)
    top1 = {"dense": evaluate(exe, test, norm)["top1"]}
    masks = ones
    if args.prune > 0:
        masks = _prune(exe, masks, train, norm, args)
        top1["pruned"] = evaluate(exe, test, norm)["top1"]
    before = sum(np.asarray(t).nbytes for t in exe.state_dict().values())
    if bits is None:
        _print_accuracies(top1)
        return 0
    shared = {
        n: share_weights(exe.params[n], bits[layer_kind(exe.params[n])], masks[n]) for n in names
    }
    exe.set_tensors({n: s.weights() for n, s in shared.items()})
    if args.centroid_epochs:
        progress = not args.no_progress
        epochs, lr = args.centroid_epochs, optimizer.lr
        finetune_centroids(exe, shared, train, epochs, lr, norm, args.seed, progress)
    top1["quantised"] = evaluate(exe, test, norm)["top1"]
    index_bits = {n: DEFAULT_BITS[layer_kind(exe.params[n])] for n in names}
    metadata = {key: saved[key] for key in _REBUILD if key in saved}
    metadata["compression"] = {"prune": args.prune, "bits": bits, "huffman": args.huffman}
    blob, sizes = save_compressed(
        args.out, shared, exe.state_dict(), metadata, index_bits, args.huffman
    )
    coded = cfz.unpack(blob, args.out or "the packed model")
    exe.load_state_dict(coded.tensors)
    top1["coded"] = evaluate(exe, test, norm)["top1"]
    _print_sizes(sizes, before, len(blob), coded.header_bytes)
    _print_accuracies(top1)
    if args.out:
        print(f"wrote {args.out} ({len(blob):,} bytes)")
    return 0


def _prune(exe, masks: dict, train, norm: Normalize, args: argparse.Namespace) -> dict:
    """``--prune-rounds`` rounds of magnitude pruning to ``--prune``, each followed by
    ``--retrain-epochs`` of training with the masks held (Han et al. 2015)."""
    for fraction in iterative_fractions(args.prune, args.prune_rounds):
        weights = {name: exe.params[name] for name in masks}
        masks = magnitude_masks(weights, fraction, scope=args.scope, masks=masks)
        set_masks(exe, masks)
        retrain(exe, train, args.retrain_epochs, norm, args.seed, not args.no_progress)
    return masks


def _print_sizes(sizes: list[cfz.LayerSize], before: int, total: int, header: int) -> None:
    """The per-layer table, then the rest of the file and the totals."""
    rows = [("layer", "weights", "kept %", "bits", "bytes before", "bytes after", "ratio")]
    for s in sizes:
        rows.append(
            (
                s.name,
                f"{s.weights:,}",
                f"{100 * s.kept / max(s.weights, 1):.1f}",
                str(s.bits),
                f"{4 * s.weights:,}",
                f"{s.nbytes:,}",
                f"{4 * s.weights / max(s.nbytes, 1):.1f}x",
            )
        )
    rest = total - header - sum(s.nbytes for s in sizes)
    rest_before = before - sum(4 * s.weights for s in sizes)
    rows.append(("other tensors", "", "", "32", f"{rest_before:,}", f"{rest:,}", ""))
    rows.append(("header", "", "", "", "", f"{header:,}", ""))
    kept = sum(s.kept for s in sizes) / max(sum(s.weights for s in sizes), 1)
    weights = sum(s.weights for s in sizes)
    rows.append(
        (
            "total",
            f"{weights:,}",
            f"{100 * kept:.1f}",
            "",
            f"{before:,}",
            f"{total:,}",
            f"{before / total:.1f}x",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))


def _print_accuracies(top1: dict[str, float]) -> None:
    print("top-1: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in top1.items()))


# **** eval and summary of a .cfz ****


def evaluate_any(args: argparse.Namespace) -> int:
    """``convforge eval``: a ``.cfz`` here, any other file as ``evaluate_checkpoint``."""
    if not Path(args.checkpoint).is_file() or not is_compressed(args.checkpoint):
        return evaluate_checkpoint(args)
    coded = load_compressed(args.checkpoint)
    _checkpoint_run(args, coded.metadata, args.checkpoint)
    _, test, model, _, _ = prepare(args)
    exe = engine.compile(model, test.sample_shape, batch=args.batch, dtype=args.dtype)
    exe.load_state_dict(coded.tensors)
    scores = evaluate(exe, test, _norm(coded.metadata))
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "images": len(test), **scores}))
    else:
        print(
            f"{args.model} from {args.checkpoint} on {args.data} ({len(test)} test images): "
            f"loss {scores['loss']:.4f}, top-1 {100 * scores['top1']:.2f}%, "
            f"top-5 {100 * scores['top5']:.2f}%"
        )
    return 0


def summary_any(args: argparse.Namespace) -> int:
    """``convforge summary``: the model's summary, then a ``.cfz``'s per-layer sizes."""
    from engine.cli import summary  # the command line imports this module

    if args.checkpoint is None:
        return summary(args)
    coded = load_compressed(args.checkpoint)
    if coded.metadata.get("model") != args.model:
        raise UsageError(f"{args.checkpoint} holds {coded.metadata.get('model')}, not {args.model}")
    status = summary(args)
    if not args.json:
        before = sum(t.nbytes for t in coded.tensors.values())
        total = Path(args.checkpoint).stat().st_size
        print()
        _print_sizes(coded.layers, before, total, coded.header_bytes)
    return status


# **** lottery ****


def lottery(args: argparse.Namespace) -> int:
    """``convforge lottery``: train dense, then ``rounds`` of pruning; ticket vs random."""
    for key in ("data", "batch", "seed"):  # convforge train's defaults
        if getattr(args, key) is None:
            setattr(args, key, RUN_DEFAULTS[key])
    train, test, model, kwargs, norm = prepare(args)
    state = {n: np.array(v) for n, v in model.state_dict().items()}
    names = prunable(state)
    nn.manual_seed(args.seed + 1)  # the control's re-initialisation
    random_start = {n: np.array(v) for n, v in zoo.get(args.model, **kwargs).state_dict().items()}
    optimizer = Adam(lr=args.lr) if args.optimizer == "adam" else SGD(lr=args.lr, momentum=0.9)
    ones = {n: np.ones(state[n].shape, bool) for n in names}
    exe = compile_masked(model, ones, optimizer, train.sample_shape, args.batch)
    progress = not args.no_progress
    start = rewound_weights(exe, train, args.rewind, norm, args.seed) if args.rewind else state
    trainer = TicketTrainer(exe, train, test, args.epochs, norm, args.seed, progress)
    trained, dense = trainer(state, ones)
    rounds = find_tickets(
        start, random_start, trained, names, trainer, args.rounds, args.rate, names[-1]
    )
    reset = f"rewound to step {args.rewind}" if args.rewind else "reset to initial values"
    print(
        f"{args.model} on {args.data}: trained {args.epochs} epoch(s) each time, survivors {reset}"
    )
    print(f"{'round':>5}  {'weights left':>12}  {'ticket top-1':>12}  {'random top-1':>12}")
    print(f"{0:>5}  {100.0:>11.1f}%  {100 * dense:>11.2f}%  {'':>12}")
    for i, result in enumerate(rounds, 1):
        print(
            f"{i:>5}  {100 * result.remaining:>11.1f}%  {100 * result.ticket:>11.2f}%  "
            f"{100 * result.random:>11.2f}%"
        )
    return 0
