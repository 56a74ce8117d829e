"""The ``kernel`` experiment: EigenPro against exact kernel ridge regression on the same data.

Datasets (all offline): ``"digits"`` (scikit-learn's 8x8 digits, pixels scaled to [0, 1],
shuffled by the seed, 80 % train / 20 % test), ``"mnist"`` (the MNIST IDX files in
``data_dir``; the 10k test split: first 8000 train, last 2000 test, pixels in [0, 1]) and
``"friedman"`` (:func:`sklearn.datasets.make_friedman1` with 20 features, noise 1.0, 10000
train / 2000 test by default). Digits and MNIST are classification (both methods regress
one-hot targets and predict the arg-max), Friedman is regression.

The exact reference is :class:`sklearn.kernel_ridge.KernelRidge` with the same kernel and a
tiny ``alpha`` (1e-6): ``kernel="rbf"`` for the Gaussian, a precomputed float64 kernel matrix
for the Laplacian (Euclidean norm; scikit-learn's ``"laplacian"`` is L1) and the Cauchy kernel.
KernelRidge holds about three ``n x n`` float64 matrices (the kernel and two copies in its
Cholesky solve) and its Cholesky (SciPy's bundled OpenBLAS) segfaulted at n = 30000 here;
beyond :data:`SKLEARN_MAX_N` points, or when its matrices do not fit in memory,
:func:`fit_kernel_ridge` solves the same system ``(K + alpha I) c = y`` by torch's Cholesky
(two ``n x n`` matrices) and says so in the summary.

Output folder: ``metrics.csv`` (one row per epoch), ``summary.json`` and
``eigenpro_vs_kernel_ridge.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.datasets import load_digits, make_friedman1
from sklearn.kernel_ridge import KernelRidge
from tqdm.auto import tqdm

from slimtrain.kernels.eigenpro import EpochRecord, available_memory_bytes
from slimtrain.kernels.estimators import EigenProClassifier, EigenProRegressor
from slimtrain.kernels.functions import KERNELS, kernel_matmul, make_kernel
from slimtrain.training.distributed import is_main_process, rank

__all__ = [
    "DATASETS",
    "SKLEARN_MAX_N",
    "fit_kernel_ridge",
    "load_kernel_dataset",
    "run_kernel_experiment",
]

logger = logging.getLogger(__name__)

DATASETS = ("digits", "mnist", "friedman")
DEFAULT_BANDWIDTH = {"digits": 5.0, "mnist": 5.0, "friedman": 1.0}
"""Bandwidth used when none is given. Friedman's 20 uniform features lie about 1.8 apart (the
median distance), so sigma = 5 would be a nearly flat kernel there."""
KRR_ALPHA = 1e-6
FRIEDMAN_TEST = 2000
FRIEDMAN_TRAIN = 10000
FRIEDMAN_NOISE = 1.0

Arrays = tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]


def load_kernel_dataset(
    dataset: str,
    data_dir: str | Path | None = None,
    *,
    seed: int = 0,
    n_train: int | None = None,
) -> tuple[Arrays, bool]:
    """Train/test arrays of one dataset of the experiment.

    Parameters
    ----------
    dataset : {"digits", "mnist", "friedman"}
    data_dir : str or Path, optional
        Folder with the MNIST IDX files (``"mnist"`` only).
    seed : int
        Shuffle of digits, draw of Friedman.
    n_train : int, optional
        Training points (the first ones of the training split; Friedman draws this many).

    Returns
    -------
    (x_train, y_train, x_test, y_test), is_classification
        ``x`` float64 of shape (n, n_features); ``y`` int labels or float targets.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if n_train is not None and (isinstance(n_train, bool) or n_train < 1):
        raise ValueError(f"n_train must be a positive int or None; got {n_train!r}")
    if dataset == "digits":
        digits = load_digits()
        x = digits.data.astype(np.float64) / 16.0
        y = digits.target.astype(np.int64)
        perm = np.random.default_rng(seed).permutation(x.shape[0])
        x, y = x[perm], y[perm]
        split = int(0.8 * x.shape[0])
        x_tr, y_tr, x_te, y_te = x[:split], y[:split], x[split:], y[split:]
        classification = True
    elif dataset == "mnist":
        if data_dir is None:
            raise ValueError("dataset 'mnist' needs data_dir, the folder with the MNIST IDX files")
        from slimtrain.problems.mnist import load_mnist

        images, labels = load_mnist(data_dir, split="t10k")
        x = images.reshape(images.shape[0], -1).astype(np.float64) / 255.0
        y = np.asarray(labels, dtype=np.int64)
        if x.shape[0] < 10000:
            raise ValueError(
                f"the MNIST t10k split in {data_dir} has {x.shape[0]} images; expected 10000"
            )
        x_tr, y_tr, x_te, y_te = x[:8000], y[:8000], x[8000:10000], y[8000:10000]
        classification = True
    else:
        n = FRIEDMAN_TRAIN if n_train is None else n_train
        x, y = make_friedman1(
            n_samples=n + FRIEDMAN_TEST, n_features=20, noise=FRIEDMAN_NOISE, random_state=seed
        )
        x_tr, y_tr, x_te, y_te = x[:n], y[:n], x[n:], y[n:]
        classification = False
    if n_train is not None:
        x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    return (x_tr, y_tr, x_te, y_te), classification


