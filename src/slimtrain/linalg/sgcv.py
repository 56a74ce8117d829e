r"""Sampled generalized cross-validation (sGCV) for the slimTik regularization increment.

For a candidate increment :math:`\lambda` of the cumulative regularization :math:`\Lambda`, the
slimTik update (see :mod:`slimtrain.linalg.slimtik`) gives :math:`W(\lambda)` and the sampled GCV
function of the current batch ``(Zs, Cs)`` with ``rows`` rows and ``t`` outputs is

.. math::

    \operatorname{sGCV}(\lambda) =
    \frac{\|Z_s W(\lambda)^\top - C_s\|_F^2}
         {\bigl(t\,\mathrm{rows} - t\,\operatorname{tr}(Z_s B(\lambda)^{-1} Z_s^\top)\bigr)^2},
    \qquad B(\lambda) = M + (\Lambda + \lambda) I .

Everything is evaluated in the eigenbasis of the memory Gram :math:`M = V \operatorname{diag}(s)
V^\top`. With :math:`\tilde G = V^\top G V`, :math:`\tilde H = V^\top H`,
:math:`\tilde W = V^\top W^\top` and :math:`d(\lambda) = 1 / (s + \Lambda + \lambda)`, the
increment is :math:`U = \operatorname{diag}(d)(\tilde H + \lambda \tilde W)` and

.. math::

    \|R(\lambda)\|_F^2 &= \operatorname{tr}(U^\top \tilde G U)
                        - 2 \operatorname{tr}(U^\top \tilde H) + \|R\|_F^2 \\
    \operatorname{tr}(U^\top \tilde G U) &= d^\top (\tilde G \circ \tilde H \tilde H^\top) d
        + \lambda\, d^\top \bigl(\tilde G \circ (\tilde H \tilde W^\top
        + \tilde W \tilde H^\top)\bigr) d
        + \lambda^2 d^\top (\tilde G \circ \tilde W \tilde W^\top) d \\
    \operatorname{tr}(Z_s B^{-1} Z_s^\top) &= \textstyle\sum_j \tilde G_{jj} d_j .

The three ``(p, p)`` matrices of the quadratic forms are built once per step in
``O(p^2 t)``; every candidate then costs ``O(p^2)``, and all candidates are evaluated in one
batched expression.

References
----------
.. [1] E. Newman, J. Chung, M. Chung, L. Ruthotto, "slimTrain -- A Stochastic Approximation
   Method for Training Separable Deep Neural Networks", SIAM J. Sci. Comput. 44(4), 2022.
.. [2] J. Chung, M. Chung, J. T. Slagel, L. Tenorio, "Sampled limited memory methods for
   massive linear inverse problems", Inverse Problems 36(5), 2020.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from slimtrain.linalg.structured import ArrowTerms, arrow_values

__all__ = ["SGCVTerms", "sgcv_terms", "sgcv_values", "candidate_grid", "select_lambda_sgcv"]

_EPS = float(torch.finfo(torch.float64).eps)

#: Points and rounds of the bounded refinement of :func:`select_lambda_sgcv`.
N_REFINE = 16
REFINE_ROUNDS = 2


class SGCVTerms(NamedTuple):
    """Per-step quantities from which sGCV of any candidate follows in ``O(p^2)``.

    Attributes
    ----------
    s : Tensor
        Eigenvalues of the memory Gram, clipped at 0, shape ``(p,)``.
    quad : Tensor
        The quadratic-form matrices ``[G~ o H~H~^T | G~ o (H~W~^T + W~H~^T) | G~ o W~W~^T]``
        side by side, shape ``(p, 3 p)``, so that all candidates' forms take one GEMM.
    lin : Tensor
        ``[sum_k H~_jk^2, sum_k H~_jk W~_jk]``, shape ``(2, p)``.
    gdiag : Tensor
        ``diag(G~)``, shape ``(p,)``.
    r2 : Tensor
        ``||Zs W^T - Cs||_F^2`` before the update, 0-d.
    rows : int
        Rows of the current batch system.
    t : int
        Number of outputs.
    """

    s: Tensor
    quad: Tensor
    lin: Tensor
    gdiag: Tensor
    r2: Tensor
    rows: int
    t: int


def sgcv_terms(
    s: Tensor, Gt: Tensor, Ht: Tensor, Wt: Tensor, r2: Tensor, rows: int
) -> SGCVTerms:
    """Precompute the candidate-independent parts of sGCV.

    Parameters
    ----------
    s : Tensor
        Eigenvalues of the memory Gram ``M``, shape ``(p,)``.
    Gt : Tensor
        Batch Gram in the eigenbasis ``V^T G V``, shape ``(p, p)``.
    Ht : Tensor
        ``V^T H`` with ``H = Zs^T (Zs W^T - Cs)``, shape ``(p, t)``.
    Wt : Tensor
        ``V^T W^T``, shape ``(p, t)``.
    r2 : Tensor
        Squared residual norm before the update, 0-d.
    rows : int
        Rows of the current batch system (``N`` dense, ``N * L`` convolutional).

    Returns
    -------
    SGCVTerms
    """
    HH = Ht @ Ht.T
    HW = Ht @ Wt.T
    WW = Wt @ Wt.T
    quad = torch.cat((Gt * HH, Gt * (HW + HW.T), Gt * WW), dim=1)
    lin = torch.stack(((Ht * Ht).sum(1), (Ht * Wt).sum(1)))
    return SGCVTerms(s, quad, lin, torch.diagonal(Gt).clone(), r2, int(rows), int(Ht.shape[1]))


def sgcv_values(
    terms: SGCVTerms | ArrowTerms, lams: Tensor, sum_lambda: float
) -> tuple[Tensor, Tensor]:
    """sGCV and post-update squared residual for a batch of candidate increments.

    Parameters
    ----------
    terms : SGCVTerms or ArrowTerms
        From :func:`sgcv_terms` (dense eigenbasis), or the block-arrow terms of
        :mod:`slimtrain.linalg.structured`.
    lams : Tensor
        Candidate increments, shape ``(n_candidates,)``; ``sum_lambda + lams`` must be positive.
    sum_lambda : float
        Current cumulative regularization ``Lambda``.

    Returns
    -------
    gcv : Tensor
        sGCV values, shape ``(n_candidates,)``; ``+inf`` where the denominator vanishes.
    residual : Tensor
        ``||Zs W(lam)^T - Cs||_F^2``, shape ``(n_candidates,)``, clipped at 0.
    """
    if isinstance(terms, ArrowTerms):
        gcv, residual, _ = arrow_values(terms, lams, sum_lambda)
        return gcv, residual
    d = 1.0 / (terms.s.unsqueeze(0) + (sum_lambda + lams).unsqueeze(1))  # (n, p)
    # Quadratic forms d^T Q_k d of the three matrices for every candidate, one GEMM: (n, 3).
    n, p = d.shape
    qf = ((d @ terms.quad).view(n, 3, p) * d.unsqueeze(1)).sum(-1)
    lin = d @ terms.lin.T  # (n, 2)
    quad_term = qf[:, 0] + lams * qf[:, 1] + lams * lams * qf[:, 2]
    lin_term = lin[:, 0] + lams * lin[:, 1]
    residual = (quad_term - 2.0 * lin_term + terms.r2).clamp_min(0.0)
    trace = d @ terms.gdiag
    den = terms.t * (terms.rows - trace)
    gcv = torch.where(den > 0, residual / den.clamp_min(1e-300) ** 2, torch.inf)
    return gcv, residual


def candidate_grid(
    sum_lambda: float,
    lower: float,
    upper: float,
    n: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """Trial increments on both sides of zero, log-spaced, sorted ascending.

    Negatives ``-logspace(log10(eps), log10(Lambda - lower), n)`` (only when
    ``Lambda - lower > eps``), positives ``logspace(log10(eps), log10(upper), n)`` and ``0``.
    Every candidate is clipped so that ``Lambda + lam >= lower``.
    """
    parts = [torch.zeros(1, dtype=dtype, device=device)]
    parts.append(torch.logspace(math.log10(_EPS), math.log10(upper), n, dtype=dtype, device=device))
    room = sum_lambda - lower
    if room > _EPS:
        neg = torch.logspace(math.log10(_EPS), math.log10(room), n, dtype=dtype, device=device)
        parts.append(-neg)
    lams = torch.cat(parts).clamp_min(lower - sum_lambda)
    return torch.unique(lams)  # sorted


def _signed_log(lam: Tensor) -> Tensor:
    """Monotone map of ``lam`` to ``sign(lam) * log10(|lam| / eps)`` (0 for ``|lam| <= eps``)."""
    mag = (lam.abs() / _EPS).clamp_min(1.0).log10()
    return torch.sign(lam) * mag


def _signed_exp(u: Tensor) -> Tensor:
    """Inverse of :func:`_signed_log` on ``|lam| >= eps``."""
    return torch.sign(u) * _EPS * torch.pow(10.0, u.abs())


def select_lambda_sgcv(
    terms: SGCVTerms | ArrowTerms,
    sum_lambda: float,
    lower: float,
    upper: float,
    n_candidates: int = 30,
    refine: bool = True,
    n_refine: int = N_REFINE,
    refine_rounds: int = REFINE_ROUNDS,
) -> tuple[float, float, bool]:
    r"""Choose the regularization increment by minimising sampled GCV.

    All trial points of :func:`candidate_grid` are evaluated in one batched expression and the
    best is taken. With ``refine``, the bracket between the neighbours of the best trial point
    is searched again on a uniform grid in the signed log-magnitude
    :math:`u = \operatorname{sign}(\lambda) \log_{10}(|\lambda| / \epsilon)`, ``refine_rounds``
    times, each round one batched evaluation (a bounded 1-D search that, unlike golden section,
    never runs a Python loop per evaluation).

    Parameters
    ----------
    terms : SGCVTerms or ArrowTerms
        From :func:`sgcv_terms`, or the block-arrow terms of :mod:`slimtrain.linalg.structured`.
    sum_lambda : float
        Current ``Lambda``.
    lower, upper : float
        ``Lambda + lam >= lower`` is enforced; ``upper`` is the largest positive trial point.
    n_candidates : int
        Trial points per side.
    refine : bool
        Refine around the best trial point.
    n_refine, refine_rounds : int
        Points and rounds of the refinement.

    Returns
    -------
    lam : float
        The chosen increment.
    gcv : float
        sGCV at ``lam`` (``inf`` when undefined for every candidate).
    finite : bool
        False when no candidate had a finite sGCV value (the caller keeps ``Lambda``).

    References
    ----------
    Newman, Chung, Chung, Ruthotto, SIAM J. Sci. Comput. 44(4), 2022, section 3.2.
    """
    dtype, device = terms.r2.dtype, terms.r2.device
    lams = candidate_grid(sum_lambda, lower, upper, n_candidates, dtype=dtype, device=device)
    gcv, _ = sgcv_values(terms, lams, sum_lambda)
    best = int(torch.argmin(gcv))
    if not bool(torch.isfinite(gcv[best])):
        return 0.0, math.inf, False
    best_lam, best_gcv = lams[best], gcv[best]
    if refine and lams.numel() > 1:
        lo_i, hi_i = max(best - 1, 0), min(best + 1, lams.numel() - 1)
        lo, hi = _signed_log(lams[lo_i]), _signed_log(lams[hi_i])
        floor = lower - sum_lambda
        for _ in range(refine_rounds):
            u = torch.linspace(float(lo), float(hi), n_refine, dtype=dtype, device=device)
            trial = _signed_exp(u).clamp(min=floor, max=upper)
            g, _ = sgcv_values(terms, trial, sum_lambda)
            j = int(torch.argmin(g))
            if g[j] < best_gcv:
                best_lam, best_gcv = trial[j], g[j]
            step = (hi - lo) / (n_refine - 1)
            centre = _signed_log(best_lam)
            lo, hi = centre - step, centre + step
    return float(best_lam), float(best_gcv), True
