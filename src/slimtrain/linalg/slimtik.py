r"""slimTik: the sampled limited-memory Tikhonov update of linear weights.

At step :math:`k`, with the scaled batch ``Zs`` of shape ``(n_rows, p)`` and ``Cs`` of shape
``(n_rows, t)`` (``reduction="mean"`` divides both by :math:`\sqrt{N}`, ``N`` the samples of the
batch), the batch Gram :math:`G = Z_s^\top Z_s`, the memory Gram
:math:`M = G + \sum_{i=1}^{r} G_{k-i}` of the last ``r`` batches, the residual
:math:`R = Z_s W^\top - C_s` and :math:`H = Z_s^\top R`, the update is

.. math::

    \Lambda_{k} &= \Lambda_{k-1} + \lambda_k, \qquad \Lambda_k \ge \text{lower}, \\
    W_k^\top &= W_{k-1}^\top - (M + \Lambda_k I)^{-1} (H + \lambda_k W_{k-1}^\top),

with :math:`\lambda_k` chosen by sampled GCV (:mod:`slimtrain.linalg.sgcv`) or fixed
(``lambda_rule="constant"``). One eigendecomposition :math:`M = V \operatorname{diag}(s) V^\top`
(float64) serves the solve and every sGCV candidate; when the statistics carry a block
structure (a strided transposed-convolution head), the blocks are eigendecomposed instead
(:mod:`slimtrain.linalg.structured`). The step needs only
:class:`~slimtrain.linalg.stats.GramStats` of the batch, so its cost after forming them is
``O(p^3 + n_candidates p^2 + p^2 t)``, independent of the batch size, and sums of the statistics
over processes give the distributed step.

With memory covering every batch, :math:`W_k` is exactly the Tikhonov solution

.. math::

    W_k = \arg\min_W \sum_{i \le k} \tfrac12 \|Z_{s,i} W^\top - C_{s,i}\|_F^2
          + \tfrac{\Lambda_0}{2} \|W - W_0\|_F^2 + \tfrac{\Lambda_k - \Lambda_0}{2} \|W\|_F^2 .

References
----------
.. [1] E. Newman, J. Chung, M. Chung, L. Ruthotto, "slimTrain -- A Stochastic Approximation
   Method for Training Separable Deep Neural Networks", SIAM J. Sci. Comput. 44(4), 2022.
.. [2] J. Chung, M. Chung, J. T. Slagel, L. Tenorio, "Sampled limited memory methods for
   massive linear inverse problems", Inverse Problems 36(5), 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from slimtrain.linalg.sgcv import (
    N_REFINE,
    REFINE_ROUNDS,
    SGCVTerms,
    select_lambda_sgcv,
    sgcv_terms,
    sgcv_values,
)
from slimtrain.linalg.stats import GramStats
from slimtrain.linalg.structured import (
    ArrowTerms,
    GramStructure,
    arrow_values,
    block_basis,
    fits_structure,
)

__all__ = [
    "SlimTikConfig",
    "SlimTikState",
    "SlimTikInfo",
    "SlimTikStatus",
    "initial_state",
    "slimtik_update",
]


class SlimTikStatus(Enum):
    """Outcome of a slimTik step; each value tells the user what it means and what to do."""

    OK = "ok"
    CONSTANT = "ok: lambda_rule='constant' added initial_lambda to Lambda"
    LAMBDA_AT_UPPER = (
        "sGCV chose the largest trial increment (upper); the batch asks for more regularization "
        "than the grid allows: raise `upper`."
    )
    LAMBDA_AT_LOWER = (
        "Lambda reached its lower bound `lower`: sGCV found no benefit in regularizing; "
        "lower `lower` if the features are well conditioned, or ignore."
    )
    DEGENERATE = (
        "the rows held in memory (this batch included) are no more than the unknowns p, so the "
        "batch is interpolated and sGCV is undefined; Lambda was kept. Use a larger batch or a "
        "deeper memory_depth."
    )
    CLIPPED = (
        "the prescribed increment (lam, or initial_lambda with lambda_rule='constant') would "
        "take Lambda below `lower`; it was raised so that Lambda = lower. Lower `lower` or "
        "raise the increment if you meant that Lambda."
    )
    GCV_UNDEFINED = (
        "sGCV was not finite for any trial increment (the batch influence trace equals its rows); "
        "Lambda was kept. Use a larger batch or a deeper memory_depth."
    )

    @property
    def is_ok(self) -> bool:
        """True for the statuses that need no action."""
        return self in (SlimTikStatus.OK, SlimTikStatus.CONSTANT)


@dataclass(frozen=True)
class SlimTikConfig:
    """Statistical settings of slimTik (validated on construction).

    Parameters
    ----------
    memory_depth : int
        ``r``, the number of previous batch Grams kept (0: the current batch only).
    initial_lambda : float
        ``Lambda_0``; also the fixed increment of ``lambda_rule="constant"``.
    lambda_rule : {"sgcv", "constant"}
        How the increment ``lam`` is chosen.
    lower, upper : float
        ``Lambda >= lower`` always; ``upper`` is the largest positive sGCV trial increment.
    reduction : {"mean", "sum"}
        ``"mean"`` scales each batch by ``1 / sqrt(N)`` (N samples of that batch).
    n_candidates : int
        sGCV trial points per side of zero.
    refine : bool
        Refine the best sGCV trial point by a bounded search in ``log|lam|``.
    """

    memory_depth: int = 5
    initial_lambda: float = 1e-10
    lambda_rule: Literal["sgcv", "constant"] = "sgcv"
    lower: float = 1e-7
    upper: float = 1e3
    reduction: Literal["mean", "sum"] = "mean"
    n_candidates: int = 30
    refine: bool = True

    def __post_init__(self) -> None:
        _check_int("memory_depth", self.memory_depth, 0)
        _check_int("n_candidates", self.n_candidates, 1)
        for name in ("initial_lambda", "lower", "upper"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a real number, found {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, found {value}")
        if self.initial_lambda < 0:
            raise ValueError(f"initial_lambda must be >= 0, found {self.initial_lambda}")
        if self.lower <= 0:
            raise ValueError(
                f"lower must be > 0 (it keeps M + Lambda I positive definite), found {self.lower}"
            )
        if self.upper <= self.lower:
            raise ValueError(
                f"upper must be greater than lower, found lower={self.lower}, upper={self.upper}"
            )
        if self.lambda_rule not in ("sgcv", "constant"):
            raise ValueError(
                f"lambda_rule must be 'sgcv' or 'constant', found {self.lambda_rule!r}"
            )
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', found {self.reduction!r}")
        if not isinstance(self.refine, bool):
            raise TypeError(f"refine must be a bool, found {type(self.refine).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (for ``state_dict`` and reports)."""
        return asdict(self)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, found {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, found {value}")


class SlimTikState(NamedTuple):
    """Immutable solver state between steps.

    Attributes
    ----------
    grams : tuple of Tensor
        Scaled Grams ``(p, p)`` of the last ``memory_depth`` batches, oldest first (float64).
    rows : tuple of int
        Rows of those batches.
    sum_lambda : float
        Cumulative regularization ``Lambda``.
    step : int
        Steps taken.
    """

    grams: tuple[Tensor, ...]
    rows: tuple[int, ...]
    sum_lambda: float
    step: int


class SlimTikInfo(NamedTuple):
    """What one step did.

    Attributes
    ----------
    lam : float
        The increment added to ``Lambda``.
    sum_lambda : float
        ``Lambda`` after the step.
    gcv : float
        sGCV at ``lam`` (``inf`` where undefined).
    rel_residual : float
        ``||Zs W_new^T - Cs||_F / ||Cs||_F`` on this batch.
    status : SlimTikStatus
        Whether the choice hit a bound or the degenerate case, with what to do.
    """

    lam: float
    sum_lambda: float
    gcv: float
    rel_residual: float
    status: SlimTikStatus


def initial_state(config: SlimTikConfig) -> SlimTikState:
    """State before the first step: empty memory, ``Lambda = initial_lambda``."""
    return SlimTikState((), (), float(config.initial_lambda), 0)


def slimtik_update(
    W: Tensor,
    stats: GramStats,
    state: SlimTikState,
    config: SlimTikConfig,
    lam: float | None = None,
) -> tuple[Tensor, SlimTikState, SlimTikInfo]:
    r"""One slimTik step from the batch statistics (pure; no validation, no dtype casts).

    .. math::

        W_{\text{new}}^\top = W^\top - (M + (\Lambda + \lambda) I)^{-1}(H + \lambda W^\top)

    Parameters
    ----------
    W : Tensor
        Current weights, shape ``(t, p)``, in the working dtype (float64).
    stats : GramStats
        Unscaled statistics of the batch, same dtype and device as ``W``.
    state : SlimTikState
        Memory, ``Lambda`` and step count.
    config : SlimTikConfig
        Statistical settings.
    lam : float, optional
        A prescribed increment (a user schedule); overrides ``lambda_rule``. It is clipped so
        that ``Lambda + lam >= lower``.

    Returns
    -------
    W_new : Tensor
        Shape ``(t, p)``.
    state_new : SlimTikState
    info : SlimTikInfo

    References
    ----------
    Newman, Chung, Chung, Ruthotto, SIAM J. Sci. Comput. 44(4), 2022, Algorithm 1.
    """
    p = W.shape[1]
    scale = 1.0 / stats.n_samples if config.reduction == "mean" else 1.0
    G = stats.ztz * scale  # (p, p)
    ZtC = stats.ztc * scale  # (p, t)
    ctc = stats.ctc * scale
    WT = W.T  # (p, t)
    H = G @ WT - ZtC  # (p, t)
    r2 = ((WT * (H - ZtC)).sum() + ctc).clamp_min(0.0)

    M = G
    for old in state.grams:
        M = M + old
    M = 0.5 * (M + M.T)
    structure = stats.structure
    terms: SGCVTerms | ArrowTerms
    if structure is not None and _use_structure(structure, M, W.shape[0], config.n_candidates):
        terms, finish = _structured_step(G, M, H, WT, r2, stats.n_rows, structure)
    else:
        terms, finish = _dense_step(G, M, H, WT, r2, stats.n_rows, not state.grams)

    Lambda = state.sum_lambda
    floor = config.lower - Lambda  # smallest admissible increment
    status = SlimTikStatus.OK
    if lam is not None or config.lambda_rule == "constant":
        prescribed = lam is not None
        asked = float(lam) if lam is not None else config.initial_lambda
        lam = max(asked, floor)
        if asked < floor:
            status = SlimTikStatus.CLIPPED
        elif not prescribed:
            status = SlimTikStatus.CONSTANT
    elif stats.n_rows + sum(state.rows) <= p:
        lam = max(0.0, floor)
        status = SlimTikStatus.DEGENERATE
    else:
        lam, _, finite = select_lambda_sgcv(
            terms, Lambda, config.lower, config.upper, config.n_candidates, config.refine
        )
        lam = max(lam, floor)
        if not finite:
            lam = max(0.0, floor)
            status = SlimTikStatus.GCV_UNDEFINED
        elif lam >= config.upper * (1.0 - 1e-12):
            status = SlimTikStatus.LAMBDA_AT_UPPER
        elif Lambda + lam <= config.lower * (1.0 + 1e-9):
            status = SlimTikStatus.LAMBDA_AT_LOWER
    # Land exactly on the bound when clipped (Lambda + (lower - Lambda) can round below lower).
    new_lambda = max(Lambda + lam, config.lower)
    lam = new_lambda - Lambda

    lam_t = torch.tensor([lam], dtype=W.dtype, device=W.device)
    W_new, gcv, residual = finish(lam_t, Lambda, new_lambda)

    rel = math.sqrt(float(residual[0]) / float(ctc)) if float(ctc) > 0 else math.sqrt(
        float(residual[0])
    )
    depth = config.memory_depth
    grams = (state.grams + (G,))[-depth:] if depth > 0 else ()
    rows = (state.rows + (stats.n_rows,))[-depth:] if depth > 0 else ()
    state_new = SlimTikState(grams, rows, new_lambda, state.step + 1)
    info = SlimTikInfo(lam, new_lambda, float(gcv[0]), rel, status)
    return W_new, state_new, info


# Finishes a step: (lam as a 1-element tensor, Lambda before, Lambda after) -> (W_new, sGCV at
# lam, squared residual after the update), both of shape (1,).
_Finish = Callable[[Tensor, float, float], tuple[Tensor, Tensor, Tensor]]

# Trial points of one sGCV selection: 2 n_candidates + 1 on the grid, plus the refinement's.
_REFINE_POINTS = N_REFINE * REFINE_ROUNDS


def _use_structure(structure: GramStructure, M: Tensor, t: int, n_candidates: int) -> bool:
    """Take the block path when the structure holds for ``M`` and is cheaper than ``eigh``.

    Without a bias every candidate costs ``O(p^2)`` either way and the blocks always pay; with
    one, a candidate costs ``O(p^2 t)`` against the dense path's ``O(p^3)`` once, so the
    block path is taken while ``n_trials * t <= p``.
    """
    if len(structure.groups) < 2 or structure.p != M.shape[0]:
        return False
    if structure.bias and (2 * n_candidates + 1 + _REFINE_POINTS) * t > M.shape[0]:
        return False
    return fits_structure(M, structure)


def _dense_step(
    G: Tensor, M: Tensor, H: Tensor, WT: Tensor, r2: Tensor, rows: int, memory_empty: bool
) -> tuple[SGCVTerms, _Finish]:
    """One ``eigh`` of ``M = V diag(s) V^T``; sGCV in that basis (:mod:`slimtrain.linalg.sgcv`)."""
    s, V = torch.linalg.eigh(M)
    # Without memory M = G, so V^T G V is diag(s): skip two O(p^3) products.
    Gt = torch.diag(s) if memory_empty else V.T @ (G @ V)
    s = s.clamp_min(0.0)
    Ht = V.T @ H  # (p, t)
    Wt = V.T @ WT  # (p, t)
    terms = sgcv_terms(s, Gt, Ht, Wt, r2, rows)

    def finish(lam: Tensor, sum_lambda: float, new_lambda: float) -> tuple[Tensor, Tensor, Tensor]:
        gcv, residual = sgcv_values(terms, lam, sum_lambda)
        U = (1.0 / (s + new_lambda)).unsqueeze(1) * (Ht + lam * Wt)  # (p, t)
        return (WT - V @ U).T.contiguous(), gcv, residual

    return terms, finish


def _structured_step(
    G: Tensor, M: Tensor, H: Tensor, WT: Tensor, r2: Tensor, rows: int,
    structure: GramStructure,
) -> tuple[SGCVTerms | ArrowTerms, _Finish]:
    """Block ``eigh`` of a block-arrow ``M`` (:mod:`slimtrain.linalg.structured`)."""
    basis = block_basis(M, structure)
    Gt = basis.rotate_gram(G, structure.bias)
    Ht = basis.rotate(H)
    Wt = basis.rotate(WT)
    if not structure.bias:  # the rotated M is diag(a): the dense formulas apply as they are
        dense = sgcv_terms(basis.a, Gt, Ht, Wt, r2, rows)

        def finish_diag(
            lam: Tensor, sum_lambda: float, new_lambda: float
        ) -> tuple[Tensor, Tensor, Tensor]:
            gcv, residual = sgcv_values(dense, lam, sum_lambda)
            U = (1.0 / (basis.a + new_lambda)).unsqueeze(1) * (Ht + lam * Wt)
            return (WT - basis.unrotate(U)).T.contiguous(), gcv, residual

        return dense, finish_diag
    column = basis.rotate(M[:, -1:])  # (p, 1): the rotated bias column, its corner last
    terms = ArrowTerms(basis.a, column[:-1, 0], float(column[-1, 0]), Gt, Ht, Wt, r2, rows,
                       int(H.shape[1]))

    def finish_arrow(
        lam: Tensor, sum_lambda: float, new_lambda: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        gcv, residual, U = arrow_values(terms, lam, sum_lambda)
        return (WT - basis.unrotate(U[0])).T.contiguous(), gcv, residual

    return terms, finish_arrow
