r"""EigenPro set-up: subsample, Nystrom eigensystem, preconditioner and the EigenPro 2
parameter rule under a memory budget, plus the input checks at the solver's door.

References
----------
.. [1] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
   training", MLSys 2019.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from slimtrain._validation import check_finite, check_tensor
from slimtrain.kernels.config import EigenProConfig, EigenProStatus, RuntimeOptions
from slimtrain.kernels.functions import KernelFunction, kernel_diagonal
from slimtrain.kernels.memory import auto_subsample_size, max_batch_size
from slimtrain.kernels.nystrom import nystrom_eigensystem, resolve_eigensolver
from slimtrain.kernels.preconditioner import (
    Preconditioner,
    choose_n_components,
    eigenpro_preconditioner,
    eigenpro_step_and_batch,
    numerical_component_limit,
)

__all__ = ["EigenProParameters", "EigenProSetup", "check_solve_inputs", "eigenpro_setup"]

logger = logging.getLogger(__name__)


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


def check_solve_inputs(
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
    >>> from slimtrain.kernels.config import EigenProConfig, RuntimeOptions
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


