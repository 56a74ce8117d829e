"""The ``kernel`` experiment: EigenPro against exact kernel ridge regression on the same data.

Datasets: :mod:`slimtrain.problems.kernel_data`; the exact reference:
:func:`slimtrain.kernels.ridge.fit_kernel_ridge` (tiny ``alpha``). Digits and MNIST are
classification (both methods regress one-hot targets and predict the arg-max), Friedman is
regression. Report: ``metrics.csv`` (one row per epoch), ``summary.json`` and
``eigenpro_vs_kernel_ridge.png``. Not data-parallel: under torch.distributed rank 0 computes
and the other ranks return at once.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

from slimtrain import plots
from slimtrain._validation import check_int, check_real
from slimtrain.experiments.registry import Experiment, Result, Session, register
from slimtrain.experiments.tables import kernel_table
from slimtrain.kernels.eigenpro import EpochRecord
from slimtrain.kernels.estimators import EigenProClassifier, EigenProRegressor
from slimtrain.kernels.functions import KERNELS
from slimtrain.kernels.ridge import KRR_ALPHA, fit_kernel_ridge
from slimtrain.problems.kernel_data import KERNEL_DATASETS, load_kernel_dataset
from slimtrain.training.distributed import is_main_process, rank

__all__ = ["DEFAULT_BANDWIDTH", "KernelOptions", "run_kernel"]

logger = logging.getLogger(__name__)

DEFAULT_BANDWIDTH = {"digits": 5.0, "mnist": 5.0, "friedman": 1.0}
"""Bandwidth used when none is given. Friedman's 20 uniform features lie about 1.8 apart (the
median distance), so sigma = 5 would be a nearly flat kernel there."""


@dataclass(frozen=True)
class KernelOptions:
    """What the kernel experiment compares, on which data."""

    dataset: str | None = field(default=None, metadata={
        "help": f"one of {', '.join(KERNEL_DATASETS)} (default: mnist with --data, else "
        "digits)"})
    data: Path | None = field(default=None, metadata={
        "parse": Path, "help": "folder with the MNIST IDX files"})
    kernel: str = field(default="gaussian", metadata={"help": ", ".join(sorted(KERNELS))})
    bandwidth: float | None = field(default=None, metadata={
        "parse": float, "help": "kernel bandwidth (default: 5 for digits and MNIST, 1 for "
        "friedman)"})
    epochs: int = field(default=10, metadata={"help": "EigenPro epochs"})
    seed: int = field(default=0, metadata={"help": "data shuffle and EigenPro's random_state"})
    n_train: int | None = field(default=None, metadata={
        "parse": int, "help": "fewer training points (the first of the split)"})
    krr_alpha: float = field(default=KRR_ALPHA, metadata={"cli": False})

    def __post_init__(self) -> None:
        dataset = self.dataset or ("mnist" if self.data is not None else "digits")
        if dataset not in KERNEL_DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {KERNEL_DATASETS}")
        if dataset == "mnist" and self.data is None:
            raise ValueError("dataset 'mnist' needs --data, the folder with the MNIST IDX files")
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; expected one of {sorted(KERNELS)}")
        check_int("epochs", self.epochs, minimum=1)
        check_int("seed", self.seed, minimum=0)
        if self.n_train is not None:
            check_int("n_train", self.n_train, minimum=1)
        sigma = DEFAULT_BANDWIDTH[dataset] if self.bandwidth is None else self.bandwidth
        object.__setattr__(self, "dataset", dataset)
        object.__setattr__(self, "bandwidth",
                           check_real("bandwidth", sigma, minimum=0.0, strict_minimum=True))
        check_real("krr_alpha", self.krr_alpha, minimum=0.0)


def run_kernel(options: KernelOptions, session: Session) -> Result:
    """Fit EigenPro and the exact reference; the report (empty on ranks other than 0)."""
    if not is_main_process():
        logger.info("kernel experiment: rank %d leaves it to rank 0", rank())
        return Result({"experiment": "kernel", "skipped": f"rank {rank()}: the kernel "
                       "experiment runs and writes on rank 0 only"}, [])
    dataset, kernel, epochs, seed = options.dataset, options.kernel, options.epochs, options.seed
    sigma, krr_alpha = float(options.bandwidth or 0.0), options.krr_alpha
    (x_tr, y_tr, x_te, y_te), classification = load_kernel_dataset(
        str(dataset), options.data, seed=seed, n_train=options.n_train)
    logger.info("kernel experiment: %s, %d train / %d test, %s sigma=%g", dataset,
                x_tr.shape[0], x_te.shape[0], kernel, sigma)
    progress = session.progress
    estimator_cls = EigenProClassifier if classification else EigenProRegressor
    model = estimator_cls(kernel=kernel, bandwidth=sigma, n_epochs=epochs, random_state=seed)
    bar = tqdm(total=epochs, desc=f"EigenPro {dataset}", disable=not progress, leave=False)

    def on_epoch(record: EpochRecord) -> None:
        shown = record.val_error if classification else record.val_mse
        bar.set_postfix({"test_error" if classification else "test_mse": f"{shown:.4g}"})
        bar.update(1)

    start = time.perf_counter()
    try:
        model.fit(x_tr, y_tr, X_val=x_te, y_val=y_te, callback=on_epoch)
    finally:
        bar.close()
    ep_fit_time = time.perf_counter() - start

    # Without early stopping the last epoch's validation numbers are the final model's.
    last_val = model.history_[-1]["val_mse"]
    ep_mse = math.nan if last_val is None else float(last_val)
    ep_error = float(np.mean(model.predict(x_te) != y_te)) if classification else None

    krr: dict[str, Any] | None
    krr_skip = ""
    try:
        if classification:
            classes = np.unique(y_tr)
            targets = np.eye(classes.shape[0])[np.searchsorted(classes, y_tr)]
        else:
            targets = y_tr
        exact = fit_kernel_ridge(x_tr, targets, x_te, kernel=kernel, bandwidth=sigma,
                                 alpha=krr_alpha)
        pred = exact["predictions"]
        if classification:
            onehot = np.eye(classes.shape[0])[np.searchsorted(classes, y_te)]
            krr_error: float | None = float(np.mean(classes[pred.argmax(axis=1)] != y_te))
            krr_mse = float(np.mean((pred - onehot) ** 2))
        else:
            krr_error = None
            krr_mse = float(np.mean((pred - y_te) ** 2))
        krr = {
            "solver": exact["solver"],
            "alpha": krr_alpha,
            "fit_time": exact["fit_time"],
            "memory_gib": exact["memory_bytes"] / 2**30,
            "test_mse": krr_mse,
            "test_error": krr_error,
        }
    except MemoryError as exc:
        logger.warning("exact kernel ridge skipped: %s", exc)
        krr = None
        krr_skip = str(exc)

    history = model.history_
    setup = float(model.setup_time_)
    comparison: dict[str, Any] = {}
    if krr is not None:
        if classification:
            target = float(krr["test_error"]) + 0.003
            epoch, t_reach = _first_epoch_within(history, "val_error", target)
            comparison = {
                "error_gap_points": 100.0 * (float(ep_error or 0.0) - float(krr["test_error"])),
                "target": "test error within 0.3 points of KernelRidge",
            }
        else:
            target = 1.05 * krr["test_mse"]
            epoch, t_reach = _first_epoch_within(history, "val_mse", target)
            comparison = {
                "mse_ratio": ep_mse / krr["test_mse"],
                "target": "test MSE within 5 % of KernelRidge",
            }
        comparison.update(
            {
                "epoch_reached": epoch,
                "time_to_reach": None if t_reach is None else setup + t_reach,
                "time_ratio_reach": None if t_reach is None
                else (setup + t_reach) / krr["fit_time"],
                "fit_time_ratio": ep_fit_time / krr["fit_time"],
            }
        )
    summary: dict[str, Any] = {
        "experiment": "kernel",
        "config": {
            "dataset": dataset,
            "kernel": kernel,
            "bandwidth": sigma,
            "epochs": epochs,
            "seed": seed,
            "n_train": int(x_tr.shape[0]),
            "n_test": int(x_te.shape[0]),
            "n_features": int(x_tr.shape[1]),
            "task": "classification" if classification else "regression",
        },
        "eigenpro": {
            "subsample_size": model.subsample_size_,
            "n_components": model.n_components_,
            "batch_size": model.batch_size_,
            "step_size": model.step_size_,
            "setup_time": setup,
            "fit_time": ep_fit_time,
            "test_mse": ep_mse,
            "test_error": ep_error,
            "parameters": model.eigenpro_parameters_,
        },
        "kernel_ridge": krr if krr is not None else {"skipped": krr_skip},
        "comparison": comparison,
    }
    title = f"{dataset}: EigenPro vs KernelRidge ({kernel}, sigma={sigma:g})"
    figure = _plot(history, krr, classification, title)
    return Result(summary, _metric_rows(history, setup),
                  {"eigenpro_vs_kernel_ridge.png": figure}, kernel_table(summary))


def _metric_rows(history: list[dict[str, Any]], setup_time: float) -> list[dict[str, Any]]:
    rows, elapsed = [], setup_time
    for row in history:
        elapsed += row["epoch_time"]
        rows.append({"epoch": row["epoch"], "train_mse": row["train_mse"],
                     "val_mse": row["val_mse"], "val_error": row["val_error"],
                     "epoch_time": row["epoch_time"], "elapsed": elapsed,
                     "step_size": row["step_size"]})
    return rows


def _plot(
    history: list[dict[str, Any]],
    krr: dict[str, Any] | None,
    classification: bool,
    title: str,
) -> Figure:

    epochs = [row["epoch"] for row in history]
    fig, axes = plots.new_figure(1, 2, figsize=(10, 4))
    key, label = ("val_error", "test error (%)") if classification else ("val_mse", "test MSE")
    scale = 100.0 if classification else 1.0
    axes[0].plot(epochs, [scale * row[key] for row in history], "o-", color="C0",
                 label="EigenPro")
    if krr is not None:
        level = scale * krr["test_error" if classification else "test_mse"]
        axes[0].axhline(level, color="C3", ls="--", label="KernelRidge (exact)")
    axes[0].set_ylabel(label)
    axes[1].semilogy(epochs, [row["train_mse"] for row in history], "o--", color="C0",
                     alpha=0.6, label="EigenPro train (running)")
    axes[1].semilogy(epochs, [row["val_mse"] for row in history], "o-", color="C0",
                     label="EigenPro test")
    if krr is not None:
        axes[1].axhline(krr["test_mse"], color="C3", ls="--", label="KernelRidge test")
    axes[1].set_ylabel("MSE")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _first_epoch_within(
    history: list[dict[str, Any]], key: str, target: float
) -> tuple[int | None, float | None]:
    elapsed = 0.0
    for row in history:
        elapsed += row["epoch_time"]
        if row[key] is not None and row[key] <= target:
            return row["epoch"], elapsed
    return None, None



register(Experiment(
    "kernel", "EigenPro against exact kernel ridge regression", KernelOptions, run_kernel,
    resume_may_change=(),
    why_not={"method": "it always compares EigenPro with exact kernel ridge regression",
             "batch_size": "EigenPro chooses its batch size"}))
