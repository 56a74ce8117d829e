r"""The 2-D peaks function (MATLAB's ``peaks``) as a regression problem on :math:`[-3, 3]^2`.

.. math::

    p(x, y) = 3 (1 - x)^2 e^{-x^2 - (y + 1)^2}
              - 10 \left(\frac{x}{5} - x^3 - y^5\right) e^{-x^2 - y^2}
              - \frac{1}{3} e^{-(x + 1)^2 - y^2}

Inputs are drawn uniformly on :math:`[-3, 3]^2` from ``numpy.random.default_rng(seed)``: the
train points first, then the validation points, so the train set does not depend on
``n_val``. The targets are the exact values (no noise). Range on the square: about
:math:`[-6.55, 8.11]`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from slimtrain._validation import check_int

__all__ = ["PEAKS_DOMAIN", "PeaksData", "make_peaks_dataset", "peaks"]

logger = logging.getLogger(__name__)

#: The square the inputs are drawn from, ``(low, high)`` per coordinate.
PEAKS_DOMAIN = (-3.0, 3.0)


def peaks(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Evaluate the peaks function elementwise (numpy broadcasting).

    Parameters
    ----------
    x, y : numpy.ndarray
        Coordinates, any broadcastable shapes.

    Returns
    -------
    numpy.ndarray
        ``p(x, y)`` in float64.

    Examples
    --------
    >>> round(float(peaks(np.array(0.0), np.array(0.0))), 6)  # (8/3) e^{-1}
    0.981012
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return (
        3.0 * (1.0 - x) ** 2 * np.exp(-(x**2) - (y + 1.0) ** 2)
        - 10.0 * (x / 5.0 - x**3 - y**5) * np.exp(-(x**2) - y**2)
        - np.exp(-((x + 1.0) ** 2) - y**2) / 3.0
    )


@dataclass(frozen=True, eq=False)
class PeaksData:
    """The peaks data set.

    Attributes
    ----------
    train, val : torch.utils.data.TensorDataset
        Each yields ``(x, c)`` with ``x`` of shape ``(2,)`` and ``c`` of shape ``(1,)``,
        float32.
    """

    train: TensorDataset
    val: TensorDataset


def _check_count(name: str, value: object, minimum: int) -> int:
    return check_int(name, value, minimum=minimum)


def make_peaks_dataset(n_train: int = 2000, n_val: int = 1000, seed: int = 0) -> PeaksData:
    """Sample the peaks regression problem.

    Parameters
    ----------
    n_train : int
        Number of training points (at least 1), default 2000.
    n_val : int
        Number of validation points (at least 0), default 1000.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    PeaksData
        ``.train`` and ``.val`` TensorDatasets of float32 ``(x (2,), c (1,))`` pairs.

    Examples
    --------
    >>> data = make_peaks_dataset(n_train=10, n_val=5)
    >>> x, c = data.train.tensors
    >>> tuple(x.shape), tuple(c.shape)
    ((10, 2), (10, 1))
    """
    n_train = _check_count("n_train", n_train, 1)
    n_val = _check_count("n_val", n_val, 0)
    seed = _check_count("seed", seed, 0)
    rng = np.random.default_rng(seed)
    lo, hi = PEAKS_DOMAIN
    pts = rng.uniform(lo, hi, size=(n_train + n_val, 2))
    vals = peaks(pts[:, 0], pts[:, 1])[:, None]
    x = torch.from_numpy(pts.astype(np.float32))
    c = torch.from_numpy(vals.astype(np.float32))
    return PeaksData(
        train=TensorDataset(x[:n_train], c[:n_train]),
        val=TensorDataset(x[n_train:], c[n_train:]),
    )
