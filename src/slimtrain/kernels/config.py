"""What an EigenPro solve reports and what it is told: :class:`EigenProStatus` (fix-it
sentences), :class:`EigenProConfig` (statistical choices) and :class:`RuntimeOptions`
(engineering options), each validated on creation."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from slimtrain._validation import check_int, check_real
from slimtrain.kernels.nystrom import Eigensolver
from slimtrain.kernels.preconditioner import (
    DEFAULT_SAFETY,
    DEFAULT_SOFTENING,
    MAX_AUTO_COMPONENTS,
)

__all__ = ["MAX_HALVINGS", "EigenProConfig", "EigenProStatus", "IntOrAuto", "RuntimeOptions",
           "worst_status"]

MAX_HALVINGS = 10
"""Step-size halvings after which a still diverging run gives up (``DIVERGED``)."""

IntOrAuto = int | Literal["auto"]


# --------------------------------------------------------------------------------------------
# Status and options
# --------------------------------------------------------------------------------------------


class EigenProStatus(Enum):
    """What an EigenPro solve did; each value says what it means and what to do.

    The result carries the most serious status of the run (in the order ``DIVERGED``,
    ``STEP_HALVED``, ``COMPONENTS_LOWERED``, ``EARLY_STOPPED``, ``OK``); every
    :class:`~slimtrain.kernels.eigenpro.EpochRecord` carries its epoch's.

    Examples
    --------
    >>> EigenProStatus.DIVERGED.value.startswith("the iteration kept diverging")
    True
    >>> worst_status(EigenProStatus.OK, EigenProStatus.STEP_HALVED).name
    'STEP_HALVED'
    """

    OK = "ok: every epoch ran without incident."
    EARLY_STOPPED = (
        "ok: the validation criterion did not improve by tol for n_iter_no_change epochs, so "
        "the run stopped and returned the best epoch's weights (best_epoch). Raise "
        "n_iter_no_change or lower tol to train longer."
    )
    COMPONENTS_LOWERED = (
        "n_components was lowered to what the working precision resolves: the eigenvalues it "
        "would flatten lie below the rounding level of the kernel blocks. Use "
        "dtype='float64', or fewer n_components (or 'auto')."
    )
    STEP_HALVED = (
        "the iteration diverged; it was restarted from the last good iterate with half the "
        "step size and then finished (step_size in the history). If this recurs, check that "
        "the kernel is positive semi-definite with a bounded diagonal, or set a smaller "
        "batch_size."
    )
    DIVERGED = (
        "the iteration kept diverging after 10 step-size halvings and was stopped; the last "
        "iterate before the divergence is returned (best_epoch). Check that the kernel is "
        "positive semi-definite with a bounded diagonal (a callable kernel), or set a "
        "smaller batch_size."
    )


_SEVERITY = {
    EigenProStatus.OK: 0,
    EigenProStatus.EARLY_STOPPED: 1,
    EigenProStatus.COMPONENTS_LOWERED: 2,
    EigenProStatus.STEP_HALVED: 3,
    EigenProStatus.DIVERGED: 4,
}


def worst_status(*statuses: EigenProStatus) -> EigenProStatus:
    """The most serious of ``statuses`` (the order of :class:`EigenProStatus`'s docstring)."""
    return max(statuses, key=_SEVERITY.__getitem__)


def _check_int_or_auto(name: str, value: object, minimum: int) -> IntOrAuto:
    if value == "auto" and isinstance(value, str):
        return "auto"
    if isinstance(value, str):
        raise ValueError(f"{name} must be an integer >= {minimum} or 'auto', found {value!r}")
    return check_int(name, value, minimum=minimum)


@dataclass(frozen=True)
class EigenProConfig:
    """Statistical choices of an EigenPro solve (validated on creation).

    Parameters
    ----------
    n_epochs : int, default=10
        Passes over the training data, ``>= 1``.
    subsample_size : int or "auto", default="auto"
        ``s``, points of the Nystrom subsample: ``min(n, 2000)`` for ``n < 100000``, else
        12000 (capped by the memory budget, see
        :func:`~slimtrain.kernels.memory.auto_subsample_size`).
    n_components : int or "auto", default="auto"
        ``q``, flattened eigendirections; "auto" is the smallest ``q`` whose critical batch
        size reaches the largest batch (EigenPro 2); 0 is plain SGD.
    batch_size : int or "auto", default="auto"
        ``m``; "auto" is ``min(floor(m*) + 1, m_max)``.
    ridge : float, default=0.0
        ``r >= 0``: converge to ``(K + rI) alpha = y`` instead of the interpolant.
    softening : float, default=0.95
        Exponent ``a`` in ``[0, 1]`` of the soft flattening.
    safety : float, default=0.99
        Factor in ``(0, 1]`` on the step size of the rule.
    max_components : int, default=160
        Cap on the automatic ``q``.
    early_stopping : bool, default=False
        Stop when the validation criterion has not improved by ``tol`` for
        ``n_iter_no_change`` epochs; needs a validation set.
    n_iter_no_change : int, default=3
        Epochs without improvement before stopping, ``>= 1``.
    tol : float, default=0.0
        Improvement that counts, ``>= 0``.

    Examples
    --------
    >>> EigenProConfig(n_epochs=5, ridge=1e-3).n_components
    'auto'
    >>> EigenProConfig(n_epochs=0)
    Traceback (most recent call last):
    ...
    ValueError: n_epochs must be >= 1, found 0
    """

    n_epochs: int = 10
    subsample_size: IntOrAuto = "auto"
    n_components: IntOrAuto = "auto"
    batch_size: IntOrAuto = "auto"
    ridge: float = 0.0
    softening: float = DEFAULT_SOFTENING
    safety: float = DEFAULT_SAFETY
    max_components: int = MAX_AUTO_COMPONENTS
    early_stopping: bool = False
    n_iter_no_change: int = 3
    tol: float = 0.0

    def __post_init__(self) -> None:
        check_int("n_epochs", self.n_epochs, minimum=1)
        _check_int_or_auto("subsample_size", self.subsample_size, 1)
        _check_int_or_auto("n_components", self.n_components, 0)
        _check_int_or_auto("batch_size", self.batch_size, 1)
        check_real("ridge", self.ridge, minimum=0.0)
        check_real("softening", self.softening, minimum=0.0, maximum=1.0)
        check_real("safety", self.safety, minimum=0.0, maximum=1.0, strict_minimum=True)
        check_int("max_components", self.max_components, minimum=0)
        if not isinstance(self.early_stopping, bool):
            raise TypeError(
                f"early_stopping must be a bool, found {self.early_stopping!r} "
                f"({type(self.early_stopping).__name__})"
            )
        check_int("n_iter_no_change", self.n_iter_no_change, minimum=1)
        check_real("tol", self.tol, minimum=0.0)


@dataclass(frozen=True)
class RuntimeOptions:
    """Engineering options of an EigenPro solve: they change speed and memory, not the result
    (up to rounding and the eigensolver's accuracy). The device is that of the data.

    Parameters
    ----------
    memory_bytes : float
        Memory budget of the solver in bytes (> 0): bounds the batch (``m_max``) and, for
        ``subsample_size="auto"``, the subsample.
    tile_elements : int or None, default=None
        Entries of one kernel tile formed at once; None chooses from the device
        (:func:`~slimtrain.kernels.memory.default_tile_elements`).
    eigensolver : {"auto", "eigh", "randomized"}, default="auto"
        Solver of the Nystrom eigensystem (:func:`~slimtrain.kernels.nystrom.top_eigenpairs`).
    """

    memory_bytes: float
    tile_elements: int | None = None
    eigensolver: Eigensolver = "auto"

    def __post_init__(self) -> None:
        check_real("memory_bytes", self.memory_bytes, minimum=0.0, strict_minimum=True)
        if self.tile_elements is not None:
            check_int("tile_elements", self.tile_elements, minimum=1)
        if self.eigensolver not in ("auto", "eigh", "randomized"):
            raise ValueError(
                f"eigensolver must be 'auto', 'eigh' or 'randomized', found {self.eigensolver!r}"
            )


