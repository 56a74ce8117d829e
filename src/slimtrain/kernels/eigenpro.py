r"""EigenPro 2: preconditioned stochastic gradient descent for kernel regression.

The solve, in three pure parts and one loop (like optimistix's driver):

* :func:`eigenpro_setup`: subsample, Nystrom eigensystem (:mod:`slimtrain.kernels.nystrom`),
  preconditioner and the EigenPro 2 parameter rule (:mod:`slimtrain.kernels.preconditioner`)
  under a memory budget (:mod:`slimtrain.kernels.memory`);
* :func:`eigenpro_epoch`: one pass over the data in batches;
* a termination rule (all epochs run, early stopping, or divergence beyond repair);

:func:`eigenpro_solve` runs them and returns an :class:`EigenProResult` whose ``status``
(:class:`EigenProStatus`) says what happened in words a user can act on. Nothing here prints,
raises for a numerical outcome, or moves data between devices behind the caller's back.
Statistical choices (:class:`EigenProConfig`) are kept apart from engineering ones
(:class:`RuntimeOptions`: memory budget, kernel tiles, eigensolver; the device is that of the
data).

The model is :math:`f(x) = \sum_j \alpha_j k(x, x_j)` over the ``n`` training points; the
iteration converges to the minimum-norm interpolant :math:`K\alpha = y` (or, with
``ridge = r > 0``, to the kernel ridge solution :math:`(K + rI)\alpha = y`), and stopping early
regularises.

Conventions: ``x`` is ``(n_samples, n_features)``, targets and weights are
``(n_samples, n_outputs)``. Inside an epoch the training points are ordered so that the
Nystrom subsample comes first (rows ``0..s-1``); :func:`eigenpro_solve` takes care of that
and returns weights in the caller's order.

References
----------
.. [1] S. Ma and M. Belkin, "Diving into the shallows: a computational perspective on
   large-scale shallow learning", NeurIPS 2017.
.. [2] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
   training", MLSys 2019.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from slimtrain._validation import check_finite, check_int, check_real, check_tensor
from slimtrain.kernels.functions import (
    DEFAULT_TILE_ELEMENTS,
    KernelFunction,
    kernel_diagonal,
    kernel_matmul,
    tile_shape,
)
from slimtrain.kernels.memory import (
    auto_subsample_size,
    available_memory_bytes,
    default_memory_gb,
    default_tile_elements,
    max_batch_size,
)
from slimtrain.kernels.nystrom import (
    Eigensolver,
    NystromEigensystem,
    nystrom_eigensystem,
    resolve_eigensolver,
    top_eigenpairs,
)
from slimtrain.kernels.preconditioner import (
    DEFAULT_SAFETY,
    DEFAULT_SOFTENING,
    MAX_AUTO_COMPONENTS,
    Preconditioner,
    choose_n_components,
    eigenpro_preconditioner,
    eigenpro_step_and_batch,
    numerical_component_limit,
    preconditioned_top_eigenvalue,
)

__all__ = [
    "DEFAULT_SAFETY",
    "DEFAULT_SOFTENING",
    "MAX_AUTO_COMPONENTS",
    "MAX_HALVINGS",
    "EigenProConfig",
    "EigenProParameters",
    "EigenProResult",
    "EigenProSetup",
    "EigenProStatus",
    "EpochRecord",
    "NystromEigensystem",
    "Preconditioner",
    "RuntimeOptions",
    "auto_subsample_size",
    "available_memory_bytes",
    "choose_n_components",
    "default_memory_gb",
    "default_tile_elements",
    "eigenpro_epoch",
    "eigenpro_preconditioner",
    "eigenpro_setup",
    "eigenpro_solve",
    "eigenpro_step_and_batch",
    "max_batch_size",
    "numerical_component_limit",
    "nystrom_eigensystem",
    "preconditioned_top_eigenvalue",
    "top_eigenpairs",
]

logger = logging.getLogger(__name__)

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
    :class:`EpochRecord` carries its epoch's.
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


def _worst(*statuses: EigenProStatus) -> EigenProStatus:
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


# --------------------------------------------------------------------------------------------
# Set-up: the EigenPro 2 rule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EigenProParameters:
    """Values chosen by :func:`eigenpro_setup` (all reported to the user).

    Attributes
    ----------
    subsample_size : int
        ``s``, points of the Nystrom subsample.
    n_components : int
        ``q``, flattened eigendirections.
    batch_size : int
        ``m``.
    step_size : float
        ``eta``.
    beta : float
        ``max_i k(x_i, x_i)`` (plus the ridge).
    top_eigenvalue : float
        ``lambda_1`` of ``k(X_s, X_s)/s`` (plus ``ridge / n``).
    tail_eigenvalue : float
        ``lambda_{q+1}`` (plus ``ridge / n``).
    preconditioned_top_eigenvalue : float
        ``lt1``.
    critical_batch_size : float
        ``m* = beta / lt1``.
    max_batch_size : int
        ``m_max`` from the memory budget.
    eigensolver : str
        ``"eigh"`` or ``"randomized"``.
    regime : str
        ``"sgd"`` (the EigenPro 2 rule) or ``"full-batch"`` (see :func:`eigenpro_setup`).
    setup_time : float
        Seconds for the subsample Gram, its eigensystem and the preconditioner.
    """

    subsample_size: int
    n_components: int
    batch_size: int
    step_size: float
    beta: float
    top_eigenvalue: float
    tail_eigenvalue: float
    preconditioned_top_eigenvalue: float
    critical_batch_size: float
    max_batch_size: int
    eigensolver: str
    regime: str
    setup_time: float

    def as_dict(self) -> dict[str, float | int | str]:
        """Plain dictionary (JSON-serialisable)."""
        return dict(asdict(self))


class EigenProSetup(NamedTuple):
    """Output of :func:`eigenpro_setup`.

    Attributes
    ----------
    subsample_index : Tensor of shape (s,)
        int64 indices of the Nystrom subsample into the training points.
    preconditioner : Preconditioner
    parameters : EigenProParameters
    status : EigenProStatus
        ``OK``, or ``COMPONENTS_LOWERED`` when a given ``n_components`` exceeded what the
        working precision resolves.
    """

    subsample_index: Tensor
    preconditioner: Preconditioner
    parameters: EigenProParameters
    status: EigenProStatus


def _check_points(name: str, x: object) -> Tensor:
    """``x`` if it is a finite floating-point tensor of shape (n_samples, n_features)."""
    x = check_tensor(name, x)
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be (n_samples, n_features), found shape {tuple(x.shape)}"
        )
    check_finite(name, x)
    return x


def _check_like(name: str, t: Tensor, x: Tensor) -> None:
    """``t`` must share the dtype and the device of the training points ``x``."""
    if t.dtype != x.dtype:
        raise TypeError(
            f"{name} has dtype {t.dtype} but x has {x.dtype}; expected one floating-point "
            f"dtype for x, y, x_val and y_val (convert with .to({x.dtype}))"
        )
    if t.device != x.device:
        raise ValueError(
            f"{name} is on {t.device} but x is on {x.device}; expected x, y, x_val and y_val "
            f"on one device (move with .to('{x.device}'))"
        )


def _check_solve_inputs(
    x: object, y: object, x_val: object | None, y_val: object | None
) -> None:
    """Types, shapes, dtypes, devices and finiteness of :func:`eigenpro_solve`'s data."""
    x = check_tensor("x", x)
    y = check_tensor("y", y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x must be (n_samples, n_features) and y (n_samples, n_outputs) with the same "
            f"rows; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    _check_like("y", y, x)
    check_finite("x", x)
    check_finite("y", y)
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val, or neither")
    if x_val is None or y_val is None:
        return
    x_val = check_tensor("x_val", x_val)
    y_val = check_tensor("y_val", y_val)
    d, n_out = x.shape[1], y.shape[1]
    if x_val.ndim != 2 or x_val.shape[1] != d:
        raise ValueError(
            f"x_val must be (n_val, {d}): {d} features like x; found shape {tuple(x_val.shape)}"
        )
    if y_val.ndim != 2 or y_val.shape[1] != n_out:
        raise ValueError(
            f"y_val must be (n_val, {n_out}): {n_out} output(s) like y; found shape "
            f"{tuple(y_val.shape)}"
        )
    if x_val.shape[0] != y_val.shape[0]:
        raise ValueError(
            f"x_val has {x_val.shape[0]} rows but y_val has {y_val.shape[0]}; expected one row "
            "per validation sample in both"
        )
    _check_like("x_val", x_val, x)
    _check_like("y_val", y_val, x)
    check_finite("x_val", x_val)
    check_finite("y_val", y_val)


def eigenpro_setup(
    kernel: KernelFunction,
    x: Tensor,
    config: EigenProConfig,
    options: RuntimeOptions,
    *,
    n_outputs: int,
    generator: torch.Generator,
) -> EigenProSetup:
    r"""Subsample, eigensystem, preconditioner and the EigenPro 2 parameter rule.

    1. Draw ``s`` points ``X_s`` without replacement (seeded by ``generator``).
    2. ``m_max`` from the budget (:func:`~slimtrain.kernels.memory.max_batch_size`), checked
       before any kernel work.
    3. Top ``q_max + 1`` eigenpairs of ``k(X_s, X_s)/s``
       (:func:`~slimtrain.kernels.nystrom.nystrom_eigensystem`), with
       ``q_max = min(max_components, s // 8)`` (``s - 1`` when the subsample is all the
       data), lowered to what the working precision resolves
       (:func:`~slimtrain.kernels.preconditioner.numerical_component_limit`).
    4. ``q`` the smallest with ``m*(q) >= m_max``
       (:func:`~slimtrain.kernels.preconditioner.choose_n_components`), at most ``q_max``.
    5. ``m`` and ``eta`` from
       :func:`~slimtrain.kernels.preconditioner.eigenpro_step_and_batch`.

    .. math::

        \tilde\lambda_1 = \mu_1^{1-a}\mu_{q+1}^a,\quad m^* = \beta/\tilde\lambda_1,\quad
        m = \min(\lfloor m^*\rfloor + 1, m_{\max}),\quad
        \eta = 0.99\,\frac{2m}{\beta + (m-1)\tilde\lambda_1}

    Full-batch regime (reported as ``regime="full-batch"``): when the budget holds a batch of
    all ``n`` points (``m_max = n``) and the chosen ``q`` gives ``m*(q) >= n``, every step is
    an exact gradient step, limited by the top eigenvalue of the preconditioned operator
    rather than by ``beta`` (which bounds the noise of sampled batches): ``m = n`` and
    ``eta = 0.99 / lt1``. ``q`` stays the rule's smallest ``q`` with ``m*(q) >= m_max``, as in
    the sampled regime; it is not pushed to the precision limit, which on small noisy
    problems made a float64 fit jump to the near-interpolant in one epoch while float32
    (whose limit is lower) regularised by early stopping: both now take the same ``q``.

    Parameters
    ----------
    kernel : callable
        ``(x, z) -> (n_x, n_z)``.
    x : Tensor of shape (n_samples, n_features)
        Training points (working dtype and device).
    config : EigenProConfig
        Statistical choices (``subsample_size``, ``n_components``, ``batch_size``, ``ridge``,
        ``softening``, ``safety``, ``max_components`` are used here).
    options : RuntimeOptions
        Memory budget and eigensolver.
    n_outputs : int
        ``l``, columns of the targets.
    generator : torch.Generator
        CPU generator; the only source of randomness.

    Returns
    -------
    EigenProSetup

    Raises
    ------
    TypeError
        ``x`` is not a floating-point tensor.
    ValueError
        ``x`` is not 2-D, is empty or holds NaN/Inf; ``n_components`` does not fit the
        subsample; the budget cannot hold the data; the kernel overflows on the subsample.

    References
    ----------
    .. [1] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
       training", MLSys 2019.

    Examples
    --------
    >>> import torch
    >>> from slimtrain.kernels.functions import make_kernel
    >>> x = torch.rand(300, 2, generator=torch.Generator().manual_seed(0))
    >>> setup = eigenpro_setup(make_kernel("gaussian", 0.5), x, EigenProConfig(),
    ...                        RuntimeOptions(1e8), n_outputs=1,
    ...                        generator=torch.Generator().manual_seed(0))
    >>> setup.parameters.subsample_size, setup.subsample_index.shape, setup.status.name
    (300, torch.Size([300]), 'OK')
    """
    start = time.perf_counter()
    x = _check_points("x", x)
    n, d = x.shape
    if n < 1:
        raise ValueError("EigenPro needs at least one training point; x has 0 rows")
    itemsize = x.element_size()
    c = config
    if c.subsample_size == "auto":
        s = auto_subsample_size(n, options.memory_bytes)
    else:
        s = min(int(c.subsample_size), n)
    if c.n_components == "auto":
        # Nystrom estimates are trusted up to s/8 components unless the subsample is all data.
        q_cap = min(c.max_components, s - 1 if s == n else max(s // 8, 1), s - 1)
        n_pairs = q_cap + 1
    else:
        q_fixed = int(c.n_components)
        if q_fixed > s - 1:
            raise ValueError(
                f"n_components={q_fixed} needs a subsample of at least {q_fixed + 1} points, "
                f"but the subsample has {s} (n_samples={n}); lower n_components or raise "
                "subsample_size"
            )
        n_pairs = q_fixed + 1
    # The budget first: a budget too small for the data is a clear error before any kernel.
    reserved = 8.0 * s * s + itemsize * s * n_pairs
    m_max = max_batch_size(options.memory_bytes, n, d, n_outputs, itemsize,
                           reserved_bytes=reserved)
    index = torch.randperm(n, generator=generator)[:s].to(x.device)
    x_sub = x.index_select(0, index)
    method = resolve_eigensolver(options.eigensolver, s, n_pairs)
    eig = nystrom_eigensystem(kernel, x_sub, n_pairs, method=method, generator=generator)
    beta = float(kernel_diagonal(kernel, x).max()) + c.ridge
    if not math.isfinite(beta) or beta <= 0.0:
        raise ValueError(
            f"the kernel diagonal max_i k(x_i, x_i) must be positive and finite, found {beta}; "
            "a callable kernel must be positive semi-definite with k(x, x) > 0"
        )
    shift = c.ridge / n
    mu = eig.eigenvalues + shift
    q_top = numerical_component_limit(mu, x.dtype, c.softening)
    status = EigenProStatus.OK
    if c.n_components == "auto":
        q = choose_n_components(mu, beta, m_max, softening=c.softening, max_components=q_top)
    else:
        q = min(int(c.n_components), q_top)
        if q < int(c.n_components):
            status = EigenProStatus.COMPONENTS_LOWERED
            logger.info(
                "n_components=%d lowered to %d: lambda_%d = %.3g is below the %s rounding "
                "level of lambda_1 = %.3g", int(c.n_components), q, int(c.n_components) + 1,
                float(mu[int(c.n_components)]), x.dtype, float(mu[0]),
            )
    precond = eigenpro_preconditioner(eig, q, shift=shift, softening=c.softening,
                                      dtype=x.dtype)
    lt1 = precond.top_eigenvalue
    critical = beta / lt1 if lt1 > 0 else math.inf
    full_batch = c.batch_size == "auto" and m_max >= n and critical >= n and lt1 > 0.0
    if full_batch:
        m, eta = n, c.safety / lt1
    else:
        fixed_m = None if c.batch_size == "auto" else int(c.batch_size)
        m, eta = eigenpro_step_and_batch(beta, lt1, m_max, batch_size=fixed_m, safety=c.safety)
        m = min(m, n)
    params = EigenProParameters(
        subsample_size=s,
        n_components=q,
        batch_size=m,
        step_size=eta,
        beta=beta,
        top_eigenvalue=float(mu[0]),
        tail_eigenvalue=float(mu[q]),
        preconditioned_top_eigenvalue=lt1,
        critical_batch_size=critical,
        max_batch_size=m_max,
        eigensolver=method,
        regime="full-batch" if full_batch else "sgd",
        setup_time=time.perf_counter() - start,
    )
    logger.info(
        "EigenPro set-up: s=%d q=%d m=%d eta=%.4g (beta=%.4g, lt1=%.4g, m*=%.4g, m_max=%d, "
        "%s, %s, %.3f s)", s, q, m, eta, beta, lt1, params.critical_batch_size, m_max, method,
        params.regime, params.setup_time,
    )
    return EigenProSetup(index, precond, params, status)


# --------------------------------------------------------------------------------------------
# The epoch step
# --------------------------------------------------------------------------------------------


def _batch_residual(
    kernel: KernelFunction,
    x: Tensor,
    y: Tensor,
    weights: Tensor,
    batch: Tensor,
    n_sub: int,
    ridge: float,
    tile_elements: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``g = k(X_B, X) w + r w_B - y_B`` (m, l), ``h = k(X_s, X_B) g`` (s, l) and the squared
    residual without the ridge, tile by tile (the subsample is rows ``0..s-1`` of ``x``)."""
    n = x.shape[0]
    m = batch.shape[0]
    xb = x.index_select(0, batch)  # (m, d)
    yb = y.index_select(0, batch)  # (m, l)
    g = torch.empty_like(yb)
    h = torch.zeros(n_sub, y.shape[1], dtype=y.dtype, device=y.device)
    sq = torch.zeros((), dtype=torch.float64, device=y.device)
    rows, cols = tile_shape(m, n, tile_elements)
    for r0 in range(0, m, rows):
        xr = xb[r0 : r0 + rows]
        k_sub = kernel(xr, x[:n_sub])  # (r, s)
        gr = k_sub @ weights[:n_sub]  # (r, l)
        for c0 in range(n_sub, n, cols):
            gr.addmm_(kernel(xr, x[c0 : c0 + cols]), weights[c0 : c0 + cols])
        gr.sub_(yb[r0 : r0 + rows])
        sq += gr.double().square().sum()
        if ridge:
            gr.add_(weights.index_select(0, batch[r0 : r0 + rows]), alpha=ridge)
        h.addmm_(k_sub.T, gr)
        g[r0 : r0 + rows] = gr
    return g, h, sq


def eigenpro_epoch(
    kernel: KernelFunction,
    x: Tensor,
    y: Tensor,
    weights: Tensor,
    preconditioner: Preconditioner,
    *,
    batch_size: int,
    step_size: float,
    generator: torch.Generator,
    ridge: float = 0.0,
    tile_elements: int = DEFAULT_TILE_ELEMENTS,
) -> tuple[Tensor, float]:
    r"""One pass of EigenPro over the training points in random batches.

    For each batch ``B`` of ``m`` points (the last one may be smaller, with the same
    per-point rate ``eta / m``), with ``S`` the subsample (rows ``0..s-1`` of ``x``):

    .. math::

        g &= k(X_B, X)\,\alpha + r\,\alpha_B - y_B \\
        \alpha_B &\leftarrow \alpha_B - \frac{\eta}{m}\, g \\
        \alpha_S &\leftarrow \alpha_S + \frac{\eta}{m}\, E D E^\top k(X_S, X_B)\, g

    ``k(X_B, X)`` is formed tile by tile; ``k(X_S, X_B)`` is its first ``s`` columns.

    Parameters
    ----------
    kernel : callable
        ``(x, z) -> (n_x, n_z)``.
    x : Tensor of shape (n_samples, n_features)
        Training points, the subsample first.
    y : Tensor of shape (n_samples, n_outputs)
        Targets, in the same order as ``x``.
    weights : Tensor of shape (n_samples, n_outputs)
        ``alpha``; not modified.
    preconditioner : Preconditioner
        ``E`` of shape (s, q), ``D`` of shape (q,).
    batch_size : int
        ``m``, points per batch (the last batch may be smaller).
    step_size : float
        ``eta``; each batch moves by ``eta / m`` per point.
    generator : torch.Generator
        CPU generator for the batch order.
    ridge : float
        ``r >= 0``, the ridge added to the kernel matrix.
    tile_elements : int
        Entries of one kernel tile formed at once.

    Returns
    -------
    weights : Tensor of shape (n_samples, n_outputs)
        Updated copy.
    train_mse : float
        Mean squared residual ``k(X_B, X) alpha - y_B`` of the batches, each taken just before
        its update (a free running estimate of the training MSE).

    References
    ----------
    .. [1] S. Ma and M. Belkin, "Diving into the shallows", NeurIPS 2017.
    .. [2] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
       training", MLSys 2019.

    Examples
    --------
    >>> import torch
    >>> from slimtrain.kernels.functions import make_kernel
    >>> k = make_kernel("gaussian", 1.0)
    >>> x = torch.tensor([[0.0], [10.0]], dtype=torch.float64)
    >>> y = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    >>> p = Preconditioner(torch.zeros(2, 0, dtype=torch.float64),
    ...                    torch.zeros(0, dtype=torch.float64), 0.5)
    >>> w, mse = eigenpro_epoch(k, x, y, torch.zeros_like(y), p, batch_size=2, step_size=1.0,
    ...                         generator=torch.Generator().manual_seed(0))
    >>> w.flatten(), mse
    (tensor([0.5000, 1.0000], dtype=torch.float64), 2.5)
    """
    n = x.shape[0]
    if y.shape[0] != n or weights.shape != y.shape:
        raise ValueError(
            f"x has {n} rows, y has shape {tuple(y.shape)} and weights {tuple(weights.shape)}; "
            "y and weights must both be (n_samples, n_outputs)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    e, dscale, _ = preconditioner
    n_sub = e.shape[0]
    w = weights.clone()
    rate = step_size / batch_size
    order = torch.randperm(n, generator=generator).to(x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for b0 in range(0, n, batch_size):
        batch = order[b0 : b0 + batch_size]
        g, h, sq = _batch_residual(kernel, x, y, w, batch, n_sub, ridge, tile_elements)
        total += sq
        w.index_add_(0, batch, g, alpha=-rate)
        if e.shape[1] > 0:
            correction = e @ (dscale.unsqueeze(1) * (e.T @ h))  # (s, l)
            w[:n_sub].add_(correction, alpha=rate)
    return w, float(total) / max(y.numel(), 1)




# --------------------------------------------------------------------------------------------
# Records, the termination rule and the driver loop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of :func:`eigenpro_solve`.

    Attributes
    ----------
    epoch : int
        1-based.
    train_mse : float
        Running estimate over the epoch's batches (see :func:`eigenpro_epoch`).
    val_mse, val_error : float or None
        On the validation set, when given (``val_error`` needs an ``error_fn``).
    step_size : float
        ``eta`` used (halved after a detected divergence).
    epoch_time : float
        Seconds for the epoch and its validation.
    status : EigenProStatus
        ``OK``; ``STEP_HALVED`` for an epoch rerun with a halved step after a divergence;
        ``EARLY_STOPPED`` for the epoch after which early stopping ended the run.
    """

    epoch: int
    train_mse: float
    val_mse: float | None
    val_error: float | None
    step_size: float
    epoch_time: float
    status: EigenProStatus = EigenProStatus.OK

    def as_dict(self) -> dict[str, Any]:
        """Plain dictionary (JSON-serialisable: ``status`` is the status's name)."""
        out = dict(asdict(self))
        out["status"] = self.status.name
        return out


class EigenProResult(NamedTuple):
    """Output of :func:`eigenpro_solve`.

    Attributes
    ----------
    weights : Tensor of shape (n_samples, n_outputs)
        ``alpha`` in the order of the input points: the last epoch's, the best epoch's under
        early stopping, the last iterate before the divergence when ``DIVERGED``.
    parameters : EigenProParameters
    history : tuple of EpochRecord
        The epochs whose iterates were kept (epochs undone by a divergence are dropped).
    best_epoch : int
        Epoch whose weights are returned (0: the zero start).
    status : EigenProStatus
        The most serious status of the run.
    """

    weights: Tensor
    parameters: EigenProParameters
    history: tuple[EpochRecord, ...]
    best_epoch: int
    status: EigenProStatus


class _Progress(NamedTuple):
    """The loop's state at the start of an epoch (everything a rollback restores)."""

    weights: Tensor
    train_mse: float
    epoch: int  # epochs completed
    history: tuple[EpochRecord, ...]
    best_score: float
    best_weights: Tensor
    best_epoch: int
    stale: int


class _SolveState(NamedTuple):
    current: _Progress
    backup: _Progress  # the state one epoch earlier: where a divergence rolls back to
    step_size: float
    halvings: int
    rerun: bool  # the next epoch repeats one undone by a divergence
    stopped_early: bool


class _Problem(NamedTuple):
    """Everything fixed during the loop (points in the subsample-first order)."""

    kernel: KernelFunction
    x: Tensor
    y: Tensor
    x_val: Tensor | None
    y_val: Tensor | None
    error_fn: Callable[[Tensor, Tensor], float] | None
    preconditioner: Preconditioner
    batch_size: int
    reference: float  # MSE of the zero predictor
    tile_elements: int


def _diverged(mse: float, previous: float, reference: float) -> bool:
    """Non-finite, worse than the zero predictor, or a 4x jump above the noise floor."""
    if not math.isfinite(mse):
        return True
    return mse > 1.01 * reference or (mse > 4.0 * previous and mse > 1e-3 * reference)


def _epoch_step(
    problem: _Problem,
    config: EigenProConfig,
    state: _SolveState,
    generator: torch.Generator,
    callback: Callable[[EpochRecord], None] | None,
) -> _SolveState:
    """One epoch, its validation and the bookkeeping; a divergence rolls back instead.

    A divergence shows in the running MSE of the epoch after the step that caused it (in
    full-batch mode every residual is taken before the epoch's step), so the state returns to
    the start of the previous epoch, with half the step size.
    """
    start = time.perf_counter()
    cur = state.current
    new, mse = eigenpro_epoch(
        problem.kernel, problem.x, problem.y, cur.weights, problem.preconditioner,
        batch_size=problem.batch_size, step_size=state.step_size, generator=generator,
        ridge=config.ridge, tile_elements=problem.tile_elements,
    )
    if _diverged(mse, cur.train_mse, problem.reference):
        logger.info(
            "EigenPro diverged in epoch %d (running train MSE %.3g after %.3g); halving the "
            "step size to %.4g and repeating from epoch %d", cur.epoch + 1, mse,
            cur.train_mse, state.step_size / 2, state.backup.epoch + 1,
        )
        return _SolveState(state.backup, state.backup, state.step_size / 2.0,
                           state.halvings + 1, True, False)
    val_mse = val_error = None
    if problem.x_val is not None and problem.y_val is not None:
        pred = kernel_matmul(problem.kernel, problem.x_val, problem.x, new,
                             tile_elements=problem.tile_elements)
        val_mse = float((pred - problem.y_val).double().square().mean())
        if problem.error_fn is not None:
            val_error = float(problem.error_fn(pred, problem.y_val))
    epoch = cur.epoch + 1
    best_score, best_weights, best_epoch, stale = (
        cur.best_score, cur.best_weights, cur.best_epoch, cur.stale
    )
    stop = False
    if config.early_stopping:
        score = val_error if val_error is not None else val_mse
        criterion = math.inf if score is None else score
        if criterion < best_score - config.tol:
            best_score, best_weights, best_epoch, stale = criterion, new, epoch, 0
        else:
            stale += 1
            stop = stale >= config.n_iter_no_change
    status = EigenProStatus.OK
    if stop:
        status = EigenProStatus.EARLY_STOPPED
    elif state.rerun:
        status = EigenProStatus.STEP_HALVED
    record = EpochRecord(epoch, mse, val_mse, val_error, state.step_size,
                         time.perf_counter() - start, status)
    logger.debug("EigenPro epoch %s", record)
    if callback is not None:
        callback(record)
    progress = _Progress(new, mse, epoch, (*cur.history, record), best_score, best_weights,
                         best_epoch, stale)
    return _SolveState(progress, cur, state.step_size, state.halvings, False, stop)


def _termination(config: EigenProConfig, state: _SolveState) -> EigenProStatus | None:
    """The status that ends the run, or None to go on."""
    if state.halvings > MAX_HALVINGS:
        return EigenProStatus.DIVERGED
    if state.stopped_early:
        return EigenProStatus.EARLY_STOPPED
    if state.current.epoch >= config.n_epochs:
        return EigenProStatus.OK
    return None


def eigenpro_solve(
    kernel: KernelFunction,
    x: Tensor,
    y: Tensor,
    config: EigenProConfig,
    options: RuntimeOptions,
    *,
    generator: torch.Generator,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    error_fn: Callable[[Tensor, Tensor], float] | None = None,
    callback: Callable[[EpochRecord], None] | None = None,
) -> EigenProResult:
    r"""Fit kernel weights by EigenPro 2: set-up, then epochs until the termination rule.

    Each step on a batch ``B`` of ``m`` points, with ``S`` the Nystrom subsample:

    .. math::

        g = k(X_B, X)\alpha + r\alpha_B - y_B,\qquad
        \alpha_B \leftarrow \alpha_B - \frac{\eta}{m} g,\qquad
        \alpha_S \leftarrow \alpha_S + \frac{\eta}{m} E D E^\top k(X_S, X_B)\, g

    After each epoch the validation MSE (and ``error_fn``) is evaluated when ``x_val`` is
    given. A running training MSE that is non-finite, above that of the zero predictor, or
    4x the previous epoch's (when above 1e-3 of the zero predictor's) is a divergence: the
    solver returns to the start of the previous epoch (the running MSE shows a bad step one
    epoch late) and goes on with half the step size (status ``STEP_HALVED``); after
    :data:`MAX_HALVINGS` halvings it stops with status ``DIVERGED`` and returns the last
    iterate before the divergence. No NaN leaves the solver and it does not raise for a
    numerical outcome. With ``config.early_stopping`` the run stops after
    ``n_iter_no_change`` epochs without improving the validation criterion (``error_fn`` if
    given, else the MSE) by more than ``tol`` and returns the best epoch's weights.

    Parameters
    ----------
    kernel : callable
        ``(x, z) -> (n_x, n_z)``.
    x : Tensor of shape (n_samples, n_features)
        Training points; their dtype is the working precision, their device the device.
    y : Tensor of shape (n_samples, n_outputs)
        Targets, same dtype and device as ``x``.
    config : EigenProConfig
        Statistical choices: epochs, ``s``, ``q``, ``m``, ridge, early stopping.
    options : RuntimeOptions
        Engineering options: memory budget, kernel tiles, eigensolver.
    generator : torch.Generator
        CPU generator: subsample, eigensolver start and batch order.
    x_val : Tensor of shape (n_val, n_features), optional
        Validation points, evaluated after every epoch.
    y_val : Tensor of shape (n_val, n_outputs), optional
        Validation targets.
    error_fn : callable, optional
        ``(predictions (n_val, n_outputs), y_val) -> float``, e.g. a classification error;
        the early-stopping criterion when given.
    callback : callable, optional
        Called with each kept :class:`EpochRecord`.

    Returns
    -------
    EigenProResult
        Weights, chosen parameters, per-epoch history, best epoch and status.

    Raises
    ------
    TypeError
        ``x``, ``y``, ``x_val`` or ``y_val`` is not a floating-point tensor, or their dtypes
        differ.
    ValueError
        Shapes that do not match (``x_val`` needs the features of ``x``, ``y_val`` the
        outputs of ``y``), tensors on different devices, NaN/Inf in any of them, early
        stopping without a validation set (all checked before any work), or a set-up error
        of :func:`eigenpro_setup`.

    References
    ----------
    .. [1] S. Ma and M. Belkin, "Diving into the shallows", NeurIPS 2017.
    .. [2] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
       training", MLSys 2019.

    Examples
    --------
    >>> import torch
    >>> from slimtrain.kernels.functions import make_kernel
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(200, 2, generator=g, dtype=torch.float64)
    >>> y = torch.sin(4 * x[:, :1])
    >>> res = eigenpro_solve(make_kernel("gaussian", 0.3), x, y, EigenProConfig(n_epochs=20),
    ...                      RuntimeOptions(1e8), generator=g)
    >>> res.status.name, res.history[-1].train_mse < 1e-3 * float(y.square().mean())
    ('OK', True)
    """
    _check_solve_inputs(x, y, x_val, y_val)
    if config.early_stopping and x_val is None:
        raise ValueError("early_stopping needs a validation set (x_val, y_val); none was given")
    n, n_out = y.shape
    setup = eigenpro_setup(kernel, x, config, options, n_outputs=n_out, generator=generator)
    params = setup.parameters
    tile = options.tile_elements
    if tile is None:
        tile = default_tile_elements(
            x.device, options.memory_bytes - x.element_size() * n * (x.shape[1] + 3 * n_out),
            x.element_size(),
        )
    # Subsample first: its kernel columns are the first s columns of every batch block.
    mask = torch.ones(n, dtype=torch.bool, device=x.device)
    mask[setup.subsample_index] = False
    order = torch.cat([setup.subsample_index, torch.arange(n, device=x.device)[mask]])
    xo, yo = x.index_select(0, order), y.index_select(0, order)
    reference = float(yo.double().square().mean())
    problem = _Problem(kernel, xo, yo, x_val, y_val, error_fn, setup.preconditioner,
                       params.batch_size, reference, tile)
    zero = torch.zeros_like(yo)
    start = _Progress(zero, reference, 0, (), math.inf, zero, 0, 0)
    state = _SolveState(start, start, params.step_size, 0, False, False)
    while (status := _termination(config, state)) is None:
        state = _epoch_step(problem, config, state, generator, callback)
    cur = state.current
    if config.early_stopping and cur.best_epoch > 0:
        weights, best_epoch = cur.best_weights, cur.best_epoch
    else:
        weights, best_epoch = cur.weights, cur.epoch
    if state.halvings > 0:
        status = _worst(status, EigenProStatus.STEP_HALVED)
    status = _worst(status, setup.status)
    if status is not EigenProStatus.OK:
        logger.info("EigenPro finished with status %s: %s", status.name, status.value)
    out = torch.empty_like(weights)
    out[order] = weights
    return EigenProResult(out, params, cur.history, best_epoch, status)
