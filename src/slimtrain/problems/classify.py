"""Labelled image data for classification (``loss="cross_entropy"``): digits and MNIST.

Nothing is downloaded. Pixels are scaled to [0, 1] and standardised by the scalar mean and
standard deviation of the *training* split's pixels (the same affine map for every split and
every method, as for the autoencoder data); labels are ``torch.long`` class indices.

- :func:`digits_classification_data`: scikit-learn's bundled 8x8 digits (1797 images), split
  after a seeded random permutation (1440 train / 357 validation by default), flattened to 64
  features for :func:`~slimtrain.problems.networks.mlp_classifier_network`.
- :func:`mnist_classification_data`: MNIST from IDX files (:func:`~slimtrain.problems.mnist.
  load_mnist`), the SPEC's split of the 10k file (first 8000 train, last 2000 validation),
  images ``(n, 1, 28, 28)`` for :func:`~slimtrain.problems.networks.cnn_classifier_network`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from slimtrain._validation import check_int
from slimtrain.problems.mnist import image_pixels, load_digits_images, load_mnist

__all__ = [
    "ClassificationData",
    "digits_classification_data",
    "make_classification_data",
    "mnist_classification_data",
]


@dataclass(frozen=True, eq=False)
class ClassificationData:
    """Standardised inputs with class labels.

    Attributes
    ----------
    train, val : torch.utils.data.TensorDataset
        Each yields ``(x, y)``: ``x`` float32 of shape ``(1, H, W)`` (or ``(H * W,)`` when
        flattened), ``y`` a ``torch.long`` class index.
    n_classes : int
        Number of classes (``max label + 1`` over both splits).
    mean, std : float
        The training split's pixel mean and standard deviation (pixels in [0, 1]).
    """

    train: TensorDataset
    val: TensorDataset
    n_classes: int
    mean: float
    std: float


def make_classification_data(
    images: np.ndarray,
    labels: np.ndarray,
    n_train: int,
    n_val: int | None = None,
    *,
    flatten: bool = False,
    seed: int | None = None,
) -> ClassificationData:
    """Split labelled images and standardise them by the training split's pixel statistics.

    Parameters
    ----------
    images : numpy.ndarray
        ``(n, H, W)``; uint8 pixels are scaled by ``1 / 255``, other real values are taken as
        they are.
    labels : numpy.ndarray
        ``(n,)`` non-negative integer classes.
    n_train : int
        Images for training (at least 2): the first ``n_train`` (after the permutation).
    n_val : int, optional
        Images for validation, the last ``n_val``; default all that are not for training.
    flatten : bool
        Inputs of shape ``(H * W,)`` instead of ``(1, H, W)``.
    seed : int, optional
        Permute the images with ``numpy.random.default_rng(seed)`` before splitting; ``None``
        keeps the file order.

    Returns
    -------
    ClassificationData
    """
    pixels, n_train, n_val = image_pixels(images, n_train, n_val)
    n = pixels.shape[0]
    if not isinstance(labels, np.ndarray) or labels.shape != (n,):
        found = getattr(labels, "shape", type(labels).__name__)
        raise ValueError(
            f"labels must be a numpy array of shape ({n},) (one per image), "
            f"found {found}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(
            f"labels must be non-negative integers, found dtype {labels.dtype}"
            + (f" and minimum {labels.min()}" if labels.size else "")
        )
    if seed is not None:
        order = np.random.default_rng(check_int("seed", seed)).permutation(n)
        pixels, labels = pixels[order], labels[order]
    train, val = slice(0, n_train), slice(n - n_val, n)
    mean = float(pixels[train].mean())
    std = float(pixels[train].std())
    if not std > 0.0:
        raise ValueError("the training images are constant (pixel std 0); cannot standardise")
    shape = (-1, pixels.shape[1] * pixels.shape[2]) if flatten else (-1, 1, *pixels.shape[1:])

    def dataset(rows: slice) -> TensorDataset:
        x = torch.from_numpy(((pixels[rows] - mean) / std).astype(np.float32).reshape(shape))
        return TensorDataset(x, torch.from_numpy(labels[rows].astype(np.int64)))

    n_classes = int(labels.max()) + 1 if labels.size else 0
    return ClassificationData(dataset(train), dataset(val), n_classes, mean, std)


def digits_classification_data(
    n_train: int = 1440, n_val: int | None = None, *, flatten: bool = True, seed: int | None = 0
) -> ClassificationData:
    """scikit-learn's 8x8 digits: 1440 train / 357 validation after a seeded permutation.

    ``flatten=True`` (default) gives inputs of 64 features for
    :func:`~slimtrain.problems.networks.mlp_classifier_network`; ``seed=None`` keeps the
    file order.
    """
    images, labels = load_digits_images(8)
    return make_classification_data(images, labels, n_train, n_val, flatten=flatten, seed=seed)


def mnist_classification_data(
    data_dir: str | os.PathLike[str],
    split: str = "t10k",
    n_train: int = 8000,
    n_val: int = 2000,
    *,
    flatten: bool = False,
) -> ClassificationData:
    """MNIST classification: first ``n_train`` images train, last ``n_val`` validate.

    The defaults give the SPEC's split of the 10k file (8000 / 2000), images
    ``(n, 1, 28, 28)`` for :func:`~slimtrain.problems.networks.cnn_classifier_network`.
    """
    images, labels = load_mnist(data_dir, split)
    return make_classification_data(images, labels, n_train, n_val, flatten=flatten)
