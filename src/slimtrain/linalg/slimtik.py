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

from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from slimtrain._validation import check_int, check_real
from slimtrain.linalg.eigh import CPU_EIGH_MAX_SIZE, symmetric_eigh
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
    arrow_increment,
    arrow_terms,
    arrow_values,
    block_basis,
    fits_structure,
)

__all__ = [
    "LambdaUnits",
    "SlimTikConfig",
    "SlimTikRecord",
    "SlimTikState",
    "SlimTikInfo",
    "SlimTikStatus",
    "data_scale",
    "info_from_values",
    "initial_state",
    "slimtik_update",
]


class SlimTikStatus(Enum):
    """Outcome of a slimTik step; each value tells the user what it means and what to do.

    Only :attr:`OK` and :attr:`CONSTANT` need no action (:attr:`is_ok`). ``lower`` and ``upper``
    below are in the units of ``lambda_units`` (by default multiples of the data scale, the mean
    eigenvalue of the memory Gram).
    """

    OK = "ok"
    CONSTANT = "ok: lambda_rule='constant' added initial_lambda to Lambda"
    LAMBDA_AT_UPPER = (
        "sGCV chose the largest trial increment `upper`: the batch asks for more regularization "
        "than the grid allows, i.e. the targets look like noise to a linear head on these "
        "features. Check that targets and features belong together; raise `upper` if you "
        "want W shrunk further."
    )
    LAMBDA_AT_LOWER = (
        "Lambda is held at its floor `lower` and the floor limits the fit: sGCV and the batch "
        "residual would both be clearly lower below it (directions of the memory Gram with "
        "eigenvalues under the floor carry signal). Standardize the feature columns, or lower "
        "`lower`."
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

    @property
    def code(self) -> int:
        """Position in the enum: how a step carries its status as a tensor on the device."""
        return _STATUS_LIST.index(self)

    @classmethod
    def from_code(cls, code: int) -> SlimTikStatus:
        """Inverse of :attr:`code`."""
        return _STATUS_LIST[code]


_STATUS_LIST = list(SlimTikStatus)
# Status codes as Python ints, for torch.where on the device.
_OK, _CONSTANT, _AT_UPPER, _AT_LOWER, _DEGENERATE, _CLIPPED, _GCV_UNDEFINED = (
    s.code for s in (
        SlimTikStatus.OK, SlimTikStatus.CONSTANT, SlimTikStatus.LAMBDA_AT_UPPER,
        SlimTikStatus.LAMBDA_AT_LOWER, SlimTikStatus.DEGENERATE, SlimTikStatus.CLIPPED,
        SlimTikStatus.GCV_UNDEFINED,
    )
)

#: The floor ``lower`` limits the fit (status ``LAMBDA_AT_LOWER``) when sGCV at the probe
#: ``Lambda = FLOOR_PROBE * lower`` is below ``(1 - FLOOR_GCV_GAIN)`` times its value at the
#: floor and the batch's squared residual there is lower by more than ``FLOOR_FIT_GAIN``
#: times ``||Cs||_F^2``; otherwise a Lambda at the floor is healthy and the status is OK.
FLOOR_GCV_GAIN = 1e-2
FLOOR_FIT_GAIN = 1e-6

LambdaUnits = Literal["relative", "absolute"]


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
    lambda_units : {"relative", "absolute"}
        ``"relative"`` (default): ``initial_lambda``, ``lower``, ``upper``, the trial grid and a
        prescribed ``lam`` are multiples of the data scale of the step, the mean eigenvalue
        ``trace(M) / p`` of the memory Gram, so that ``Z -> a Z``, ``C -> b C`` gives
        ``W -> (b / a) W`` with the same statuses. ``"absolute"``: plain numbers in the units
        of ``Z^T Z``. ``Lambda`` itself (state, ``info.sum_lambda``) is always absolute after
        the first step.
    """

    memory_depth: int = 5
    initial_lambda: float = 1e-10
    lambda_rule: Literal["sgcv", "constant"] = "sgcv"
    lower: float = 1e-7
    upper: float = 1e3
    reduction: Literal["mean", "sum"] = "mean"
    n_candidates: int = 30
    refine: bool = True
    lambda_units: LambdaUnits = "relative"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: store the normalised values
        set_(self, "memory_depth", check_int("memory_depth", self.memory_depth, minimum=0))
        set_(self, "n_candidates", check_int("n_candidates", self.n_candidates, minimum=1))
        set_(self, "initial_lambda",
             check_real("initial_lambda", self.initial_lambda, minimum=0.0))
        lower = check_real("lower", self.lower)
        if lower <= 0:
            raise ValueError(
                f"lower must be > 0 (it keeps M + Lambda I positive definite), found {lower}"
            )
        set_(self, "lower", lower)
        upper = check_real("upper", self.upper)
        if upper <= lower:
            raise ValueError(
                f"upper must be greater than lower, found lower={lower}, upper={upper}"
            )
        set_(self, "upper", upper)
        if self.lambda_rule not in ("sgcv", "constant"):
            raise ValueError(
                f"lambda_rule must be 'sgcv' or 'constant', found {self.lambda_rule!r}"
            )
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', found {self.reduction!r}")
        if not isinstance(self.refine, bool):
            raise TypeError(f"refine must be a bool, found {type(self.refine).__name__}")
        if self.lambda_units not in ("relative", "absolute"):
            raise ValueError(
                f"lambda_units must be 'relative' or 'absolute', found {self.lambda_units!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (for ``state_dict`` and reports)."""
        return asdict(self)


class SlimTikState(NamedTuple):
    """Immutable solver state between steps.

    Attributes
    ----------
    grams : tuple of Tensor
        Scaled Grams ``(p, p)`` of the last ``memory_depth`` batches, oldest first (float64).
    rows : tuple of int
        Rows of those batches.
    sum_lambda : Tensor
        Cumulative regularization ``Lambda``, a 0-d float64 tensor (kept on the device so that
        a step never reads it back to the host). Absolute after the first step; before it,
        ``initial_lambda`` in the config's ``lambda_units``.
    step : int
        Steps taken.
    """

    grams: tuple[Tensor, ...]
    rows: tuple[int, ...]
    sum_lambda: Tensor
    step: int


class SlimTikInfo(NamedTuple):
    """What one step did (Python numbers, for reports; see :class:`SlimTikRecord`).

    Attributes
    ----------
    lam : float
        The increment added to ``Lambda`` (absolute).
    sum_lambda : float
        ``Lambda`` after the step (absolute; ``sum_lambda / scale`` is the relative value).
    gcv : float
        sGCV at ``lam`` (``inf`` where undefined).
    rel_residual : float
        ``||Zs W_new^T - Cs||_F / ||Cs||_F`` on this batch.
    status : SlimTikStatus
        Whether the choice hit a bound or the degenerate case, with what to do.
    scale : float
        The data scale of the step, ``trace(M) / p`` (1 when ``M = 0``), whatever
        ``lambda_units``.
    """

    lam: float
    sum_lambda: float
    gcv: float
    rel_residual: float
    status: SlimTikStatus
    scale: float = 1.0


class SlimTikRecord(NamedTuple):
    """What one step did, as 0-d tensors on the step's device (no host synchronisation).

    Fields as in :class:`SlimTikInfo`; ``status`` is the int64 :attr:`SlimTikStatus.code`.
    :meth:`to_info` reads them back in one transfer.
    """

    lam: Tensor
    sum_lambda: Tensor
    gcv: Tensor
    rel_residual: Tensor
    status: Tensor
    scale: Tensor

    def stacked(self) -> Tensor:
        """The six fields in one float64 tensor of shape ``(6,)`` (the status code exactly)."""
        return torch.stack([v.to(torch.float64) for v in self])

    def to_info(self) -> SlimTikInfo:
        """:class:`SlimTikInfo` of Python numbers: one device-to-host transfer."""
        return info_from_values(self.stacked().tolist())


def info_from_values(values: list[float]) -> SlimTikInfo:
    """:class:`SlimTikInfo` from the list :meth:`SlimTikRecord.stacked` gives."""
    lam, sum_lambda, gcv, rel, code, scale = values[:6]
    return SlimTikInfo(lam, sum_lambda, gcv, rel, SlimTikStatus.from_code(int(code)), scale)


def initial_state(config: SlimTikConfig) -> SlimTikState:
    """State before the first step: empty memory, ``Lambda = initial_lambda``."""
    return SlimTikState((), (), torch.tensor(config.initial_lambda, dtype=torch.float64), 0)


def data_scale(M: Tensor) -> Tensor:
    """The data scale of a step, ``trace(M) / p`` (the mean eigenvalue of the memory Gram).

    0-d tensor; 1 where ``M = 0`` (no scale to refer to) or the trace overflows.
    Under ``Z -> a Z`` it becomes ``a^2`` times itself, like every eigenvalue of ``M``.
    """
    mean = torch.diagonal(M).sum() / M.shape[0]
    return torch.where((mean > 0) & (mean < torch.inf), mean, 1.0)


def slimtik_update(
    W: Tensor,
    stats: GramStats,
    state: SlimTikState,
    config: SlimTikConfig,
    lam: float | None = None,
    *,
    cpu_eigh_max_size: int = CPU_EIGH_MAX_SIZE,
) -> tuple[Tensor, SlimTikState, SlimTikRecord]:
    r"""One slimTik step from the batch statistics (pure; no validation, no dtype casts).

    .. math::

        W_{\text{new}}^\top = W^\top - (M + (\Lambda + \lambda) I)^{-1}(H + \lambda W^\top)

    With ``lambda_units="relative"`` the bounds, the trial grid, ``initial_lambda`` (which
    anchors ``Lambda_0 = initial_lambda * scale_0`` at the first step) and a prescribed ``lam``
    are multiplied by the data scale ``trace(M) / p`` of this step (:func:`data_scale`).
    Everything stays on the device of ``W``: no value is read back to the host.

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
        A prescribed increment (a user schedule) in ``lambda_units``; overrides
        ``lambda_rule``. It is clipped so that ``Lambda + lam >= lower``.
    cpu_eigh_max_size : int
        Engineering option: on a non-CPU device, eigendecompose matrices (or blocks) of at most
        this size on the CPU (:func:`slimtrain.linalg.eigh.symmetric_eigh`; 0: never).

    Returns
    -------
    W_new : Tensor
        Shape ``(t, p)``.
    state_new : SlimTikState
    record : SlimTikRecord

    References
    ----------
    Newman, Chung, Chung, Ruthotto, SIAM J. Sci. Comput. 44(4), 2022, Algorithm 1.
    Chung, Chung, Slagel, Tenorio, Inverse Problems 36(5), 2020.
    """
    p = W.shape[1]
    dtype, device = W.dtype, W.device
    inv_n = 1.0 / stats.n_samples if config.reduction == "mean" else 1.0
    G = stats.ztz * inv_n  # (p, p)
    ZtC = stats.ztc * inv_n  # (p, t)
    ctc = stats.ctc * inv_n
    WT = W.T  # (p, t)
    H = G @ WT - ZtC  # (p, t)
    r2 = ((WT * (H - ZtC)).sum() + ctc).clamp_min(0.0)

    # eigh reads one triangle, so M is not symmetrized; summed in place (one allocation).
    M = G.clone() if state.grams else G
    for old in state.grams:
        M.add_(old)
    structure = stats.structure
    terms: SGCVTerms | ArrowTerms
    if structure is not None and _use_structure(structure, M, W.shape[0], config.n_candidates):
        terms, finish = _structured_step(
            G, M, H, WT, r2, stats.n_rows, structure, cpu_eigh_max_size
        )
    else:
        terms, finish = _dense_step(
            G, M, H, WT, r2, stats.n_rows, not state.grams, cpu_eigh_max_size
        )

    scale = data_scale(M)
    unit = scale if config.lambda_units == "relative" else torch.ones_like(scale)
    Lambda = state.sum_lambda.to(device=device, dtype=dtype)
    if state.step == 0:  # Lambda_0 = initial_lambda in lambda_units
        Lambda = Lambda * unit
    lower = config.lower * unit
    floor = lower - Lambda  # smallest admissible increment

    choice = None
    if lam is not None or config.lambda_rule == "constant":
        asked = (float(lam) if lam is not None else config.initial_lambda) * unit
        lam_t = torch.maximum(asked, floor)
        status = torch.where(
            asked < floor, _CLIPPED, _OK if lam is not None else _CONSTANT
        )
    elif stats.n_rows + sum(state.rows) <= p:
        lam_t = floor.clamp_min(0.0)
        status = torch.full((), _DEGENERATE, device=device)
    else:
        upper = config.upper * unit
        choice = select_lambda_sgcv(
            terms, Lambda, lower, upper, config.n_candidates, config.refine, unit=unit
        )
        lam_t = choice.lam  # >= floor; max(0, floor) when sGCV is undefined
        at_floor = Lambda + lam_t <= lower * (1.0 + 1e-9)
        floor_binds = (choice.probe_gcv < (1.0 - FLOOR_GCV_GAIN) * choice.gcv) & (
            choice.residual - choice.probe_residual > FLOOR_FIT_GAIN * ctc
        )
        status = torch.where(
            ~choice.finite, _GCV_UNDEFINED,
            torch.where(
                lam_t >= upper * (1.0 - 1e-12), _AT_UPPER,
                torch.where(at_floor & floor_binds, _AT_LOWER, _OK),
            ),
        )
    # Land exactly on the bound when clipped (Lambda + (lower - Lambda) can round below lower).
    new_lambda = torch.maximum(Lambda + lam_t, lower)
    lam_t = new_lambda - Lambda

    W_new, values = finish(lam_t.reshape(1), Lambda, new_lambda, choice is None)
    if choice is not None:  # sGCV chose lam_t: its value and residual there come with it
        values = (choice.gcv, choice.residual)
    assert values is not None
    gcv, residual = values
    rel = torch.where(ctc > 0, residual / ctc.clamp_min(1e-300), residual).sqrt()
    depth = config.memory_depth
    grams = (state.grams + (G,))[-depth:] if depth > 0 else ()
    rows = (state.rows + (stats.n_rows,))[-depth:] if depth > 0 else ()
    state_new = SlimTikState(grams, rows, new_lambda, state.step + 1)
    record = SlimTikRecord(lam_t, new_lambda, gcv, rel, status, scale)
    return W_new, state_new, record


# Finishes a step: (lam as a 1-element tensor, Lambda before, Lambda after, both 0-d, whether
# to evaluate sGCV) -> (W_new, (sGCV at lam, squared residual after the update) as 0-d tensors,
# or None when not asked for).
_Values = tuple[Tensor, Tensor] | None
_Finish = Callable[[Tensor, Tensor, Tensor, bool], tuple[Tensor, _Values]]

# Trial points of one sGCV selection: 2 n_candidates + 1 on the grid, plus the refinement's.
_REFINE_POINTS = N_REFINE * REFINE_ROUNDS


def _use_structure(structure: GramStructure, M: Tensor, t: int, n_candidates: int) -> bool:
    """Take the block path when the structure holds for ``M`` and is cheaper than ``eigh``.

    Without a bias every candidate costs ``O(p^2)`` either way and the blocks always pay; with
    one, a candidate costs a block product, ``O(p^2 t / n_groups)``, against the dense path's
    ``O(p^3)`` once, so the block path is taken while ``n_trials * t <= n_groups * p``.
    """
    groups = len(structure.groups)
    if groups < 2 or structure.p != M.shape[0]:
        return False
    if structure.bias and (2 * n_candidates + 1 + _REFINE_POINTS) * t > groups * M.shape[0]:
        return False
    return fits_structure(M, structure)


def _dense_step(
    G: Tensor, M: Tensor, H: Tensor, WT: Tensor, r2: Tensor, rows: int, memory_empty: bool,
    cpu_eigh_max_size: int = CPU_EIGH_MAX_SIZE,
) -> tuple[SGCVTerms, _Finish]:
    """One ``eigh`` of ``M = V diag(s) V^T``; sGCV in that basis (:mod:`slimtrain.linalg.sgcv`)."""
    s, V = symmetric_eigh(M, cpu_eigh_max_size)
    # Without memory M = G, so V^T G V is diag(s): skip two O(p^3) products.
    Gt = torch.diag(s) if memory_empty else V.T @ (G @ V)
    s = s.clamp_min(0.0)
    HW = V.T @ torch.cat((H, WT), 1)  # (p, 2 t): V^T H | V^T W^T
    t = H.shape[1]
    Ht, Wt = HW[:, :t], HW[:, t:]
    terms = sgcv_terms(s, Gt, Ht, Wt, r2, rows)
    return terms, _diagonal_finish(terms, Ht, Wt, WT, lambda U: V @ U)


def _diagonal_finish(
    terms: SGCVTerms, Ht: Tensor, Wt: Tensor, WT: Tensor, back: Callable[[Tensor], Tensor]
) -> _Finish:
    """The finish of a step whose rotated memory Gram is ``diag(terms.s)``:
    ``W_new^T = W^T - back(diag(1 / (s + Lambda_new)) (Ht + lam Wt))``, ``back`` the rotation
    from the eigenbasis to the columns of ``W``."""

    def finish(
        lam: Tensor, sum_lambda: Tensor, new_lambda: Tensor, evaluate: bool
    ) -> tuple[Tensor, _Values]:
        values = None
        if evaluate:
            gcv, residual = sgcv_values(terms, lam, sum_lambda)
            values = (gcv[0], residual[0])
        U = (terms.s + new_lambda).reciprocal_().unsqueeze(1) * torch.addcmul(Ht, lam, Wt)
        return (WT - back(U)).T.contiguous(), values

    return finish


def _structured_step(
    G: Tensor, M: Tensor, H: Tensor, WT: Tensor, r2: Tensor, rows: int,
    structure: GramStructure, cpu_eigh_max_size: int = CPU_EIGH_MAX_SIZE,
) -> tuple[SGCVTerms | ArrowTerms, _Finish]:
    """Block ``eigh`` of a block-arrow ``M`` (:mod:`slimtrain.linalg.structured`)."""
    basis = block_basis(M, structure, cpu_eigh_max_size)
    t = H.shape[1]
    HW = basis.rotate(torch.cat((H, WT), 1))  # (p, 2 t)
    Ht, Wt = HW[:, :t], HW[:, t:]
    if not structure.bias:  # the rotated M is diag(a): the dense formulas apply as they are
        dense = sgcv_terms(basis.a, basis.rotate_gram(G, False), Ht, Wt, r2, rows)
        return dense, _diagonal_finish(dense, Ht, Wt, WT, basis.unrotate)
    # The rotated bias columns of M and G, their corners last.
    columns = basis.rotate(torch.cat((M[:, -1:], G[:, -1:]), 1))
    terms = arrow_terms(basis.a, columns[:-1, 0], columns[-1, 0], basis.rotate_blocks(G),
                        columns[:-1, 1], columns[-1, 1], Ht, Wt, r2, rows)

    def finish_arrow(
        lam: Tensor, sum_lambda: Tensor, new_lambda: Tensor, evaluate: bool
    ) -> tuple[Tensor, _Values]:
        if evaluate:
            gcv, residual, U = arrow_values(terms, lam, sum_lambda)
            values: _Values = (gcv[0], residual[0])
        else:
            U, values = arrow_increment(terms, lam, sum_lambda), None
        return (WT - basis.unrotate(U[:, 0])).T.contiguous(), values

    return terms, finish_arrow
