"""Every picture of ``engine.analysis``, drawn with matplotlib's Agg backend (no display) and
returned as PNG bytes, so a caller writes it atomically or inlines it in the HTML report.

matplotlib is optional (``pip install 'convforge[plot]'``): the first picture asked for without
it raises one line saying so.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.checkpoint import write_atomically
from graph.memory import MemoryPlan, align


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or a one-line RuntimeError without it."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(
            "pictures need matplotlib: pip install 'convforge[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png(figure) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()


def save_png(figure, path: str | Path) -> None:
    write_atomically(Path(path), png(figure))


# **** Training curves ****


def curves_figure(rows: Sequence[dict[str, float | None]], title: str = "training"):
    """Loss (training and validation), top-1/top-5 accuracy and learning rate per epoch."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, (loss, accuracy, lr) = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    epochs = [row["epoch"] for row in rows]

    def series(key: str) -> tuple[list, list]:
        kept = [(e, row[key]) for e, row in zip(epochs, rows, strict=True) if row[key] is not None]
        return [e for e, _ in kept], [v for _, v in kept]

    loss.plot(*series("train_loss"), "o-", label="training")
    loss.plot(*series("val_loss"), "s-", label="validation")
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    loss.legend()
    for key, label in (("top1", "top-1"), ("top5", "top-5")):
        e, v = series(key)
        accuracy.plot(e, [100 * a for a in v], "o-", label=label)
    accuracy.set(xlabel="epoch", ylabel="%", title="validation accuracy", ylim=(0, 101))
    accuracy.legend()
    lr.plot(*series("lr"), "o-", color="tab:purple")
    lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    for axes in (loss, accuracy, lr):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title)
    return figure


# **** Loss landscape ****


def landscape_figure(
    alphas: np.ndarray,
    betas: np.ndarray | None,
    loss: np.ndarray,
    accuracy: np.ndarray,
    title: str,
    xlabel: str = "alpha",
):
    """1-D: loss and accuracy along the direction. 2-D: a contour map and a surface of the loss
    (Li et al. 2018's figures), with the trained weights at the origin."""
    plt = pyplot()
    if betas is None:
        figure, axes = plt.subplots(figsize=(6.5, 4))
        axes.plot(alphas, loss, "o-", color="tab:blue")
        axes.set(xlabel=xlabel, ylabel="loss", title=title)
        axes.grid(alpha=0.3)
        twin = axes.twinx()
        twin.plot(alphas, 100 * np.asarray(accuracy), "s--", color="tab:red")
        twin.set_ylabel("top-1 accuracy (%)", color="tab:red")
        twin.set_ylim(0, 101)
        return figure
    figure = plt.figure(figsize=(12, 5))
    contour = figure.add_subplot(1, 2, 1)
    a, b = np.meshgrid(alphas, betas, indexing="ij")
    levels = np.linspace(loss.min(), loss.max(), 20) if loss.max() > loss.min() else 20
    filled = contour.contourf(a, b, loss, levels=levels, cmap="viridis")
    contour.contour(a, b, loss, levels=levels, colors="k", linewidths=0.4)
    contour.plot([0], [0], "r*", markersize=12)
    contour.set(xlabel="alpha", ylabel="beta", title=f"{title}: loss contours")
    contour.set_aspect("equal")
    contour.locator_params(nbins=5)
    figure.colorbar(filled, ax=contour, label="loss")
    surface = figure.add_subplot(1, 2, 2, projection="3d")
    surface.plot_surface(a, b, loss, cmap="viridis", linewidth=0, antialiased=True)
    surface.set(xlabel="alpha", ylabel="beta", title="loss surface")
    surface.locator_params(nbins=5)
    return figure


# **** Shift-invariance ****


def consistency_figure(shifts: Sequence[int], accuracy: Sequence[float], title: str):
    """Top-1 accuracy against a diagonal shift of the input (Zhang 2019's figure)."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4))
    axes.plot(shifts, [100 * a for a in accuracy], "o-")
    axes.set(xlabel="diagonal shift (pixels)", ylabel="top-1 accuracy (%)", title=title)
    axes.set_ylim(0, 101)
    axes.grid(alpha=0.3)
    return figure


# **** Filters and feature maps ****


def image_grid_figure(images: np.ndarray, title: str, rgb: bool = False):
    """``images`` [K, H, W] (or [K, H, W, 3] with ``rgb``) tiled in a square-ish grid, each
    scaled to its own range (filters and feature maps have no common scale)."""
    plt = pyplot()
    count = len(images)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    figure, grid = plt.subplots(rows, cols, figsize=(1.3 * cols + 0.4, 1.3 * rows + 0.6))
    for index, axes in enumerate(np.atleast_1d(grid).ravel()):
        axes.axis("off")
        if index < count:
            image = images[index].astype(np.float64)
            span = image.max() - image.min()
            image = (image - image.min()) / span if span > 0 else np.zeros_like(image)
            axes.imshow(image, cmap=None if rgb else "viridis", interpolation="nearest")
    figure.suptitle(title)
    return figure


# **** Memory plan ****


def memory_plan_figure(plan: MemoryPlan, title: str):
    """Arena offset against execution step: one rectangle per buffer from its first to its
    last step, the live-bytes curve (the sum of the buffers live at each step), the lower
    bound (that curve's peak) and the arena size."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    figure, axes = plt.subplots(figsize=(11, 5.5))
    steps = max((b.last_use for b in plan.buffers), default=0) + 1
    live = np.zeros(steps + 1)
    colours = plt.get_cmap("tab20")
    mib = 2.0**20
    for index, buffer in enumerate(plan.buffers):
        offset = plan.offsets[buffer.name]
        axes.add_patch(
            Rectangle(
                (buffer.first_use, offset / mib),
                buffer.last_use - buffer.first_use + 1,
                buffer.nbytes / mib,
                facecolor=colours(index % 20),
                edgecolor="k",
                linewidth=0.3,
                alpha=0.75,
            )
        )
        live[buffer.first_use : buffer.last_use + 1] += align(buffer.nbytes)
    axes.step(np.arange(steps + 1), live / mib, where="post", color="k", label="live bytes")
    axes.axhline(plan.lower_bound_bytes / mib, color="tab:red", linestyle="--", label="lower bound")
    axes.axhline(plan.arena_bytes / mib, color="tab:blue", linestyle=":", label="arena")
    axes.set_xlim(0, steps)
    axes.set_ylim(0, 1.08 * max(plan.arena_bytes, 1) / mib)
    axes.set(xlabel="execution step", ylabel="arena offset (MiB)", title=title)
    axes.legend(loc="upper left")
    return figure
