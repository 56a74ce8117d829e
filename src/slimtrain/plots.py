"""Figures of experiment results: :class:`matplotlib.figure.Figure` objects, drawn by the Agg
canvas when saved (:func:`save_figure`). No pyplot, no global backend: nothing is shown on
screen and importing this module changes no matplotlib state."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from slimtrain._io import atomic_write

__all__ = [
    "new_figure",
    "plot_accuracy_curves",
    "plot_lambda",
    "plot_loss_curves",
    "plot_reconstructions",
    "plot_sweep_heatmaps",
    "save_figure",
]

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
    title: str = "",
    ylabel: str = "loss",
) -> Figure:
    """Validation (solid) and training (dashed) loss per epoch of every method, log scale."""
    return _plot_curves(methods, "loss", title, ylabel, log=True)


def plot_accuracy_curves(
    methods: Mapping[str, Mapping[str, Sequence[float]]],
    title: str = "",
    ylabel: str = "accuracy",
) -> Figure:
    """Validation (solid) and training (dashed) accuracy per epoch of every method (the
    ``val_accuracy`` and ``train_accuracy`` lists, fractions in [0, 1]). The axis spans the
    accuracies after training starts (epoch 0, the untrained network, may lie below it)."""
    fig = _plot_curves(methods, "accuracy", title, ylabel, log=False)
    trained = np.asarray([v for curves in methods.values() for key in ("val_accuracy",
                          "train_accuracy") for v in list(curves.get(key, []))[1:]], dtype=float)
    trained = trained[np.isfinite(trained)]
    if trained.size:
        low, high = float(trained.min()), float(trained.max())
        pad = max(0.05 * (high - low), 0.005)
        fig.axes[0].set_ylim(max(low - pad, 0.0), min(high + pad, 1.0))
    return fig


def _plot_curves(
    methods: Mapping[str, Mapping[str, Sequence[float]]], key: str, title: str, ylabel: str,
    log: bool,
) -> Figure:
    fig, ax = new_figure(figsize=(6.4, 4.2))
    for method, curves in methods.items():
        color, label = _label(method)
        val = np.asarray(curves.get(f"val_{key}", []), dtype=float)
        train = np.asarray(curves.get(f"train_{key}", []), dtype=float)
        if val.size and np.isfinite(val).any():
            ax.plot(np.arange(val.size), val, "-", color=color, label=f"{label} (validation)")
        if train.size:
            ax.plot(np.arange(train.size), train, "--", color=color, alpha=0.7,
                    label=f"{label} (training)")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def plot_lambda(
    traces: Mapping[str, Sequence[float]], title: str = "", xlabel: str = "step"
) -> Figure:
    """The cumulative regularization Lambda over steps (log scale) for each slimTrain run."""
    fig, ax = new_figure(figsize=(6.4, 4.2))
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
    return fig


def plot_reconstructions(
    targets: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    title: str = "",
) -> Figure:
    """Rows: the targets, then each method's reconstructions; images ``(n, H, W)``."""
    rows = 1 + len(predictions)
    n = targets.shape[0]
    fig, axes = new_figure(rows, n, figsize=(1.1 * n, 1.2 * rows), squeeze=False)
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
    return fig


def plot_sweep_heatmaps(
    grids: Mapping[str, np.ndarray],
    lrs: Sequence[float],
    regs: Sequence[float],
    title: str = "final validation loss",
) -> Figure:
    """Heatmaps of the final validation loss over (learning rate, regularization), one panel a
    method, side by side with one shared log colour scale.

    The panels share the learning-rate axis: only the first is labelled, and constrained layout
    keeps tick labels, titles and the colour bar apart."""
    values = np.concatenate([np.asarray(g, dtype=float).ravel() for g in grids.values()])
    finite = values[np.isfinite(values) & (values > 0)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (1.0, 10.0)
    norm = LogNorm(vmin=lo, vmax=max(hi, lo * 1.0001))
    fig, axes = new_figure(1, len(grids), figsize=(4.2 * len(grids) + 1.0, 3.6),
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
    return fig


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure on the Agg canvas and its axes (``Figure.subplots``); ``figsize`` and
    ``layout`` go to the figure, the rest to ``subplots``."""
    figure = Figure(figsize=kwargs.pop("figsize", None), layout=kwargs.pop("layout", None))
    FigureCanvasAgg(figure)
    return figure, figure.subplots(nrows, ncols, **kwargs)


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` as PNG (atomically)."""

    def write(handle: IO[Any]) -> None:
        figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")

    return atomic_write(path, write, binary=True)
