"""Training experiments as functions: one run comparing methods, the sensitivity sweep, the
demo. Each writes ``metrics.csv``, ``summary.json`` and PNG plots to its output folder."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from slimtrain import plots
from slimtrain.experiments.runner import (
    METHODS,
    RunConfig,
    _json_safe,
    run_methods,
    write_report,
)
from slimtrain.experiments.setups import experiment_defaults, make_setup
from slimtrain.training.distributed import is_main_process

__all__ = ["run_experiment", "run_sweep", "run_demo", "sweep_table"]

logger = logging.getLogger(__name__)


def run_experiment(
    name: str,
    methods: Sequence[str],
    config: RunConfig,
    out_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    quick: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``methods`` on experiment ``name`` and write the report folder.

    ``data_dir``, ``quick`` and ``cache_dir`` (the CDR simulations' cache, default
    ``$SLIMTRAIN_CACHE`` or ``~/.cache/slimtrain``) go to :func:`make_setup`;
    ``checkpoint_dir`` (a checkpoint per method after every epoch) and ``resume`` (continue
    from them) to :func:`~slimtrain.experiments.run_methods`.

    Returns the summary (also written as ``summary.json``): ``{"experiment", "config",
    "methods": {method: {"val_loss": [...], "train_loss": [...], "val_rel_error": [...],
    "sum_lambda": [...], "epoch_time": [...], "best_val_loss": float, ...}}}`` with lists
    indexed by epoch (0 = before training).
    """
    setup = make_setup(name, seed=config.seed, data_dir=data_dir, quick=quick,
                       cache_dir=cache_dir)
    results = run_methods(setup, methods, config, progress=progress,
                          checkpoint_dir=checkpoint_dir, resume=resume)
    if not is_main_process():
        return {}
    return write_report(setup, config, results, Path(out_dir), {"methods": list(methods),
                                                            "quick": quick})


def run_demo(
    quick: bool = False, out_dir: str | os.PathLike[str] = "runs/demo", progress: bool = True
) -> dict[str, Any]:
    """The main demo: the CDR surrogate, slimTrain against Adam (lr 1e-3), Prodigy and
    schedule-free AdamW, and slimTrain with Prodigy on theta; fixed seed."""
    defaults = experiment_defaults("cdr", quick=quick)
    config = RunConfig(epochs=defaults["epochs"], batch_size=defaults["batch_size"])
    return run_experiment("cdr", METHODS, config, out_dir, quick=quick, progress=progress)


def run_sweep(
    name: str,
    config: RunConfig,
    lrs: Sequence[float] = (1e-3, 1e-2, 1e-1),
    regs: Sequence[float] = (1e-10, 1e-5, 1e-1),
    methods: Sequence[str] = ("slimtrain", "adam"),
    out_dir: str | os.PathLike[str] = "runs/sweep",
    data_dir: str | os.PathLike[str] | None = None,
    quick: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Sensitivity grid: final validation loss over learning rate x regularization.

    The regularization is weight decay ``alpha`` on the parameters the optimizer trains (theta
    for slimTrain, every weight for the baselines); slimTrain's ``Lambda`` stays automatic. The
    summary reports each method's grid, its spread ``max / min`` of the finite cells and the
    ratio of the spreads. ``config.lr`` and ``config.alpha`` are replaced cell by cell.
    ``data_dir``, ``quick`` and ``cache_dir`` go to :func:`make_setup`.
    """
    if not lrs or not regs:
        raise ValueError(f"expected non-empty grids, found lrs={lrs!r}, regs={regs!r}")
    for lr in lrs:  # validate every cell before any training
        for reg in regs:
            replace(config, lr=float(lr), alpha=float(reg))
    setup = make_setup(name, seed=config.seed, data_dir=data_dir, quick=quick,
                       cache_dir=cache_dir)
    grids = {m: np.full((len(lrs), len(regs)), math.nan) for m in methods}
    best = {m: np.full((len(lrs), len(regs)), math.nan) for m in methods}
    cells = [(i, j) for i in range(len(lrs)) for j in range(len(regs))]
    bar = tqdm(cells, desc=f"sweep {name}", disable=not progress or None)
    for i, j in bar:
        cell = replace(config, lr=float(lrs[i]), alpha=float(regs[j]))
        results = run_methods(setup, methods, cell, progress=False)
        for method, result in results.items():
            grids[method][i, j] = setup.loss_scale * result.history.records[-1]["val_loss"]
            best[method][i, j] = setup.loss_scale * result.history.best_val_loss
    bar.close()
    summary: dict[str, Any] = {
        "experiment": f"sweep-{name}",
        "config": {**asdict(config), "loss": setup.loss_label, "data": setup.info,
                   "regularization": "weight decay alpha"},
        "lrs": list(lrs),
        "regs": list(regs),
        "final_val_loss": {m: g.tolist() for m, g in grids.items()},
        "best_val_loss": {m: g.tolist() for m, g in best.items()},
        "spread": {m: _spread(g) for m, g in grids.items()},
    }
    if "slimtrain" in grids and "adam" in grids:
        summary["spread_ratio_adam_over_slimtrain"] = (
            summary["spread"]["adam"] / summary["spread"]["slimtrain"]
        )
    if not is_main_process():
        return summary
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "lr", "alpha", "final_val_loss", "best_val_loss"])
        for method in methods:
            for i, j in cells:
                writer.writerow([method, lrs[i], regs[j], grids[method][i, j], best[method][i, j]])
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
    plots.plot_sweep_heatmaps(grids, lrs, regs, out / "sweep.png",
                              title=f"{name}: final validation loss")
    return summary


def _spread(grid: np.ndarray) -> float:
    finite = grid[np.isfinite(grid)]
    if finite.size == 0 or finite.min() <= 0:
        return math.inf
    return float(finite.max() / finite.min())


def sweep_table(summary: dict[str, Any]) -> str:
    """The sweep as text: one grid per method, then the spreads."""
    lines = [f"{summary['experiment']}: final validation loss ({summary['config']['loss']})"]
    regs = summary["regs"]
    for method, grid in summary["final_val_loss"].items():
        lines.append(f"\n{method:<12}" + "".join(f"{'alpha=' + format(r, 'g'):>14}" for r in regs))
        for lr, row in zip(summary["lrs"], grid, strict=True):
            cells = "".join(f"{v:>14.4g}" if v is not None else f"{'nan':>14}" for v in row)
            lines.append(f"{'lr=' + format(lr, 'g'):<12}" + cells)
    lines.append("")
    for method, spread in summary["spread"].items():
        lines.append(f"spread max/min of {method}: {spread:.3g}")
    if "spread_ratio_adam_over_slimtrain" in summary:
        lines.append(
            f"ratio of spreads adam / slimtrain: {summary['spread_ratio_adam_over_slimtrain']:.3g}"
        )
    return "\n".join(lines)
