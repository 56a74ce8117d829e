"""Exact kernel ridge regression, the reference of EigenPro: ``(K + alpha I) c = y``.

:class:`sklearn.kernel_ridge.KernelRidge` with the same kernel (``kernel="rbf"`` for the
Gaussian, a precomputed float64 kernel matrix for the Laplacian, Euclidean norm, and the
Cauchy kernel). KernelRidge holds about three ``n x n`` float64 matrices and its Cholesky
(SciPy's bundled OpenBLAS) segfaulted at n = 30000 here; beyond :data:`SKLEARN_MAX_N` points,
or when its matrices do not fit in memory, :func:`fit_kernel_ridge` solves the same system by
torch's Cholesky (two ``n x n`` matrices) and says so.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.kernel_ridge import KernelRidge

from slimtrain.kernels.eigenpro import available_memory_bytes
from slimtrain.kernels.functions import KERNELS, kernel_matmul, make_kernel

__all__ = ["KRR_ALPHA", "SKLEARN_MAX_N", "fit_kernel_ridge"]

#: ``alpha`` of the exact solver by default: tiny, so it interpolates like EigenPro's limit.
KRR_ALPHA = 1e-6


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
