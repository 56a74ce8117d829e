"""The datasets of the kernel experiment, all offline: ``"digits"`` (scikit-learn's 8x8 digits,
pixels scaled to [0, 1], shuffled by the seed, 80 % train / 20 % test), ``"mnist"`` (the MNIST
IDX files in ``data_dir``; the 10k test split: first 8000 train, last 2000 test, pixels in
[0, 1]) and ``"friedman"`` (:func:`sklearn.datasets.make_friedman1` with 20 features, noise
1.0, 10000 train / 2000 test by default). Digits and MNIST are classification, Friedman is
regression."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.datasets import load_digits, make_friedman1

from slimtrain._validation import check_int

__all__ = ["KERNEL_DATASETS", "load_kernel_dataset"]

KERNEL_DATASETS = ("digits", "mnist", "friedman")
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
    if dataset not in KERNEL_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {KERNEL_DATASETS}")
    if n_train is not None:
        check_int("n_train", n_train, minimum=1)
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
