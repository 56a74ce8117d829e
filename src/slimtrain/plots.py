"""PNG plots of experiment results (matplotlib, Agg backend; nothing is shown on screen)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_loss_curves", "plot_lambda", "plot_reconstructions", "plot_sweep_heatmaps"]

_STYLE = {
    "slimtrain": ("C0", "slimTrain + Adam"),
    "slimtrain-prodigy": ("C4", "slimTrain + Prodigy"),
    "adam": ("C1", "Adam"),
    "prodigy": ("C2", "Prodigy"),
    "schedulefree": ("C3", "schedule-free AdamW"),
}


def _label(method: str) -> tuple[str | None, str]:
    color, label = _STYLE.get(method, (None, method))
    return color, label


def plot_loss_curves(
    methods: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    title: str = "",
    ylabel: str = "loss",
) -> Path:
    """Validation (solid) and training (dashed) loss per epoch of every method, log scale."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, curves in methods.items():
        color, label = _label(method)
        val = np.asarray(curves.get("val_loss", []), dtype=float)
        train = np.asarray(curves.get("train_loss", []), dtype=float)
        if val.size and np.isfinite(val).any():
            ax.plot(np.arange(val.size), val, "-", color=color, label=f"{label} (validation)")
        if train.size:
            ax.plot(np.arange(train.size), train, "--", color=color, alpha=0.7,
                    label=f"{label} (training)")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_lambda(
    traces: Mapping[str, Sequence[float]], path: str | Path, title: str = "", xlabel: str = "step"
) -> Path:
    """The cumulative regularization Lambda over steps (log scale) for each slimTrain run."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, trace in traces.items():
        color, label = _label(method)
        values = np.asarray(trace, dtype=float)
        ax.plot(np.arange(1, values.size + 1), values, color=color, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(r"$\Lambda$ (cumulative regularization)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if traces:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reconstructions(
    targets: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    path: str | Path,
    title: str = "",
) -> Path:
    """Rows: the targets, then each method's reconstructions; images ``(n, H, W)``."""
    rows = 1 + len(predictions)
    n = targets.shape[0]
    fig, axes = plt.subplots(rows, n, figsize=(1.1 * n, 1.2 * rows), squeeze=False)
    vmin, vmax = float(targets.min()), float(targets.max())
    names = ["target", *predictions]
    images = [targets, *predictions.values()]
    for r, (name, block) in enumerate(zip(names, images, strict=True)):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(block[c], cmap="gray", vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(_label(name)[1], fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_sweep_heatmaps(
    grids: Mapping[str, np.ndarray],
    lrs: Sequence[float],
    regs: Sequence[float],
    path: str | Path,
    title: str = "final validation loss",
) -> Path:
    """Heatmaps of the final validation loss over (learning rate, regularization), one panel a
    method, side by side with one shared log colour scale.

    The panels share the learning-rate axis: only the first is labelled, and constrained layout
    keeps tick labels, titles and the colour bar apart."""
    values = np.concatenate([np.asarray(g, dtype=float).ravel() for g in grids.values()])
    finite = values[np.isfinite(values) & (values > 0)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (1.0, 10.0)
    norm = matplotlib.colors.LogNorm(vmin=lo, vmax=max(hi, lo * 1.0001))
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids) + 1.0, 3.6),
                             squeeze=False, layout="constrained")
    image = None
    for k, (ax, (method, grid)) in enumerate(zip(axes[0], grids.items(), strict=True)):
        arr = np.asarray(grid, dtype=float)
        image = ax.imshow(arr, cmap="viridis", norm=norm, origin="lower")
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                finite_cell = math.isfinite(arr[i, j])
                text = f"{arr[i, j]:.3g}" if finite_cell else "nan"  # nan cells are blank
                ax.text(j, i, text, ha="center", va="center", color="w" if finite_cell else "k",
                        fontsize=8)
        ax.set_xticks(range(len(regs)), [f"{r:g}" for r in regs])
        ax.set_yticks(range(len(lrs)), [f"{r:g}" for r in lrs])
        ax.set_xlabel("regularization (weight decay)")
        if k == 0:
            ax.set_ylabel("learning rate")
        ax.set_title(_label(method)[1])
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label=title)
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return target
