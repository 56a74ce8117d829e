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

from typing import NamedTuple

import torch
from torch import Tensor

from slimtrain.linalg.structured import ArrowTerms, arrow_values

__all__ = [
    "SGCVChoice",
    "SGCVTerms",
    "sgcv_terms",
    "sgcv_values",
    "candidate_grid",
    "select_lambda_sgcv",
]

_EPS = float(torch.finfo(torch.float64).eps)

#: Points and rounds of the bounded refinement of :func:`select_lambda_sgcv`.
N_REFINE = 16
REFINE_ROUNDS = 2

#: The probe below the floor: sGCV is also evaluated at ``Lambda + lam = FLOOR_PROBE * lower``
#: (never chosen) to tell whether the floor ``lower`` limits the fit.
FLOOR_PROBE = 1e-2


class SGCVTerms(NamedTuple):
    """Per-step quantities from which sGCV of any candidate follows in ``O(p^2)``.

    Attributes
    ----------
    s : Tensor
        Eigenvalues of the memory Gram, clipped at 0, shape ``(p,)``.
    quad : Tensor
        The quadratic-form matrices ``[G~ o H~H~^T | G~ o (H~W~^T + W~H~^T) | G~ o W~W~^T]``
        side by side, then the columns ``sum_k H~_jk^2``, ``sum_k H~_jk W~_jk`` and
        ``diag(G~)`` of the linear terms and the trace, shape ``(p, 3 p + 3)``: every
        candidate's forms, linear terms and trace take one GEMM.
    r2 : Tensor
        ``||Zs W^T - Cs||_F^2`` before the update, 0-d.
    rows : int
        Rows of the current batch system.
    t : int
        Number of outputs.
    """

    s: Tensor
    quad: Tensor
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
    linear = torch.stack(((Ht * Ht).sum(1), (Ht * Wt).sum(1), torch.diagonal(Gt)), dim=1)
    quad = torch.cat((Gt * HH, Gt * (HW + HW.T), Gt * WW, linear), dim=1)  # (p, 3 p + 3)
    return SGCVTerms(s, quad, r2, int(rows), int(Ht.shape[1]))


