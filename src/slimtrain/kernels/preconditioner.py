r"""EigenPro preconditioner and parameter rule: the soft-flattened preconditioner, the choice of
``q``, the precision limit on ``q``, and the batch and step size of EigenPro 2.

Pure functions over the float64 eigenvalues of :mod:`slimtrain.kernels.nystrom`.

References
----------
.. [1] S. Ma and M. Belkin, "Diving into the shallows: a computational perspective on
   large-scale shallow learning", NeurIPS 2017.
.. [2] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
   training", MLSys 2019.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from slimtrain.kernels.nystrom import NystromEigensystem

__all__ = [
    "DEFAULT_SAFETY",
    "DEFAULT_SOFTENING",
    "MAX_AUTO_COMPONENTS",
    "Preconditioner",
    "choose_n_components",
    "eigenpro_preconditioner",
    "eigenpro_step_and_batch",
    "numerical_component_limit",
    "preconditioned_top_eigenvalue",
]

DEFAULT_SOFTENING = 0.95
"""Exponent ``a`` of the soft flattening ``(lambda_q / lambda_i)^a``."""
DEFAULT_SAFETY = 0.99
"""Factor applied to the step size of the EigenPro 2 rule."""
MAX_AUTO_COMPONENTS = 160
"""Cap on the automatically chosen ``q``."""


class Preconditioner(NamedTuple):
    r"""EigenPro preconditioner on the Nystrom subsample.

    Attributes
    ----------
    eigenvectors : Tensor of shape (s, q)
        ``E = [u_1, ..., u_q] / sqrt(s)`` in the working dtype.
    scale : Tensor of shape (q,)
        ``D_i = (1 - (mu_{q+1} / mu_i)^a) / lambda_i`` in the working dtype.
    top_eigenvalue : float
        Top eigenvalue of the preconditioned operator, ``mu_1^(1-a) mu_{q+1}^a``.
    """

    eigenvectors: Tensor
    scale: Tensor
    top_eigenvalue: float


def preconditioned_top_eigenvalue(
    eigenvalues: Tensor, n_components: int, softening: float = DEFAULT_SOFTENING
) -> float:
    r"""Top eigenvalue of the soft-flattened operator.

    Flattening the top ``q`` directions to ``lambda_i^{1-a} lambda_{q+1}^a`` leaves

    .. math:: \tilde\lambda_1 = \frac{\lambda_1}{(\lambda_1 / \lambda_{q+1})^a}
              = \lambda_1^{1-a} \lambda_{q+1}^{a}

    (``lambda_1`` itself for ``q = 0``).

    Parameters
    ----------
    eigenvalues : Tensor of shape (k,)
        Descending eigenvalues, ``k > n_components``.
    n_components : int
        ``q >= 0``.
    softening : float
        ``a`` in ``[0, 1]``.

    Returns
    -------
    float

    Examples
    --------
    >>> import torch
    >>> lam = torch.tensor([1.0, 0.1, 0.01], dtype=torch.float64)
    >>> preconditioned_top_eigenvalue(lam, 2, softening=1.0)
    0.01
    """
    if not 0 <= n_components < eigenvalues.shape[0]:
        raise ValueError(
            f"n_components={n_components} needs at least {n_components + 1} eigenvalues; "
            f"got {eigenvalues.shape[0]}"
        )
    top = float(eigenvalues[0])
    if n_components == 0:
        return top
    tail = float(eigenvalues[n_components])
    return top ** (1.0 - softening) * tail**softening


def choose_n_components(
    eigenvalues: Tensor,
    beta: float,
    target_batch_size: int,
    *,
    softening: float = DEFAULT_SOFTENING,
    max_components: int | None = None,
) -> int:
    r"""Smallest ``q`` whose critical batch size reaches the target (EigenPro 2).

    .. math:: q = \min\{q : m^*(q) = \beta / \tilde\lambda_1(q) \ge m_{\max}\}

    capped at ``max_components`` (default ``len(eigenvalues) - 1``); directions with a zero
    eigenvalue are never flattened against.

    Parameters
    ----------
    eigenvalues : Tensor of shape (k,)
        Descending eigenvalues of ``k(X_s, X_s)/s`` (shifted by ``ridge / n`` if any).
    beta : float
        ``max_i k(x_i, x_i)`` (plus the ridge).
    target_batch_size : int
        ``m_max``, the largest batch the memory allows.
    softening : float
        Exponent ``a`` in ``[0, 1]`` of the soft flattening.
    max_components : int, optional
        Largest ``q`` considered (default ``len(eigenvalues) - 1``).

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> lam = torch.tensor([0.5, 0.1, 0.01, 0.001], dtype=torch.float64)
    >>> choose_n_components(lam, beta=1.0, target_batch_size=50, softening=1.0)
    2
    """
    cap = eigenvalues.shape[0] - 1 if max_components is None else int(max_components)
    cap = max(0, min(cap, eigenvalues.shape[0] - 1))
    for q in range(cap + 1):
        if q > 0 and float(eigenvalues[q]) <= 0.0:
            return q - 1
        lt1 = preconditioned_top_eigenvalue(eigenvalues, q, softening)
        if lt1 <= 0.0 or beta / lt1 >= target_batch_size:
            return q
    return cap


def numerical_component_limit(
    eigenvalues: Tensor, dtype: torch.dtype, softening: float = DEFAULT_SOFTENING
) -> int:
    r"""Largest ``q`` whose flattening the working precision can resolve.

    The preconditioned step is about ``1 / lt1(q)``, so rounding errors of relative size
    ``eps`` in the kernel blocks are amplified by ``lambda_1 / lt1(q)``. ``q`` is kept where

    .. math:: \tilde\lambda_1(q) \ge 100\, \varepsilon_{\mathrm{dtype}}\, \lambda_1,
              \qquad \lambda_{q+1} > 0,

    i.e. an amplification of at most ``1 / (100 eps)`` (about ``8e4`` in float32).

    Parameters
    ----------
    eigenvalues : Tensor of shape (k,)
        Descending.
    dtype : torch.dtype
        Working dtype of the iteration.
    softening : float
        Exponent ``a`` in ``[0, 1]`` of the soft flattening.

    Returns
    -------
    int
        Between 0 and ``k - 1``.

    Examples
    --------
    >>> import torch
    >>> lam = torch.tensor([1.0, 1e-3, 1e-6, 1e-9], dtype=torch.float64)
    >>> numerical_component_limit(lam, torch.float32, 1.0), numerical_component_limit(
    ...     lam, torch.float64, 1.0)
    (1, 3)
    """
    floor = 100.0 * torch.finfo(dtype).eps * float(eigenvalues[0])
    q = 0
    for j in range(1, eigenvalues.shape[0]):
        if float(eigenvalues[j]) <= 0.0:
            break
        if preconditioned_top_eigenvalue(eigenvalues, j, softening) < floor:
            break
        q = j
    return q


def eigenpro_preconditioner(
    eigensystem: NystromEigensystem,
    n_components: int,
    *,
    shift: float = 0.0,
    softening: float = DEFAULT_SOFTENING,
    dtype: torch.dtype = torch.float32,
) -> Preconditioner:
    r"""Soft-flattened EigenPro preconditioner from a Nystrom eigensystem.

    With ``mu_i = lambda_i + shift`` (``shift = ridge / n``; zero without a ridge),

    .. math::

        E = \frac{1}{\sqrt{s}} [u_1, \dots, u_q], \qquad
        D_i = \frac{1 - (\mu_{q+1} / \mu_i)^a}{\lambda_i}, \quad i \le q.

    The correction :math:`\alpha_S \mathrel{+}= \frac{\eta}{m} E D E^\top k(X_S, X_B) g` turns
    eigenvalue ``mu_i`` of the iteration operator into :math:`\mu_i^{1-a}\mu_{q+1}^a` for
    ``i <= q`` and leaves the others, so the top eigenvalue becomes
    :func:`preconditioned_top_eigenvalue`.

    Parameters
    ----------
    eigensystem : NystromEigensystem
        At least ``q + 1`` eigenpairs.
    n_components : int
        ``q >= 0``; ``q = 0`` gives plain SGD (empty ``E``).
    shift : float
        ``ridge / n``.
    softening : float
        ``a`` in ``[0, 1]``.
    dtype : torch.dtype
        Working dtype of ``E`` and ``D``.

    Returns
    -------
    Preconditioner

    References
    ----------
    .. [1] S. Ma and M. Belkin, "Diving into the shallows", NeurIPS 2017.
    .. [2] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
       training", MLSys 2019.

    Examples
    --------
    >>> import torch
    >>> eig = NystromEigensystem(torch.tensor([0.4, 0.1], dtype=torch.float64),
    ...                          torch.eye(2, dtype=torch.float64))
    >>> p = eigenpro_preconditioner(eig, 1, softening=1.0, dtype=torch.float64)
    >>> p.scale, p.top_eigenvalue
    (tensor([1.8750], dtype=torch.float64), 0.1)
    """
    values, vectors = eigensystem
    if not 0.0 <= softening <= 1.0:
        raise ValueError(f"softening must be in [0, 1]; got {softening}")
    if shift < 0.0 or not math.isfinite(shift):
        raise ValueError(f"shift must be finite and >= 0; got {shift}")
    mu = values + shift
    top = preconditioned_top_eigenvalue(mu, n_components, softening)
    s = vectors.shape[0]
    q = n_components
    lam = values[:q]
    ratio = (mu[q] / mu[:q]).clamp(0.0, 1.0) if q > 0 else mu[:0]
    scale = torch.where(
        lam > 0, (1.0 - ratio**softening) / lam.clamp_min(torch.finfo(lam.dtype).tiny), 0.0
    )
    e = vectors[:, :q] / math.sqrt(s)
    return Preconditioner(e.to(dtype), scale.to(dtype), top)


def eigenpro_step_and_batch(
    beta: float,
    top_eigenvalue: float,
    max_batch_size: int,
    *,
    batch_size: int | None = None,
    safety: float = DEFAULT_SAFETY,
) -> tuple[int, float]:
    r"""Batch size and step size of EigenPro 2.

    With the critical batch size :math:`m^* = \beta / \tilde\lambda_1`,

    .. math::

        m = \min(\lfloor m^* \rfloor + 1, m_{\max}), \qquad
        \eta = c \cdot \begin{cases} m / \beta & m < m^* \\
        2m / (\beta + (m - 1)\tilde\lambda_1) & m \ge m^* \end{cases}

    with the safety factor ``c = 0.99``. A given ``batch_size`` replaces the first rule.

    Parameters
    ----------
    beta : float
        ``max_i k(x_i, x_i)``.
    top_eigenvalue : float
        ``lt1``, top eigenvalue of the preconditioned operator.
    max_batch_size : int
        ``m_max`` from the memory budget.
    batch_size : int, optional
        Fixed ``m`` instead of the automatic one.
    safety : float
        ``c``.

    Returns
    -------
    (batch_size, step_size) : tuple of (int, float)

    References
    ----------
    .. [1] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
       training", MLSys 2019.

    Examples
    --------
    >>> eigenpro_step_and_batch(1.0, 0.01, 1000)
    (101, 99.99)
    >>> eigenpro_step_and_batch(1.0, 0.01, 50)
    (50, 49.5)
    """
    if not beta > 0.0 or not math.isfinite(beta):
        raise ValueError(f"beta must be positive and finite; got {beta}")
    if not top_eigenvalue >= 0.0 or not math.isfinite(top_eigenvalue):
        raise ValueError(f"top_eigenvalue must be finite and >= 0; got {top_eigenvalue}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1; got {max_batch_size}")
    critical = beta / top_eigenvalue if top_eigenvalue > 0.0 else math.inf
    if batch_size is None:
        m = max_batch_size if math.isinf(critical) else min(math.floor(critical) + 1,
                                                              max_batch_size)
    else:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        m = int(batch_size)
    if m < critical:
        eta = m / beta
    else:
        eta = 2.0 * m / (beta + (m - 1) * top_eigenvalue)
    return m, safety * eta