def _kernel_ridge_bytes(n: int, gaussian: bool) -> float:
    # kernel matrix + the two copies of scipy's solve (+ one more for a precomputed matrix)
    return (24.0 if gaussian else 32.0) * n * n + 2**28


SKLEARN_MAX_N = 23_000
"""Largest n given to scikit-learn's KernelRidge by ``solver="auto"``: its Cholesky runs in
SciPy's bundled OpenBLAS, which segfaulted at n = 30000 on this stack (SciPy 1.17.1; also
``scipy.linalg.cho_factor`` alone, with memory to spare) and worked at n = 20000. Beyond it the
same system is solved by torch's (MKL) Cholesky."""


def fit_kernel_ridge(
    x_train: NDArray[Any],
    y_train: NDArray[Any],
    x_test: NDArray[Any],
    *,
    kernel: str,
    bandwidth: float,
    alpha: float = KRR_ALPHA,
    solver: str = "auto",
) -> dict[str, Any]:
    """Exact kernel ridge regression ``(K + alpha I) c = y``, predictions on ``x_test``.

    Parameters
    ----------
    x_train : ndarray of shape (n, n_features)
    y_train : ndarray of shape (n,) or (n, n_outputs)
    x_test : ndarray of shape (n_test, n_features)
    kernel : {"gaussian", "laplacian", "cauchy"}
    bandwidth : float
    alpha : float
    solver : {"auto", "sklearn", "cholesky"}
        ``"sklearn"``: :class:`~sklearn.kernel_ridge.KernelRidge` (about three ``n x n``
        float64 matrices); ``"cholesky"``: the same system by :func:`torch.linalg.cholesky`
        and :func:`torch.cholesky_solve` in float64 (two ``n x n`` matrices); ``"auto"``:
        sklearn when ``n <= SKLEARN_MAX_N`` and its matrices fit in 80 % of the available
        memory, else the Cholesky.

    Returns
    -------
    dict
        ``predictions`` (n_test, ...) float64, ``fit_time`` (seconds, kernel matrix included),
        ``solver`` (str), ``memory_bytes`` (estimated peak of the solver's matrices).

    Raises
    ------
    MemoryError
        Two ``n x n`` float64 matrices do not fit in the available memory.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {sorted(KERNELS)}")
    n = x_train.shape[0]
    gaussian = kernel == "gaussian"
    available = available_memory_bytes() or math.inf
    if solver == "auto":
        fits = _kernel_ridge_bytes(n, gaussian) < 0.8 * available
        solver = "sklearn" if fits and n <= SKLEARN_MAX_N else "cholesky"
    if solver not in ("sklearn", "cholesky"):
        raise ValueError(f"solver must be 'auto', 'sklearn' or 'cholesky'; got {solver!r}")
    k = make_kernel(kernel, bandwidth)
    xt = torch.as_tensor(x_train, dtype=torch.float64)
    xs = torch.as_tensor(x_test, dtype=torch.float64)
    start = time.perf_counter()
    if solver == "sklearn":
        if gaussian:
            model = KernelRidge(alpha=alpha, kernel="rbf", gamma=0.5 / bandwidth**2)
            model.fit(x_train, y_train)
            fit_time = time.perf_counter() - start
            pred = model.predict(x_test)
        else:
            model = KernelRidge(alpha=alpha, kernel="precomputed")
            model.fit(k(xt, xt).numpy(), y_train)
            fit_time = time.perf_counter() - start
            pred = model.predict(k(xs, xt).numpy())
        memory = _kernel_ridge_bytes(n, gaussian)
        name = "sklearn.kernel_ridge.KernelRidge"
    else:
        memory = 16.0 * n * n
        if memory > 0.9 * available:
            raise MemoryError(
                f"exact kernel ridge with {n} points needs {memory / 2**30:.1f} GiB for the "
                f"kernel matrix and its Cholesky factor; {available / 2**30:.1f} GiB are "
                "available"
            )
        gram = k(xt, xt)  # (n, n) float64
        gram.diagonal().add_(alpha)
        factor = torch.linalg.cholesky(gram)
        del gram
        targets = torch.as_tensor(np.asarray(y_train, dtype=np.float64)).reshape(n, -1)
        coef = torch.cholesky_solve(targets, factor)
        fit_time = time.perf_counter() - start
        del factor
        pred = kernel_matmul(k, xs, xt, coef).numpy()
        pred = pred.reshape((x_test.shape[0],) + np.shape(y_train)[1:])
        name = "torch.linalg.cholesky on K + alpha I, the system of KernelRidge"
    return {
        "predictions": np.asarray(pred, dtype=np.float64),
        "fit_time": fit_time,
        "solver": name,
        "memory_bytes": memory,
    }


def _write_metrics(path: Path, history: list[dict[str, Any]], setup_time: float) -> None:
    columns = ["epoch", "train_mse", "val_mse", "val_error", "epoch_time", "elapsed",
               "step_size"]
    elapsed = setup_time
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in history:
            elapsed += row["epoch_time"]
            values = {**row, "elapsed": elapsed}
            writer.writerow(["" if values[c] is None else values[c] for c in columns])


def _plot(
    path: Path,
    history: list[dict[str, Any]],
    krr: dict[str, Any] | None,
    classification: bool,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _first_epoch_within(
    history: list[dict[str, Any]], key: str, target: float
) -> tuple[int | None, float | None]:
    elapsed = 0.0
    for row in history:
        elapsed += row["epoch_time"]
        if row[key] is not None and row[key] <= target:
            return row["epoch"], elapsed
    return None, None


def run_kernel_experiment(
    dataset: str = "digits",
    data_dir: str | Path | None = None,
    kernel: str = "gaussian",
    bandwidth: float | None = None,
    epochs: int = 10,
    out_dir: str | Path = Path("runs") / "kernel",
    seed: int = 0,
    n_train: int | None = None,
    progress: bool = True,
    krr_alpha: float = KRR_ALPHA,
) -> dict[str, Any]:
    """EigenPro against exact KernelRidge (same kernel, tiny alpha) on one dataset.

    Parameters
    ----------
    dataset : {"digits", "mnist", "friedman"}
    data_dir : str or Path, optional
        MNIST IDX folder (``"mnist"``).
    kernel : {"gaussian", "laplacian", "cauchy"}
    bandwidth : float, optional
        Default per dataset (:data:`DEFAULT_BANDWIDTH`: 5 for digits and MNIST, 1 for
        Friedman).
    epochs : int
        EigenPro epochs.
    out_dir : str or Path
        Report folder (created).
    seed : int
        Data shuffle/draw and EigenPro's ``random_state``.
    n_train : int, optional
        Fewer training points (first of the split).
    progress : bool
        tqdm bar over the epochs.
    krr_alpha : float
        ``alpha`` of the exact solver.

    Returns
    -------
    dict
        The content of ``summary.json``. Under torch.distributed (e.g. launched by
        ``torchrun``) the experiment is not data-parallel: rank 0 computes and writes
        everything, and the other ranks check the arguments, then return at once
        ``{"experiment": "kernel", "skipped": ...}`` without computing or writing.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {sorted(KERNELS)}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int; got {epochs!r}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    sigma = DEFAULT_BANDWIDTH.get(dataset, 5.0) if bandwidth is None else float(bandwidth)
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"bandwidth must be a positive finite number; got {bandwidth!r}")
    if not is_main_process():
        logger.info("kernel experiment: rank %d leaves it to rank 0", rank())
        return {
            "experiment": "kernel",
            "skipped": f"rank {rank()}: the kernel experiment runs and writes on rank 0 only",
        }
    (x_tr, y_tr, x_te, y_te), classification = load_kernel_dataset(
        dataset, data_dir, seed=seed, n_train=n_train
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("kernel experiment: %s, %d train / %d test, %s sigma=%g", dataset,
                x_tr.shape[0], x_te.shape[0], kernel, sigma)

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
    _write_metrics(out / "metrics.csv", history, setup)
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
    _plot(out / "eigenpro_vs_kernel_ridge.png", history, krr, classification, title)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
