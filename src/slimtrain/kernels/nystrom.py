r"""Nystrom eigensystem of a kernel subsample: the top eigenpairs of ``k(X_s, X_s) / s``.

The eigenpairs are computed in float64 whatever the working dtype. Two solvers:
a full :func:`torch.linalg.eigh`, and randomized subspace iteration [3]_ followed by a float64
Rayleigh-Ritz step, which gets the top ``q + 1`` pairs of a 2000 x 2000 matrix several times
faster. Their dense LAPACK calls (QR of the ``(s, k + p)`` block, ``eigh`` of the projected
matrix, a full ``eigh``) run single-threaded
(:func:`slimtrain._threads.num_threads`): on a two-core machine shared with a busy process,
torch's multi-threaded LAPACK slowed these calls by one to two orders of magnitude, while the
large products (the Gram, ``A Q``) keep the caller's threads.

References
----------
.. [1] S. Ma and M. Belkin, "Diving into the shallows: a computational perspective on
   large-scale shallow learning", NeurIPS 2017.
.. [2] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
   training", MLSys 2019.
.. [3] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with randomness",
   SIAM Review 53(2), 2011 (randomized subspace iteration).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from slimtrain._threads import num_threads
from slimtrain.kernels.functions import KernelFunction

__all__ = [
    "SMALL_EIGH",
    "Eigensolver",
    "NystromEigensystem",
    "nystrom_eigensystem",
    "resolve_eigensolver",
    "top_eigenpairs",
]

Eigensolver = Literal["auto", "eigh", "randomized"]

SMALL_EIGH = 512
"""Largest matrix that ``"auto"`` decomposes with a full ``eigh``."""

_LAPACK_THREADS = 1
"""Threads for the LAPACK calls (QR, ``eigh``). Measured on the two-core machine at load
average 6-7 from other processes, default OpenMP settings, 1 thread against 2: ``eigh`` of
512 x 512 float64 76 ms against 163 ms (159 ms against 1160 ms beside a matrix-product loop),
QR of 2000 x 322 float32 33 ms against 143 ms (67 against 469 ms), ``eigh`` of 2000 x 2000
float64 4.5 s against 15 s (14 s against 51 s). One thread was never slower there."""


def resolve_eigensolver(method: Eigensolver, s: int, n_pairs: int) -> Literal["eigh", "randomized"]:
    """The eigensolver ``"auto"`` stands for: ``"eigh"`` when ``s <= 512`` or when the
    randomized block (``2 n_pairs`` columns) is at least a quarter of the matrix, else
    ``"randomized"``.

    Parameters
    ----------
    method : {"auto", "eigh", "randomized"}
        Requested solver; returned unchanged unless ``"auto"``.
    s : int
        Size of the matrix.
    n_pairs : int
        Eigenpairs wanted.

    Returns
    -------
    {"eigh", "randomized"}

    Examples
    --------
    >>> resolve_eigensolver("auto", 2000, 161), resolve_eigensolver("auto", 300, 20)
    ('randomized', 'eigh')
    """
    if method == "eigh" or method == "randomized":
        return method
    width = min(s, 2 * n_pairs)
    return "eigh" if s <= SMALL_EIGH or 4 * width >= s else "randomized"


class NystromEigensystem(NamedTuple):
    """Top eigenpairs of the normalised subsample kernel matrix ``k(X_s, X_s) / s``.

    Attributes
    ----------
    eigenvalues : Tensor of shape (k,)
        float64, descending, clipped at zero.
    eigenvectors : Tensor of shape (s, k)
        float64, orthonormal columns ``u_i``.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor


