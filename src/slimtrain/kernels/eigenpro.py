r"""EigenPro 2: preconditioned stochastic gradient descent for kernel regression.

The solve, in three pure parts and one loop (like optimistix's driver):

* :func:`~slimtrain.kernels.setup.eigenpro_setup`: subsample, Nystrom eigensystem
  (:mod:`slimtrain.kernels.nystrom`), preconditioner and the EigenPro 2 parameter rule
  (:mod:`slimtrain.kernels.preconditioner`) under a memory budget
  (:mod:`slimtrain.kernels.memory`);
* :func:`eigenpro_epoch`: one pass over the data in batches;
* a termination rule (all epochs run, early stopping, or divergence beyond repair);

:func:`eigenpro_solve` runs them and returns an :class:`EigenProResult` whose ``status``
(:class:`~slimtrain.kernels.config.EigenProStatus`) says what happened in words a user can
act on. Nothing here prints,
raises for a numerical outcome, or moves data between devices behind the caller's back.
Statistical choices (:class:`~slimtrain.kernels.config.EigenProConfig`) are kept apart from
engineering ones (:class:`~slimtrain.kernels.config.RuntimeOptions`: memory budget, kernel
tiles, eigensolver; the device is that of the data). This module re-exports the names of those
modules that form the solver's API.

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
from typing import Any, NamedTuple

import torch
from torch import Tensor

from slimtrain.kernels.config import (
    MAX_HALVINGS,
    EigenProConfig,
    EigenProStatus,
    RuntimeOptions,
    worst_status,
)
from slimtrain.kernels.functions import (
    DEFAULT_TILE_ELEMENTS,
    KernelFunction,
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
    NystromEigensystem,
    nystrom_eigensystem,
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
from slimtrain.kernels.setup import (
    EigenProParameters,
    EigenProSetup,
    check_solve_inputs,
    eigenpro_setup,
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
        Called with each :class:`EpochRecord` as it is made (an epoch undone later by a
        divergence was reported too; ``history`` keeps only the epochs kept).

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
    check_solve_inputs(x, y, x_val, y_val)
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
        status = worst_status(status, EigenProStatus.STEP_HALVED)
    status = worst_status(status, setup.status)
    if status is not EigenProStatus.OK:
        logger.info("EigenPro finished with status %s: %s", status.name, status.value)
    out = torch.empty_like(weights)
    out[order] = weights
    return EigenProResult(out, params, cur.history, best_epoch, status)
