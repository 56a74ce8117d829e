r"""The stateful slimTik solver: a thin, validated shell over :func:`slimtik_update`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from slimtrain._validation import check_finite, check_same_device, check_tensor
from slimtrain.linalg.slimtik import (
    SlimTikConfig,
    SlimTikInfo,
    SlimTikState,
    initial_state,
    slimtik_update,
)
from slimtrain.linalg.stats import GramStats, gram_statistics

__all__ = ["SlimTik"]

logger = logging.getLogger(__name__)

StatsReducer = Callable[[GramStats], GramStats]


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
        ``Lambda >= lower``; largest positive sGCV trial increment.
    reduction : {"mean", "sum"}, default "mean"
        ``"mean"`` divides each batch by ``sqrt(N)`` (N samples in that batch).
    n_candidates : int, default 30
        sGCV trial points per side.
    refine : bool, default True
        Refine the sGCV minimiser in ``log|lam|``.
    reducer : callable, optional
        Applied to the batch :class:`GramStats` before the solve (e.g. an all-reduce across
        processes, :mod:`slimtrain.training.distributed`).

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
        memory_depth: int = 5,
        initial_lambda: float = 1e-10,
        lambda_rule: Literal["sgcv", "constant"] = "sgcv",
        lower: float = 1e-7,
        upper: float = 1e3,
        reduction: Literal["mean", "sum"] = "mean",
        n_candidates: int = 30,
        refine: bool = True,
        reducer: StatsReducer | None = None,
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
        )
        self.reducer = reducer
        self.state: SlimTikState = initial_state(self.config)
        self.last_info: SlimTikInfo | None = None

    # ------------------------------------------------------------------ properties
    @property
    def sum_lambda(self) -> float:
        """Cumulative regularization ``Lambda``."""
        return self.state.sum_lambda

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
        if n_samples is not None and (
            isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples <= 0
        ):
            raise ValueError(f"n_samples must be a positive int, found {n_samples!r}")
        stats = gram_statistics(Z, C, n_samples=n_samples)
        return self.step_statistics(W, stats, lam=lam)

    def step_statistics(
        self, W: Tensor, stats: GramStats, lam: float | None = None
    ) -> tuple[Tensor, SlimTikInfo]:
        """Update ``W`` from precomputed :class:`GramStats` (the path heads and DDP use).

        The statistics are validated (shapes against ``W``, finiteness) before anything is
        changed; ``reducer`` (if any) is applied first.
        """
        W = check_tensor("W", W, ndim=2)
        check_finite("W", W)
        if lam is not None and not (isinstance(lam, (int, float)) and math.isfinite(lam)):
            raise ValueError(f"lam must be a finite real number, found {lam!r}")
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
            check_finite(f"batch statistic {name}", getattr(stats, name))
        for g in self.state.grams:
            if g.shape != (p, p):
                raise ValueError(
                    f"the solver's memory holds Grams of shape {tuple(g.shape)} but W has p={p}; "
                    "call reset() before solving a problem of another size"
                )
        if self.reducer is not None:
            stats = self.reducer(stats)
        device = W.device
        work = torch.float64
        stats64 = GramStats(
            stats.ztz.to(device=device, dtype=work),
            stats.ztc.to(device=device, dtype=work),
            stats.ctc.to(device=device, dtype=work),
            stats.n_samples,
            stats.n_rows,
        )
        state = self.state
        if any(g.device != device for g in state.grams):
            state = state._replace(grams=tuple(g.to(device) for g in state.grams))
        W_new, new_state, info = slimtik_update(W.to(work), stats64, state, self.config, lam)
        if not bool(torch.isfinite(W_new).all()):  # pragma: no cover - guarded by construction
            raise FloatingPointError(
                "slimTik produced non-finite weights; the state was left unchanged. "
                "Report this with the batch statistics."
            )
        self.state = new_state
        self.last_info = info
        if not info.status.is_ok:
            logger.debug("slimTik step %d: %s", new_state.step, info.status.value)
        return W_new.to(W.dtype), info

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
            "sum_lambda": self.state.sum_lambda,
            "step": self.state.step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; validated before anything changes."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, found {type(state_dict).__name__}")
        missing = {"config", "grams", "rows", "sum_lambda", "step"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks keys {sorted(missing)}; expected SlimTik's own")
        config = SlimTikConfig(**state_dict["config"])
        grams = tuple(state_dict["grams"])
        rows = tuple(int(r) for r in state_dict["rows"])
        if len(grams) != len(rows) or len(grams) > config.memory_depth:
            raise ValueError(
                f"state_dict holds {len(grams)} Grams and {len(rows)} row counts for "
                f"memory_depth={config.memory_depth}; expected equal counts <= memory_depth"
            )
        for g in grams:
            check_tensor("stored Gram", g, ndim=2)
            check_finite("stored Gram", g)
        self.config = config
        self.state = SlimTikState(
            tuple(g.to(torch.float64) for g in grams),
            rows,
            float(state_dict["sum_lambda"]),
            int(state_dict["step"]),
        )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SlimTik(memory_depth={c.memory_depth}, initial_lambda={c.initial_lambda:g}, "
            f"lambda_rule={c.lambda_rule!r}, lower={c.lower:g}, upper={c.upper:g}, "
            f"reduction={c.reduction!r}; step={self.state.step}, "
            f"sum_lambda={self.state.sum_lambda:.4g})"
        )
