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

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from slimtrain.linalg.structured import ArrowTerms, arrow_values, gcv_ratio

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
        side by side, then the column ``diag(G~)`` of the trace, shape ``(p, 3 p + 1)``: every
        candidate's forms and trace take one GEMM.
    linear : Tensor
        ``[2 sum_k H~_jk^2 | 2 sum_k H~_jk W~_jk | 0]``, shape ``(3 p,)``: the linear terms of the
        residual, subtracted from the GEMM's first ``3 p`` columns so that one product with ``d``
        gives the residual's three coefficients in ``lam``.
    r2 : Tensor
        ``||Zs W^T - Cs||_F^2`` before the update, 0-d.
    rows : int
        Rows of the current batch system.
    t : int
        Number of outputs.
    """

    s: Tensor
    quad: Tensor
    linear: Tensor
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
    p = Gt.shape[0]
    HW = Ht @ Wt.T
    quad = torch.empty(p, 3 * p + 1, dtype=Gt.dtype, device=Gt.device)
    torch.mul(Gt, Ht @ Ht.T, out=quad[:, :p])
    torch.mul(Gt, HW + HW.T, out=quad[:, p : 2 * p])
    torch.mul(Gt, Wt @ Wt.T, out=quad[:, 2 * p : 3 * p])
    quad[:, 3 * p] = torch.diagonal(Gt)
    linear = torch.zeros(3 * p, dtype=Gt.dtype, device=Gt.device)
    torch.sum(Ht * Ht, 1, out=linear[:p])
    torch.sum(Ht * Wt, 1, out=linear[p : 2 * p])
    linear[: 2 * p] *= 2.0
    return SGCVTerms(s, quad, linear, r2, int(rows), int(Ht.shape[1]))


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
    d = (terms.s + (sum_lambda + lams).unsqueeze(1)).reciprocal_()  # (n, p)
    n, p = d.shape
    # One GEMM gives, for every candidate, d^T Q_k - linear_k of the three quadratic forms and
    # the trace; one more product with d gives the residual's coefficients of 1, lam, lam^2:
    # ||R(lam)||^2 = (d^T Q0 d - 2 d.hh) + lam (d^T Q1 d - 2 d.hw) + lam^2 d^T Q2 d + ||R||^2.
    Y = d @ terms.quad  # (n, 3 p + 1)
    scaled = lams.unsqueeze(1).pow(_powers(d.dtype, d.device)).unsqueeze(2) * d.unsqueeze(1)
    residual = ((Y[:, : 3 * p] - terms.linear).view(n, 3, p) * scaled).sum((1, 2))
    residual = residual.add_(terms.r2).clamp_min_(0.0)
    return gcv_ratio(residual, terms.t * (terms.rows - Y[:, 3 * p])), residual


@functools.lru_cache(maxsize=32)
def _signed_bases(n: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(neg, pos)`` of shape ``(2 n + 1,)``: ``neg = [-1, ..., -0 | 0 | 0, ..., 0]`` and
    ``pos = [0, ..., 0 | 0 | 0, ..., 1]`` with ``linspace(0, 1, n)`` on each side (cached, read
    only): the grid's signed log-magnitudes are ``neg * log10(room / e) + pos * log10(upper / e)``.
    """
    base = torch.linspace(0.0, 1.0, n, dtype=dtype, device=device)
    zeros = torch.zeros(n + 1, dtype=dtype, device=device)
    return torch.cat((-base.flip(0), zeros)), torch.cat((zeros, base))


@functools.lru_cache(maxsize=8)
def _powers(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[0, 1, 2]`` (cached, read only): the powers of ``lam`` in the residual."""
    return torch.arange(3, dtype=dtype, device=device)


@functools.lru_cache(maxsize=8)
def _neighbours(device: torch.device) -> Tensor:
    """``[-1, 1]`` (cached, read only): offsets of the neighbours of the best trial point."""
    return torch.tensor([-1, 1], device=device)


@functools.lru_cache(maxsize=32)
def _linspace(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``linspace(0, 1, n)`` (cached, read only)."""
    return torch.linspace(0.0, 1.0, n, dtype=dtype, device=device)


def _grid_u(lam_: Tensor, lo: Tensor, up: Tensor, e: Tensor, n: int) -> Tensor:
    """Signed log-magnitudes ``u`` of the trial grid (see :func:`candidate_grid`)."""
    neg, pos = _signed_bases(n, lam_.dtype, lam_.device)
    room = torch.log10(((lam_ - lo) / e).clamp_min(1.0))
    return torch.addcmul(neg * room, pos, torch.log10(up / e))


def _lam_of(u: Tensor, e: Tensor, floor: Tensor, up: Tensor) -> Tensor:
    """``sign(u) e 10^|u|`` (the inverse of ``u = sign(lam) log10(|lam| / e)``), clipped to
    ``[floor, up]``."""
    lam = torch.pow(10.0, u.abs()).mul_(e).mul_(torch.sign(u))
    return lam.clamp_(min=floor, max=up)


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
    up = torch.as_tensor(upper, dtype=dtype, device=device)
    e = _EPS * torch.as_tensor(unit, dtype=dtype, device=device)
    return _lam_of(_grid_u(lam_, lo, up, e, n), e, lo - lam_, up)


class SGCVChoice(NamedTuple):
    """The outcome of :func:`select_lambda_sgcv`, every field a 0-d tensor on the device.

    Attributes
    ----------
    lam : Tensor
        The chosen increment; when no candidate had a finite sGCV value, the increment that
        keeps ``Lambda`` (``max(0, lower - Lambda)``).
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
    floor = lo_t - lam_
    u = _grid_u(lam_, lo_t, up_t, e, n_candidates)
    lams = _lam_of(u, e, floor, up_t)
    probe = (FLOOR_PROBE * lo_t - lam_).reshape(1)
    gcv_all, res_all = sgcv_values(terms, torch.cat((lams, probe)), lam_)
    # Rows gcv, residual, lam, u: the running best is one column of such a table.
    table = torch.stack((gcv_all[:-1], res_all[:-1], lams, u))
    best = torch.argmin(table[0])
    finite = table[0, best] < torch.inf  # sGCV is never NaN: inf marks the undefined
    # No finite value: keep Lambda (the middle trial point, lam = max(0, lower - Lambda)).
    best = torch.where(finite, best, n_candidates)
    incumbent = table[:, best]
    if refine and n_refine > 1:
        ends = u[(best + _neighbours(device)).clamp_(0, u.numel() - 1)]
        lo, hi = ends[0], ends[1]
        base = _linspace(n_refine, dtype, device)
        for _ in range(refine_rounds):
            trial_u = torch.lerp(lo, hi, base)
            trial = _lam_of(trial_u, e, floor, up_t)
            g, r = sgcv_values(terms, trial, lam_)
            # The incumbent first: argmin keeps it on ties, so a round never makes things worse.
            table = torch.cat((incumbent.unsqueeze(1), torch.stack((g, r, trial, trial_u))), 1)
            incumbent = table[:, torch.argmin(table[0])]
            step = (hi - lo) / (n_refine - 1)
            lo, hi = incumbent[3] - step, incumbent[3] + step
    return SGCVChoice(incumbent[2], incumbent[0], incumbent[1], finite, gcv_all[-1], res_all[-1])
