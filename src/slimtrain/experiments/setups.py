"""The training experiments' data and networks (``cdr``, ``peaks``, ``autoencoder``,
``classify``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Subset

from slimtrain.experiments.runner import Setup
from slimtrain.problems.cdr import make_cdr_dataset
from slimtrain.problems.classify import digits_classification_data, mnist_classification_data
from slimtrain.problems.mnist import digits_autoencoder_data, mnist_autoencoder_data
from slimtrain.problems.networks import (
    autoencoder_network,
    cdr_network,
    cnn_classifier_network,
    peaks_network,
)
from slimtrain.problems.peaks import make_peaks_dataset

__all__ = ["DATA_EXPERIMENTS", "TRAINING_EXPERIMENTS", "make_setup"]

TRAINING_EXPERIMENTS = ("cdr", "peaks", "autoencoder", "classify")

#: The training experiments that read MNIST from ``--data`` (else scikit-learn's digits).
DATA_EXPERIMENTS = ("autoencoder", "classify")


def make_setup(
    name: str,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    quick: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Setup:
    """Data and network of experiment ``name``.

    Parameters
    ----------
    name : {"cdr", "peaks", "autoencoder", "classify"}
    seed : int
        Seed of the initial weights (the data sets have their own fixed seeds).
    data_dir : path, optional
        ``autoencoder`` and ``classify``: a folder with MNIST's IDX files (first 8000 images
        of the 10k test file for training, last 2000 for validation); without it
        scikit-learn's bundled 8x8 digits (``classify``: 1440 / 357 after a seeded
        permutation). Ignored by the others. ``classify`` trains a small CNN
        (:func:`~slimtrain.problems.networks.cnn_classifier_network`) with a Linear head on
        the cross-entropy loss.
    quick : bool
        Smaller training sets for smoke runs.
    cache_dir : path, optional
        Cache of the CDR simulations.
    """
    if name == "cdr":
        data = make_cdr_dataset(cache_dir=cache_dir)
        train = Subset(data.train, range(100)) if quick else data.train
        return Setup(
            name="cdr",
            train=train,
            val=data.val,
            build=lambda: cdr_network(seed=seed),
            info={"n_train": len(train), "n_val": len(data.val), "source": "CDR simulator",
                  "cache": str(data.cache_file)},
        )
    if name == "peaks":
        peaks = make_peaks_dataset(n_train=400 if quick else 2000, n_val=1000)
        return Setup(
            name="peaks",
            train=peaks.train,
            val=peaks.val,
            build=lambda: peaks_network(seed=seed),
            info={"n_train": len(peaks.train), "n_val": len(peaks.val)},
        )
    info: dict[str, Any] = {"source": _source(data_dir)}
    if name == "classify":
        if data_dir is not None:
            cd = mnist_classification_data(Path(data_dir), n_train=8000, n_val=2000)
        else:
            cd = digits_classification_data(flatten=False)
        size = cd.train[0][0].shape[-1]
        train = Subset(cd.train, range(min(len(cd.train), 512))) if quick else cd.train
        info.update(n_train=len(train), n_val=len(cd.val), pixel_mean=cd.mean, pixel_std=cd.std,
                    image_size=size, n_classes=cd.n_classes)
        return Setup(
            name="classify",
            train=train,
            val=cd.val,
            build=lambda: cnn_classifier_network(cd.n_classes, image_size=size, seed=seed),
            loss="cross_entropy",
            loss_label="cross-entropy per image (nats)",
            info=info,
        )
    if name == "autoencoder":
        if data_dir is not None:
            ae = mnist_autoencoder_data(Path(data_dir), n_train=8000, n_val=2000)
        else:
            ae = digits_autoencoder_data()
        size = ae.image_size
        train = Subset(ae.train, range(min(len(ae.train), 1024))) if quick else ae.train
        info.update(n_train=len(train), n_val=len(ae.val), pixel_mean=ae.mean, pixel_std=ae.std,
                    image_size=size)
        return Setup(
            name="autoencoder",
            train=train,
            val=ae.val,
            build=lambda: autoencoder_network(image_size=size, seed=seed),
            loss_scale=2.0,
            loss_label="sum of squared errors per image (standardized pixels)",
            image_shape=(size, size),
            info=info,
        )
    raise ValueError(f"unknown experiment {name!r}; expected one of {TRAINING_EXPERIMENTS}")


def _source(data_dir: str | os.PathLike[str] | None) -> str:
    if data_dir is None:
        return "scikit-learn 8x8 digits (no --data: not MNIST)"
    return f"MNIST IDX in {data_dir} (first 8000 / last 2000 of t10k)"