def top_eigenpairs(
    matrix: Tensor,
    k: int,
    *,
    method: Eigensolver = "auto",
    generator: torch.Generator | None = None,
    n_iter: int = 4,
    oversampling: int | None = None,
) -> NystromEigensystem:
    r"""Top ``k`` eigenpairs of a symmetric positive semi-definite matrix, in float64.

    ``"eigh"`` is the full :func:`torch.linalg.eigh` (reads the lower triangle).
    ``"randomized"`` is subspace iteration [3]_ on ``k + p`` columns (``p = oversampling``,
    default ``k``), re-orthonormalised by QR at every pass, followed by Rayleigh-Ritz:

    .. math::

        Q_0 = \operatorname{qr}(A\Omega),\quad Q_{t+1} = \operatorname{qr}(A Q_t),\quad
        Q^\top A Q = V \Theta V^\top,\quad (\lambda_i, u_i) = (\theta_i, Q v_i).

    It costs ``O(s^2 (k + p))`` per pass against ``O(s^3)`` for ``eigh``: at ``s = 2000`` and
    ``k = 161`` (float32 passes) it measured 0.3 s against 1.2 s for a float64 ``eigh`` on two
    idle CPU cores (0.55 s against 2.4 s on one core of a loaded machine), with the ``k``-th
    eigenvalue within 0.3 % of ``eigh`` on MNIST (bandwidth 5). SciPy's partial
    ``eigh(subset_by_index=..., driver="evx")`` is exact but took 0.35-1.1 s there and 18 s
    with two BLAS threads beside a busy process (the Householder tridiagonalisation is
    ``O(s^3)`` whatever the subset), so it is not used. ``"auto"`` picks
    ``"eigh"`` when ``s <= 512`` or ``s <= 4 (k + p)``.

    Parameters
    ----------
    matrix : Tensor of shape (s, s)
        Symmetric positive semi-definite. ``"eigh"`` converts it to float64;
        ``"randomized"`` iterates in its dtype and projects in float64.
    k : int
        Number of eigenpairs, ``1 <= k <= s``.
    method : {"auto", "eigh", "randomized"}
        Solver; ``"auto"`` as described above.
    generator : torch.Generator, optional
        CPU generator for the random start of ``"randomized"``.
    n_iter : int
        Subspace-iteration passes of ``"randomized"``.
    oversampling : int, optional
        Extra columns ``p`` of ``"randomized"``; default ``k``.

    Returns
    -------
    NystromEigensystem
        ``eigenvalues`` (k,) descending and clipped at zero, ``eigenvectors`` (s, k).

    Examples
    --------
    >>> import torch
    >>> a = torch.diag(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))
    >>> top_eigenpairs(a, 2).eigenvalues
    tensor([3., 2.], dtype=torch.float64)
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square (s, s); got shape {tuple(matrix.shape)}")
    s = matrix.shape[0]
    if not 1 <= k <= s:
        raise ValueError(f"k must be between 1 and the matrix size {s}; got {k}")
    if method not in ("auto", "eigh", "randomized"):
        raise ValueError(f"method must be 'auto', 'eigh' or 'randomized'; got {method!r}")
    p = k if oversampling is None else max(int(oversampling), 0)
    width = min(s, k + p)
    if method == "auto":
        method = "eigh" if s <= SMALL_EIGH or 4 * width >= s else "randomized"
    if method == "eigh" or width >= s:
        with num_threads(_LAPACK_THREADS):
            values, vectors = torch.linalg.eigh(matrix.to(torch.float64))
    else:
        # Range finding in the matrix's own precision (float32 halves its cost), the
        # Rayleigh-Ritz projection and its eigendecomposition in float64. Products with the
        # caller's threads, the QRs and the small eigh single-threaded.
        a = matrix
        omega = torch.randn(s, width, generator=generator, dtype=torch.float64)
        block = a @ omega.to(device=a.device, dtype=a.dtype)  # (s, k + p)
        for _ in range(n_iter):
            with num_threads(_LAPACK_THREADS):
                q = torch.linalg.qr(block).Q
            block = a @ q
        with num_threads(_LAPACK_THREADS):
            q = torch.linalg.qr(block.to(torch.float64)).Q
        # A Q in the matrix's precision, the projection Q^T (A Q) in float64: on MNIST
        # (s = 2000, k = 161, float32) the eigenvalues agreed with the float64 product's to
        # the digits shown (2.6e-3, 6.6e-2 and 1.6e-4 relative error against eigh at
        # bandwidths 5, 2 and 10, the randomized method's own error) in 10-30 % less time.
        aq = (a @ q.to(a.dtype)).to(torch.float64)  # (s, k + p)
        small = q.T @ aq  # (k + p, k + p)
        small = 0.5 * (small + small.T)
        with num_threads(_LAPACK_THREADS):
            values, v = torch.linalg.eigh(small)
        vectors = q @ v
    values = values.flip(0)[:k].clamp_min(0.0)
    vectors = vectors.flip(1)[:, :k]
    return NystromEigensystem(values, vectors)


def nystrom_eigensystem(
    kernel: KernelFunction,
    x_subsample: Tensor,
    n_eigenpairs: int,
    *,
    method: Eigensolver = "auto",
    generator: torch.Generator | None = None,
) -> NystromEigensystem:
    r"""Top eigenpairs of ``k(X_s, X_s) / s``, the Nystrom estimate of the kernel operator.

    .. math:: \frac{1}{s} K_{ss} u_i = \lambda_i u_i, \qquad
              K_{ss} = [k(x_a, x_b)]_{a, b \in S}

    The kernel block is formed in the dtype of ``x_subsample`` (the working precision: a
    float32 Gram takes half the memory and time); its eigenpairs are computed in float64
    (:func:`top_eigenpairs`).

    Parameters
    ----------
    kernel : callable
        ``(x, z) -> (n_x, n_z)``.
    x_subsample : Tensor of shape (s, n_features)
        The Nystrom subsample ``X_s``, in the working dtype.
    n_eigenpairs : int
        ``q + 1`` for a preconditioner of ``q`` components.
    method : {"auto", "eigh", "randomized"}
        See :func:`top_eigenpairs`.
    generator : torch.Generator, optional
        CPU generator for the random start of the randomized solver.

    Returns
    -------
    NystromEigensystem

    References
    ----------
    .. [1] S. Ma and M. Belkin, "Diving into the shallows", NeurIPS 2017.
    .. [2] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
       training", MLSys 2019.

    Examples
    --------
    >>> import torch
    >>> from slimtrain.kernels.functions import make_kernel
    >>> x = torch.tensor([[0.0], [100.0]])
    >>> nystrom_eigensystem(make_kernel("gaussian", 1.0), x, 2).eigenvalues
    tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    xs = x_subsample
    s = xs.shape[0]
    gram = kernel(xs, xs)  # (s, s) in the working dtype
    gram.div_(s)
    if not bool(torch.isfinite(gram.sum())):  # a sum: no (s, s) temporaries
        raise ValueError(_non_finite_cause(xs))
    return top_eigenpairs(gram, n_eigenpairs, method=method, generator=generator)



def _non_finite_cause(x: Tensor) -> str:
    """Why a kernel block of finite points ``x`` came out non-finite, and what to do."""
    largest = float(x.abs().max()) if x.numel() else 0.0
    limit = torch.finfo(x.dtype).max
    message = (
        "the kernel returned non-finite values on the subsample although the points are finite"
    )
    if largest * largest * x.shape[1] >= limit:
        return (
            f"{message}: the largest feature magnitude is {largest:.3g}, so squared distances "
            f"(up to n_features * {largest:.3g}^2) overflow {x.dtype} (max {limit:.3g}); "
            "rescale the features (e.g. sklearn's StandardScaler) or use dtype='float64'"
        )
    return (
        f"{message} (largest feature magnitude {largest:.3g}); check that a callable kernel "
        "returns finite values, or rescale the features"
    )
