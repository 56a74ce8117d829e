r"""The stateful slimTik solver: a thin, validated shell over :func:`slimtik_update`."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from slimtrain._threads import num_threads
from slimtrain._validation import (
    all_finite,
    check_finite,
    check_int,
    check_real,
    check_same_device,
    check_tensor,
)
from slimtrain.linalg.eigh import CPU_EIGH_MAX_SIZE
from slimtrain.linalg.slimtik import (
    LambdaUnits,
    SlimTikConfig,
    SlimTikInfo,
    SlimTikState,
    info_from_values,
    initial_state,
    slimtik_update,
)
from slimtrain.linalg.stats import GramStats, gram_statistics

__all__ = ["SlimTik"]

logger = logging.getLogger(__name__)

StatsReducer = Callable[[GramStats], GramStats]
_T = TypeVar("_T")

#: Largest ``p`` whose CPU solve runs single-threaded (``benchmarks/slimtik_step.py``, columns
#: "solve" and "solve 1t" and the eigh table: on 2 shared cores at load 6-8 one thread was
#: faster at every head size, 257 x 257 eigh 15 ms against 52 ms; on an idle machine two
#: threads may win for the largest heads, hence the cut below p = 1025).
SINGLE_THREAD_MAX_P = 512


class SlimTik:
    r"""Sampled limited-memory Tikhonov (slimTik) solver for linear weights ``W``.

    At each call of :meth:`step` with a batch ``Z`` of shape ``(n_rows, p)`` and ``C`` of shape
    ``(n_rows, t)`` the weights ``W`` of shape ``(t, p)`` (like ``nn.Linear.weight``) are updated
    without a learning rate:

    .. math::

        \Lambda_k = \Lambda_{k-1} + \lambda_k, \qquad
        W_k^\top = W_{k-1}^\top - \bigl(M_k + \Lambda_k I\bigr)^{-1}
                   \bigl(Z_s^\top (Z_s W_{k-1}^\top - C_s) + \lambda_k W_{k-1}^\top\bigr),

    where ``Zs, Cs`` are the (scaled) batch, ``M_k`` the Gram of this batch plus the last
    ``memory_depth`` batches, and ``lambda_k`` minimises sampled GCV (``lambda_rule="sgcv"``)
    or equals ``initial_lambda`` (``"constant"``). Solves run in float64 whatever the dtype of
    ``W``; ``W_new`` comes back in the dtype and on the device of ``W``. Solver state (float64
    Grams, ``Lambda``) lives here, not in a ``torch.optim`` optimizer.

    Parameters
    ----------
    memory_depth : int, default 5
        Number of previous batch Grams kept (0: current batch only).
    initial_lambda : float, default 1e-10
        ``Lambda_0``; the fixed increment when ``lambda_rule="constant"``.
    lambda_rule : {"sgcv", "constant"}, default "sgcv"
    lower, upper : float, default 1e-7, 1e3
        ``Lambda >= lower``; largest positive sGCV trial increment (in ``lambda_units``).
    reduction : {"mean", "sum"}, default "mean"
        ``"mean"`` divides each batch by ``sqrt(N)`` (N samples in that batch).
    n_candidates : int, default 30
        sGCV trial points per side.
    refine : bool, default True
        Refine the sGCV minimiser in ``log|lam|``.
    lambda_units : {"relative", "absolute"}, default "relative"
        ``"relative"``: ``initial_lambda``, ``lower``, ``upper``, the sGCV trial grid and a
        prescribed ``lam`` are multiples of the data scale of each step, the mean eigenvalue
        ``trace(M) / p`` of the memory Gram (``info.scale``), so that features ``a Z`` and
        targets ``b C`` give ``(b / a) W``, the same predictions up to ``b`` and the same
        statuses. ``"absolute"``: plain numbers in the units of ``Z^T Z`` (the behaviour
        before this option existed, and of the paper's code). ``Lambda`` itself
        (``info.sum_lambda``) is absolute either way.
    reducer : callable, optional
        Applied to the batch :class:`GramStats` before the solve (e.g. an all-reduce across
        processes, :mod:`slimtrain.training.distributed`).
    cpu_eigh_max_size : int, default 0
        Engineering option (not part of the state): when ``W`` is on a GPU, eigendecompose the
        memory Gram (or its blocks) of at most this size on the CPU, where small ``eigh`` calls
        are often faster; costs one synchronisation. Set it from
        ``benchmarks/slimtik_step.py --device cuda``; 0 never moves anything.

    Examples
    --------
    >>> import torch
    >>> from slimtrain import SlimTik
    >>> g = torch.Generator().manual_seed(0)
    >>> Z = torch.randn(64, 5, generator=g, dtype=torch.float64)
    >>> C = Z @ torch.ones(5, 1, dtype=torch.float64)
    >>> solver = SlimTik(memory_depth=0)
    >>> W, info = solver.step(torch.zeros(1, 5, dtype=torch.float64), Z, C)
    >>> bool(torch.allclose(W, torch.ones(1, 5, dtype=torch.float64), atol=1e-4))
    True

    References
    ----------
    .. [1] E. Newman, J. Chung, M. Chung, L. Ruthotto, "slimTrain -- A Stochastic Approximation
       Method for Training Separable Deep Neural Networks", SIAM J. Sci. Comput. 44(4), 2022.
    .. [2] J. Chung, M. Chung, J. T. Slagel, L. Tenorio, "Sampled limited memory methods for
       massive linear inverse problems", Inverse Problems 36(5), 2020.
    """

    def __init__(
        self,
        memory_depth: int = SlimTikConfig.memory_depth,
        initial_lambda: float = SlimTikConfig.initial_lambda,
        lambda_rule: Literal["sgcv", "constant"] = SlimTikConfig.lambda_rule,
        lower: float = SlimTikConfig.lower,
        upper: float = SlimTikConfig.upper,
        reduction: Literal["mean", "sum"] = SlimTikConfig.reduction,
        n_candidates: int = SlimTikConfig.n_candidates,
        refine: bool = SlimTikConfig.refine,
        reducer: StatsReducer | None = None,
        lambda_units: LambdaUnits = SlimTikConfig.lambda_units,
        cpu_eigh_max_size: int = CPU_EIGH_MAX_SIZE,
    ) -> None:
        self.config = SlimTikConfig(
            memory_depth=memory_depth,
            initial_lambda=initial_lambda,
            lambda_rule=lambda_rule,
            lower=lower,
            upper=upper,
            reduction=reduction,
            n_candidates=n_candidates,
            refine=refine,
            lambda_units=lambda_units,
        )
        self.reducer = reducer
        self.cpu_eigh_max_size = check_int("cpu_eigh_max_size", cpu_eigh_max_size, minimum=0)
        self.state: SlimTikState = initial_state(self.config)
        self.last_info: SlimTikInfo | None = None

    # ------------------------------------------------------------------ properties
    @property
    def sum_lambda(self) -> float:
        """Cumulative regularization ``Lambda`` (reads it from the device)."""
        return float(self.state.sum_lambda)

    @property
    def n_steps(self) -> int:
        """Steps taken so far."""
        return self.state.step

    # ------------------------------------------------------------------ stepping
    def step(
        self,
        W: Tensor,
        Z: Tensor,
        C: Tensor,
        n_samples: int | None = None,
        lam: float | None = None,
    ) -> tuple[Tensor, SlimTikInfo]:
        """Update ``W`` ``(t, p)`` from a batch ``Z`` ``(n_rows, p)``, ``C`` ``(n_rows, t)``.

        Parameters
        ----------
        W, Z, C : Tensor
            One floating dtype and one device for all three.
        n_samples : int, optional
            Samples the rows come from (``reduction="mean"`` divides by it); default ``n_rows``.
        lam : float, optional
            A prescribed increment of ``Lambda`` for this step, overriding ``lambda_rule``.

        Returns
        -------
        W_new : Tensor
            Shape ``(t, p)``, dtype and device of ``W``.
        info : SlimTikInfo
        """
        W = check_tensor("W", W, ndim=2)
        Z = check_tensor("Z", Z, ndim=2)
        C = check_tensor("C", C, ndim=2)
        if not (W.dtype == Z.dtype == C.dtype):
            raise TypeError(
                f"W, Z and C must share one dtype, found W {W.dtype}, Z {Z.dtype}, C {C.dtype}"
            )
        check_same_device(W=W, Z=Z, C=C)
        t, p = W.shape
        if Z.shape[1] != p:
            raise ValueError(
                f"Z has {Z.shape[1]} columns but W has {p} (W is (t, p), Z is (n_rows, p))"
            )
        if C.shape[1] != t:
            raise ValueError(f"C has {C.shape[1]} columns but W has {t} rows (C is (n_rows, t))")
        if Z.shape[0] != C.shape[0]:
            raise ValueError(
                f"Z has {Z.shape[0]} rows but C has {C.shape[0]} (rows are samples or positions)"
            )
        if Z.shape[0] == 0:
            raise ValueError("Z and C have no rows; expected a non-empty batch")
        check_finite("Z", Z)
        check_finite("C", C)
        if n_samples is not None:
            n_samples = check_int("n_samples", n_samples, minimum=1)
        stats = gram_statistics(Z, C, n_samples=n_samples)
        self.check_statistics(W, stats, lam, inputs_finite=True)
        return self.step_statistics(W, stats, lam=lam, checked=True)

    def check_statistics(
        self, W: Tensor, stats: GramStats, lam: float | None = None, *,
        inputs_finite: bool = False,
    ) -> None:
        """Raise ``ValueError``/``TypeError`` unless ``stats`` (and ``lam``) fit ``W`` and this
        solver's memory and are finite. Changes nothing; :meth:`step_statistics` calls it.

        ``inputs_finite`` says the rows the statistics come from were checked finite, so that
        non-finite statistics can only be an overflow of the sums (the message says so).
        """
        W = check_tensor("W", W, ndim=2)
        check_finite("W", W)
        if lam is not None:
            check_real("lam", lam)
        t, p = W.shape
        if tuple(stats.ztz.shape) != (p, p) or tuple(stats.ztc.shape) != (p, t):
            raise ValueError(
                f"statistics of shapes ztz {tuple(stats.ztz.shape)}, ztc {tuple(stats.ztc.shape)} "
                f"do not match W of shape {(t, p)}; expected ({p}, {p}) and ({p}, {t})"
            )
        if stats.n_samples <= 0 or stats.n_rows <= 0:
            raise ValueError(
                f"expected a non-empty batch, found n_samples={stats.n_samples}, "
                f"n_rows={stats.n_rows}"
            )
        for name in ("ztz", "ztc", "ctc"):
            _check_statistic(name, getattr(stats, name), inputs_finite)
        for g in self.state.grams:
            if g.shape != (p, p):
                raise ValueError(
                    f"the solver's memory holds Grams of shape {tuple(g.shape)} but W has p={p}; "
                    "call reset() before solving a problem of another size"
                )

    def step_statistics(
        self, W: Tensor, stats: GramStats, lam: float | None = None, *, checked: bool = False
    ) -> tuple[Tensor, SlimTikInfo]:
        """Update ``W`` from precomputed :class:`GramStats` (the path heads and DDP use).

        The statistics are validated (:meth:`check_statistics`) before anything is changed,
        unless ``checked`` says the caller has just done so for these arguments; ``reducer``
        (if any) is applied next. The solve runs under ``torch.inference_mode``; the weights
        returned are an ordinary tensor (cloned out of it).
        """
        if not checked:
            self.check_statistics(W, stats, lam)
        if self.reducer is not None:
            stats = self.reducer(stats)
        device = W.device
        work = torch.float64
        stats64 = stats._replace(  # keeps the other fields (counts, structure) as they are
            ztz=stats.ztz.to(device=device, dtype=work),
            ztc=stats.ztc.to(device=device, dtype=work),
            ctc=stats.ctc.to(device=device, dtype=work),
        )
        state = self.state
        if any(g.device != device for g in state.grams):
            state = state._replace(grams=tuple(g.to(device) for g in state.grams))
        if state.sum_lambda.device != device:
            state = state._replace(sum_lambda=state.sum_lambda.to(device))
        p = int(W.shape[1])
        threads = 1 if device.type == "cpu" and p <= SINGLE_THREAD_MAX_P else None
        # inference_mode skips autograd's bookkeeping on the step's few hundred small operations
        # (12-19 % of the solve for p = 17 and 65); the weights returned are cloned out of it.
        with num_threads(threads or torch.get_num_threads()), torch.inference_mode():
            W_new, new_state, record = slimtik_update(
                W.to(work), stats64, state, self.config, lam,
                cpu_eigh_max_size=self.cpu_eigh_max_size,
            )
            # The one device-to-host transfer of the step: the info and the sum of W_new, finite
            # when every entry is (an overflow of the sum alone is told apart below).
            values = torch.cat((record.stacked(), W_new.sum().reshape(1))).tolist()
            W_out = W_new.to(W.dtype)
        finite = math.isfinite(values[-1]) or bool(torch.isfinite(W_new).all())
        if not finite:  # pragma: no cover - guarded by construction
            raise FloatingPointError(
                "slimTik produced non-finite weights; the state was left unchanged. "
                "Report this with the batch statistics."
            )
        info = info_from_values(values)
        self.state = new_state
        self.last_info = info
        if not info.status.is_ok:
            logger.debug("slimTik step %d: %s", new_state.step, info.status.value)
        return W_out.clone(), info  # an ordinary tensor, usable with autograd and in place

    def reset(self) -> None:
        """Forget the memory and restart ``Lambda`` at ``initial_lambda``."""
        self.state = initial_state(self.config)
        self.last_info = None

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Config and state as tensors and plain Python values (loads with ``weights_only``)."""
        return {
            "config": self.config.to_dict(),
            "grams": [g.clone() for g in self.state.grams],
            "rows": list(self.state.rows),
            "sum_lambda": float(self.state.sum_lambda),
            "step": self.state.step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; validated in full before anything changes.

        Accepted: ``config`` with keys of :class:`SlimTikConfig` only (missing ones take their
        defaults); ``step`` a non-negative int; ``sum_lambda`` a finite real number
        ``>= config.lower`` (at ``step == 0`` it may instead be ``config.initial_lambda``, the
        starting value, which may lie below ``lower``); ``rows`` non-negative ints; ``grams``
        finite float64 square 2-D tensors of one shape ``(p, p)``, as many as ``rows``, at most
        ``memory_depth`` and at most ``step``.

        Raises
        ------
        TypeError
            If ``state_dict`` is not a dict.
        ValueError
            For anything else that is not as above, naming what was found and what is expected;
            the solver is then exactly as before.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, found {type(state_dict).__name__}")
        missing = {"config", "grams", "rows", "sum_lambda", "step"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks keys {sorted(missing)}; expected SlimTik's own")
        config = _config_from_dict(state_dict["config"])
        step = _state_entry(check_int, "step", state_dict["step"], minimum=0)
        sum_lambda = _state_entry(check_real, "sum_lambda", state_dict["sum_lambda"])
        starting = step == 0 and sum_lambda == config.initial_lambda
        if config.lambda_units == "absolute" and sum_lambda < config.lower and not starting:
            raise ValueError(
                f"state_dict 'sum_lambda' is {sum_lambda!r}, below lower={config.lower!r} of its "
                "config; expected Lambda >= lower (or initial_lambda before the first step)"
            )
        if config.lambda_units == "relative" and sum_lambda <= 0 and not starting:
            # The floor is lower * (the data scale of the step), known only at the next step.
            raise ValueError(
                f"state_dict 'sum_lambda' is {sum_lambda!r}; with lambda_units='relative' "
                "expected Lambda > 0 (or initial_lambda before the first step)"
            )
        raw_rows, raw_grams = state_dict["rows"], state_dict["grams"]
        for name, value in (("rows", raw_rows), ("grams", raw_grams)):
            if not isinstance(value, (list, tuple)):
                raise ValueError(
                    f"state_dict {name!r} must be a list, found {type(value).__name__}"
                )
        if (
            len(raw_grams) != len(raw_rows)
            or len(raw_grams) > config.memory_depth
            or len(raw_grams) > step
        ):
            raise ValueError(
                f"state_dict holds {len(raw_grams)} Grams and {len(raw_rows)} row counts for "
                f"memory_depth={config.memory_depth} after {step} steps; expected equal counts "
                "<= memory_depth and <= step"
            )
        rows = tuple(
            _state_entry(check_int, f"rows[{i}]", r, minimum=0) for i, r in enumerate(raw_rows)
        )
        shape: tuple[int, ...] | None = None
        for i, g in enumerate(raw_grams):
            if not isinstance(g, Tensor):
                raise ValueError(
                    f"state_dict Gram {i} is a {type(g).__name__}; expected a float64 tensor"
                )
            if g.dtype != torch.float64 or g.ndim != 2 or g.shape[0] != g.shape[1]:
                raise ValueError(
                    f"state_dict Gram {i} is a {g.dtype} tensor of shape {tuple(g.shape)}; "
                    "expected a float64 square (p, p) tensor"
                )
            if shape is not None and tuple(g.shape) != shape:
                raise ValueError(
                    f"state_dict Gram {i} has shape {tuple(g.shape)} but Gram 0 has {shape}; "
                    "expected Grams of one shape (p, p)"
                )
            shape = tuple(g.shape)
            if not bool(torch.isfinite(g).all()):
                raise ValueError(
                    f"state_dict Gram {i} holds non-finite values; expected finite Grams"
                )
        self.config = config
        self.state = SlimTikState(
            tuple(g.detach().clone() for g in raw_grams),
            rows,
            torch.tensor(sum_lambda, dtype=torch.float64),
            step,
        )
        self.last_info = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SlimTik(memory_depth={c.memory_depth}, initial_lambda={c.initial_lambda:g}, "
            f"lambda_rule={c.lambda_rule!r}, lower={c.lower:g}, upper={c.upper:g}, "
            f"reduction={c.reduction!r}, lambda_units={c.lambda_units!r}; "
            f"step={self.state.step}, sum_lambda={self.sum_lambda:.4g})"
        )


def _config_from_dict(data: Any) -> SlimTikConfig:
    """:class:`SlimTikConfig` from a state dict's ``config``, every failure as a ValueError."""
    if not isinstance(data, dict):
        raise ValueError(f"state_dict 'config' must be a dict, found {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(SlimTikConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(
            f"state_dict 'config' has unknown keys {sorted(unknown)}; expected keys among "
            f"{sorted(known)}"
        )
    try:
        return SlimTikConfig(**data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"state_dict 'config' is invalid: {error}") from error


def _state_entry(check: Callable[..., _T], key: str, value: object, **bounds: Any) -> _T:
    """``check`` (a shared helper of :mod:`slimtrain._validation`) applied to a state dict entry,
    a wrong type raised as ``ValueError`` too: :meth:`SlimTik.load_state_dict` raises
    ``ValueError`` for every bad entry."""
    try:
        return check(f"state_dict {key!r}", value, **bounds)
    except TypeError as error:
        raise ValueError(str(error)) from error


def _check_statistic(name: str, value: Tensor, inputs_finite: bool) -> None:
    """Finite batch statistic, or a ValueError that tells an overflow from bad inputs."""
    if all_finite(value):
        return
    bad = int((~torch.isfinite(value)).sum())
    what = {"ztz": "the Gram Z^T Z", "ztc": "the cross products Z^T C",
            "ctc": "the squared target norm ||C||^2"}[name]
    largest = torch.finfo(value.dtype).max
    if inputs_finite:
        raise ValueError(
            f"{what} overflowed: {bad} of its {value.numel()} entries exceed the {value.dtype} "
            f"range (about {largest:.1e}) although Z and C are finite. Rescale the features "
            "and targets (e.g. standardize them); slimTik gives the same predictions in any "
            "units"
        )
    raise ValueError(
        f"batch statistic {name} ({what}) must be finite, found {bad} NaN or Inf value(s) out "
        f"of {value.numel()}. If the rows were finite, the sums overflowed the {value.dtype} "
        f"range (about {largest:.1e}): rescale the features and targets (e.g. standardize "
        "them)"
    )
