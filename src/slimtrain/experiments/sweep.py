"""The sensitivity sweep: final validation loss (and, for ``classify``, accuracy) over learning
rate x weight decay for slimTrain and Adam (``slimtrain sweep EXPERIMENT``), checkpointed cell
by cell."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from slimtrain import plots
from slimtrain._io import write_json
from slimtrain.experiments.options import TrainingOptions
from slimtrain.experiments.registry import Experiment, Result, Session, register
from slimtrain.experiments.runner import data_fingerprint, run_methods
from slimtrain.experiments.setups import make_setup
from slimtrain.experiments.tables import sweep_table
from slimtrain.experiments.training import DataRunOptions, parse_methods
from slimtrain.training.distributed import is_main_process

__all__ = ["SweepOptions", "parse_floats", "run_sweep"]


def parse_floats(text: str) -> tuple[float, ...]:
    """Comma-separated numbers."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, found {text!r}") from None
    return values


@dataclass(frozen=True)
class SweepOptions(DataRunOptions):
    """A training experiment's options, with ``lr`` and ``alpha`` set cell by cell."""

    training: TrainingOptions = field(default_factory=TrainingOptions,
                                      metadata={"exclude": ("lr", "alpha")})
    methods: tuple[str, ...] = field(default=("slimtrain", "adam"), metadata={
        "flag": "methods", "parse": parse_methods,
        "help": "'all' or a comma-separated subset of the methods"})
    lrs: tuple[float, ...] = field(default=(1e-3, 1e-2, 1e-1), metadata={
        "parse": parse_floats, "help": "learning rates (comma-separated)"})
    regs: tuple[float, ...] = field(default=(1e-10, 1e-5, 1e-1), metadata={
        "parse": parse_floats, "help": "weight decays alpha (comma-separated)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lrs or not self.regs:
            raise ValueError(f"expected non-empty grids, found lrs={self.lrs!r}, "
                             f"regs={self.regs!r}")
        for lr in self.lrs:  # every cell is valid before any training
            for reg in self.regs:
                replace(self.training, lr=lr, alpha=reg)


def run_sweep(options: SweepOptions, session: Session) -> Result:
    """Train every cell (or take it from its checkpoint when resuming)."""
    setup = make_setup(options.experiment, seed=options.training.seed,
                       data_dir=options.data_dir, quick=options.quick)
    fingerprint = data_fingerprint(setup)
    methods = options.methods
    grids = {m: np.full((len(options.lrs), len(options.regs)), math.nan) for m in methods}
    best = {m: g.copy() for m, g in grids.items()}
    accuracy = {m: g.copy() for m, g in grids.items()}
    for i, lr in enumerate(options.lrs):
        for j, reg in enumerate(options.regs):
            cell = _cell(options, session, setup, lr, reg, fingerprint)
            for m in methods:
                grids[m][i, j], best[m][i, j], accuracy[m][i, j] = cell[m]
            if session.echo is not None:
                session.echo(f"sweep {options.experiment} lr={lr:g} alpha={reg:g}: " + ", ".join(
                    f"{m} {cell[m][0]:.4g}" for m in methods))
    summary: dict[str, Any] = {
        "experiment": f"sweep-{options.experiment}",
        "config": {**asdict(options), "loss": setup.loss_label, "data": setup.info,
                   "regularization": "weight decay alpha"},
        "lrs": list(options.lrs), "regs": list(options.regs),
        "final_val_loss": {m: g.tolist() for m, g in grids.items()},
        "best_val_loss": {m: g.tolist() for m, g in best.items()},
        "spread": {m: _spread(g) for m, g in grids.items()},
    }
    if "slimtrain" in grids and "adam" in grids:
        summary["spread_ratio_adam_over_slimtrain"] = (
            summary["spread"]["adam"] / summary["spread"]["slimtrain"])
    classify = setup.loss != "squared"
    if classify:
        summary["final_val_accuracy"] = {m: g.tolist() for m, g in accuracy.items()}
        summary["accuracy_range"] = {m: _range(g) for m, g in accuracy.items()}
    rows = [{"method": m, "lr": lr, "alpha": reg, "final_val_loss": grids[m][i, j],
             "best_val_loss": best[m][i, j],
             **({"final_val_accuracy": accuracy[m][i, j]} if classify else {})}
            for m in methods for i, lr in enumerate(options.lrs)
            for j, reg in enumerate(options.regs)]
    figures = {}
    if is_main_process():
        figures["sweep.png"] = plots.plot_sweep_heatmaps(
            grids, options.lrs, options.regs, title=f"{options.experiment}: final validation loss")
        if classify:
            errors = {m: 100 * (1 - g) for m, g in accuracy.items()}
            figures["sweep_error.png"] = plots.plot_sweep_heatmaps(
                errors, options.lrs, options.regs,
                title=f"{options.experiment}: final validation error %")
    return Result(summary, rows, figures, sweep_table(summary))


def _cell(options: SweepOptions, session: Session, setup: Any, lr: float, reg: float,
          fingerprint: str) -> dict[str, tuple[float, float, float]]:
    """``{method: (final, best validation loss, final validation accuracy)}`` of one cell (the
    accuracy NaN for a regression), from its checkpoint if any."""
    path = None
    if session.checkpoint_dir is not None:
        path = session.checkpoint_dir / f"cell-lr={lr:g}-alpha={reg:g}.json"
        if session.resume and path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("data") == fingerprint and set(options.methods) <= set(saved["cell"]):
                return {m: (*saved["cell"][m][:2], (saved["cell"][m] + [math.nan])[2])
                        for m in options.methods}
    training = replace(options.training, lr=lr, alpha=reg)
    results = run_methods(setup, options.methods, training)
    scale = setup.loss_scale
    cell = {m: (scale * r.history.records[-1]["val_loss"], scale * r.history.best_val_loss,
                r.history.records[-1].get("val_accuracy", math.nan))
            for m, r in results.items()}
    if path is not None and is_main_process():
        write_json(path, {"data": fingerprint, "cell": cell})
    return cell


def _range(grid: np.ndarray) -> float:
    """Largest minus smallest finite value (NaN without any)."""
    finite = grid[np.isfinite(grid)]
    return float(finite.max() - finite.min()) if finite.size else math.nan


def _spread(grid: np.ndarray) -> float:
    finite = grid[np.isfinite(grid)]
    if finite.size == 0 or finite.min() <= 0:
        return math.inf
    return float(finite.max() / finite.min())


register(Experiment(
    "sweep", "sensitivity grid over learning rate and weight decay for slimTrain and Adam",
    SweepOptions, run_sweep, distributed=True, resumable=True, resume_may_change=("device",),
    why_not={"lr": "the sweep sets each cell's learning rate from --lrs",
             "alpha": "the sweep sets each cell's weight decay from --regs"}))