def sgcv_values(
    terms: SGCVTerms | ArrowTerms, lams: Tensor, sum_lambda: Tensor | float
) -> tuple[Tensor, Tensor]:
    """sGCV and post-update squared residual for a batch of candidate increments.

    Parameters
    ----------
    terms : SGCVTerms or ArrowTerms
        From :func:`sgcv_terms` (dense eigenbasis), or the block-arrow terms of
        :mod:`slimtrain.linalg.structured`.
    lams : Tensor
        Candidate increments, shape ``(n_candidates,)``; ``sum_lambda + lams`` must be positive.
    sum_lambda : Tensor or float
        Current cumulative regularization ``Lambda`` (a 0-d tensor or a number).

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
    d = 1.0 / (terms.s + (sum_lambda + lams).unsqueeze(1))  # (n, p)
    # One GEMM: the quadratic forms d^T Q_k d of the three matrices (after a product with d),
    # the two linear terms and the trace, for every candidate.
    n, p = d.shape
    Y = d @ terms.quad  # (n, 3 p + 3)
    qf = (Y[:, : 3 * p].view(n, 3, p) * d.unsqueeze(1)).sum(-1)  # (n, 3)
    lin0, lin1, trace = Y[:, 3 * p], Y[:, 3 * p + 1], Y[:, 3 * p + 2]
    # ||R(lam)||^2 = qf0 + lam qf1 + lam^2 qf2 - 2 (lin0 + lam lin1) + ||R||^2 (Horner in lam)
    residual = qf[:, 0] - 2.0 * lin0 + lams * (qf[:, 1] - 2.0 * lin1 + lams * qf[:, 2])
    residual = (residual + terms.r2).clamp_min(0.0)
    den = terms.t * (terms.rows - trace)
    gcv = torch.where(den > 0, residual / den.clamp_min(1e-300) ** 2, torch.inf)
    return gcv, residual


def candidate_grid(
    sum_lambda: Tensor | float,
    lower: Tensor | float,
    upper: Tensor | float,
    n: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    unit: Tensor | float = 1.0,
) -> Tensor:
    """Trial increments on both sides of zero, log-spaced, sorted ascending (tensor math only).

    With ``e = eps * unit`` (``unit`` the data scale of the step, 1 for absolute units):
    negatives ``-logspace(log10(e), log10(Lambda - lower), n)``, positives
    ``logspace(log10(e), log10(upper), n)`` and ``0``; ``lower``, ``upper`` and ``Lambda`` are
    in the same (absolute) units. Every candidate is clipped so that ``Lambda + lam >= lower``.
    When ``Lambda - lower <= e`` the negative side collapses onto ``[-e, 0]`` (clipped at
    ``lower - Lambda``) instead of being dropped, so that the grid has a fixed size ``2 n + 1``
    and is built without reading ``Lambda`` on the host (no device synchronisation).
    """
    lam_ = torch.as_tensor(sum_lambda, dtype=dtype, device=device)
    lo = torch.as_tensor(lower, dtype=dtype, device=device)
    e = _EPS * torch.as_tensor(unit, dtype=dtype, device=device)
    base = torch.linspace(0.0, 1.0, n, dtype=dtype, device=device)
    pos = e * (torch.as_tensor(upper, dtype=dtype, device=device) / e) ** base
    room = (lam_ - lo).clamp_min(e)
    neg = e * (room / e) ** base
    lams = torch.cat((-neg.flip(0), torch.zeros(1, dtype=dtype, device=device), pos))
    return lams.clamp_min(lo - lam_)  # clipping is monotone: the grid stays sorted


def _signed_log(lam: Tensor, e: Tensor) -> Tensor:
    """Monotone map of ``lam`` to ``sign(lam) * log10(|lam| / e)`` (0 for ``|lam| <= e``)."""
    mag = (lam.abs() / e).clamp_min(1.0).log10()
    return torch.sign(lam) * mag


def _signed_exp(u: Tensor, e: Tensor) -> Tensor:
    """Inverse of :func:`_signed_log` on ``|lam| >= e``."""
    return torch.sign(u) * e * torch.pow(10.0, u.abs())


class SGCVChoice(NamedTuple):
    """The outcome of :func:`select_lambda_sgcv`, every field a 0-d tensor on the device.

    Attributes
    ----------
    lam : Tensor
        The chosen increment (0 when no candidate had a finite sGCV value).
    gcv : Tensor
        sGCV at ``lam`` (``inf`` when undefined for every candidate).
    residual : Tensor
        ``||Zs W(lam)^T - Cs||_F^2`` at ``lam``.
    finite : Tensor
        Boolean: some candidate had a finite sGCV value.
    probe_gcv, probe_residual : Tensor
        sGCV and squared residual at ``Lambda + lam = FLOOR_PROBE * lower``, a point below the
        floor that is never chosen: they tell whether the floor limits the fit.
    """

    lam: Tensor
    gcv: Tensor
    residual: Tensor
    finite: Tensor
    probe_gcv: Tensor
    probe_residual: Tensor


def select_lambda_sgcv(
    terms: SGCVTerms | ArrowTerms,
    sum_lambda: Tensor | float,
    lower: Tensor | float,
    upper: Tensor | float,
    n_candidates: int = 30,
    refine: bool = True,
    n_refine: int = N_REFINE,
    refine_rounds: int = REFINE_ROUNDS,
    *,
    unit: Tensor | float = 1.0,
) -> SGCVChoice:
    r"""Choose the regularization increment by minimising sampled GCV.

    All trial points of :func:`candidate_grid` (and one probe below the floor) are evaluated in
    one batched expression and the best trial point is taken. With ``refine``, the bracket
    between the neighbours of the best trial point is searched again on a uniform grid in the
    signed log-magnitude :math:`u = \operatorname{sign}(\lambda) \log_{10}(|\lambda| / e)`,
    :math:`e = \epsilon \cdot \text{unit}`, ``refine_rounds`` times, each round one batched
    evaluation (a bounded 1-D search that, unlike golden section, never runs a Python loop per
    evaluation). Nothing is read back to the host: the choice stays on the device.

    Parameters
    ----------
    terms : SGCVTerms or ArrowTerms
        From :func:`sgcv_terms`, or the block-arrow terms of :mod:`slimtrain.linalg.structured`.
    sum_lambda : Tensor or float
        Current ``Lambda``.
    lower, upper : Tensor or float
        ``Lambda + lam >= lower`` is enforced; ``upper`` is the largest positive trial point
        (both in the units of ``Lambda``).
    n_candidates : int
        Trial points per side.
    refine : bool
        Refine around the best trial point.
    n_refine, refine_rounds : int
        Points and rounds of the refinement.
    unit : Tensor or float
        The data scale the grid's smallest magnitude ``eps * unit`` refers to (1: absolute).

    Returns
    -------
    SGCVChoice

    References
    ----------
    Newman, Chung, Chung, Ruthotto, SIAM J. Sci. Comput. 44(4), 2022, section 3.2.
    """
    dtype, device = terms.r2.dtype, terms.r2.device
    lam_ = torch.as_tensor(sum_lambda, dtype=dtype, device=device)
    lo_t = torch.as_tensor(lower, dtype=dtype, device=device)
    up_t = torch.as_tensor(upper, dtype=dtype, device=device)
    e = _EPS * torch.as_tensor(unit, dtype=dtype, device=device)
    lams = candidate_grid(lam_, lo_t, up_t, n_candidates, dtype=dtype, device=device, unit=unit)
    probe = (FLOOR_PROBE * lo_t - lam_).reshape(1)
    gcv_all, res_all = sgcv_values(terms, torch.cat((lams, probe)), lam_)
    gcv, res = gcv_all[:-1], res_all[:-1]
    best = torch.argmin(gcv)
    best_lam, best_gcv, best_res = lams[best], gcv[best], res[best]
    finite = torch.isfinite(best_gcv)
    if refine and lams.numel() > 1:
        last = lams.numel() - 1
        lo = _signed_log(lams[(best - 1).clamp_min(0)], e)
        hi = _signed_log(lams[(best + 1).clamp_max(last)], e)
        base = torch.linspace(0.0, 1.0, n_refine, dtype=dtype, device=device)
        floor = lo_t - lam_
        for _ in range(refine_rounds):
            trial = _signed_exp(lo + (hi - lo) * base, e).clamp(min=floor, max=up_t)
            g, r = sgcv_values(terms, trial, lam_)
            j = torch.argmin(g)
            better = g[j] < best_gcv
            best_lam = torch.where(better, trial[j], best_lam)
            best_res = torch.where(better, r[j], best_res)
            best_gcv = torch.where(better, g[j], best_gcv)
            step = (hi - lo) / (n_refine - 1)
            centre = _signed_log(best_lam, e)
            lo, hi = centre - step, centre + step
    zero = torch.zeros((), dtype=dtype, device=device)
    return SGCVChoice(
        torch.where(finite, best_lam, zero),
        torch.where(finite, best_gcv, torch.inf),
        best_res,
        finite,
        gcv_all[-1],
        res_all[-1],
    )
