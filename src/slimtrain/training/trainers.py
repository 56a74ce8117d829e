r"""Trainers: one step of slimTrain, and the end-to-end gradient baseline.

Both expose the same interface (``step``, ``evaluate_metrics``, ``train``/``eval``,
``state_dict``/``load_state_dict``) so that :func:`slimtrain.fit` drives either and a
comparison differs only in the method.
"""

from __future__ import annotations

import copy
import logging
import time
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from slimtrain._validation import check_finite, check_tensor
from slimtrain.heads import head_adapter
from slimtrain.linalg.slimtik import SlimTikStatus
from slimtrain.linalg.solver import SlimTik, StatsReducer
from slimtrain.training import distributed
from slimtrain.training.losses import (
    Loss,
    LossName,
    class_dim_of,
    get_loss,
    relative_errors,
    squared_loss,
)
from slimtrain.training.model import SeparableModel

__all__ = ["Trainer", "SlimTrain", "GradientTrainer", "squared_loss", "relative_errors"]

logger = logging.getLogger(__name__)


def _optimizer_params(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _forward(module: nn.Module, x: Tensor, name: str) -> Tensor:
    """``module(x)``, with torch's shape errors turned into a ``ValueError`` naming ``x``."""
    try:
        return module(x)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:
        raise ValueError(
            f"the {name} forward failed on x of shape {tuple(x.shape)} (dtype {x.dtype}): "
            f"{error}. Expected x of a shape that {type(module).__name__} accepts"
        ) from error


def _restore_buffers(model: nn.Module, saved: list[Tensor]) -> None:
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved, strict=True):
            buffer.copy_(value)


class Trainer(ABC):
    """Shared machinery: device/dtype handling of batches, evaluation, modes, persistence."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: LossName = "squared"
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, found {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, found {type(optimizer).__name__}"
            )
        self.model = model
        self.optimizer = optimizer
        self.loss: Loss = get_loss(loss, class_dim_of(model))
        self.best_state_dict: dict[str, Any] | None = None  # set by fit()

    # ------------------------------------------------------------------ batches
    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's first parameter."""
        return next(self.model.parameters()).dtype

    def _prepare(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Validate a batch and move it to the model's device (floating parts to its dtype)."""
        x = check_tensor("x", x, floating=False)
        y = check_tensor("y", y, floating=not self.loss.is_classification)
        if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must share their first (batch) dimension, found x {tuple(x.shape)} "
                f"and y {tuple(y.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError("found an empty batch; expected at least one sample")
        if x.is_floating_point():
            check_finite("x", x)
        x = x.to(self.device, dtype=self.dtype if x.is_floating_point() else None)
        return x, self.loss.prepare_targets(y, self.device, self.dtype)

    @torch.no_grad()
    def evaluate_metrics(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """Sums over the batch of the loss and its metrics, and the batch size ``n``.

        The sums are those of :meth:`slimtrain.training.losses.Loss.metric_sums`: ``target_sq``
        for the squared loss, ``accuracy`` (per sample, the fraction of correctly classified
        positions) for the cross-entropy losses. Updates nothing (call :meth:`eval` first).
        """
        x, y = self._prepare(x, y)
        prediction = _forward(self.model, x, "model")
        self.loss.check(prediction, y)
        return {**self.loss.metric_sums(prediction, y), "n": float(x.shape[0])}

    def _step_metrics(self, output: Tensor, y: Tensor) -> dict[str, float]:
        """``accuracy`` of a training step's logits for a classification loss; else nothing."""
        if not self.loss.is_classification:
            return {}
        return {"accuracy": float(self.loss.correct(output.detach(), y).mean())}

    # ------------------------------------------------------------------ modes
    def train(self) -> None:
        """Training mode for the model (and optimizers that have modes, e.g. schedule-free)."""
        self.model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()  # type: ignore[attr-defined]

    def eval(self) -> None:
        """Evaluation mode for the model (and optimizers that have modes)."""
        self.model.eval()
        if callable(getattr(self.optimizer, "eval", None)):
            self.optimizer.eval()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Model and optimizer state (subclasses add their solver)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. Loads into copies first so a bad dict changes nothing."""
        for key in ("model", "optimizer"):
            if key not in state_dict:
                raise ValueError(f"trainer state lacks {key!r}; found keys {sorted(state_dict)}")
        backup = copy.deepcopy(Trainer.state_dict(self))
        try:
            self.model.load_state_dict(state_dict["model"])
            self.optimizer.load_state_dict(state_dict["optimizer"])
        except Exception as error:  # torch raises several types for a dict that does not fit
            self.model.load_state_dict(backup["model"])
            self.optimizer.load_state_dict(backup["optimizer"])
            raise ValueError(
                f"trainer state does not fit this model/optimizer ({error}); nothing was changed"
            ) from error

    @abstractmethod
    def step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """One training step on the batch ``(x, y)``; returns at least ``loss`` and ``time``."""


class SlimTrain(Trainer):
    r"""slimTrain: slimTik for the head, a stock torch optimizer for the feature extractor.

    One step on a batch ``(x, c)``:

    .. math::

        Z &= F(x; \theta), \qquad
        W \leftarrow \operatorname{slimTik}(W, Z, c) \quad \text{(no learning rate;
        } \lambda \text{ by sGCV)} \\
        \theta &\leftarrow \operatorname{optimizer\ step}\bigl(\nabla_\theta\,
        \tfrac{1}{N}\textstyle\sum_i \tfrac12 \|W [F(x_i;\theta); 1] - c_i\|^2\bigr)
        \quad \text{with the new } W \text{ fixed.}

    One forward and one backward per step, like plain training. The head update reads the
    head's rows through its adapter (:mod:`slimtrain.heads`), solves in float64 and writes ``W``
    back into the head's Parameters.

    Parameters
    ----------
    model : SeparableModel
    optimizer : torch.optim.Optimizer
        Built on ``model.feature_parameters()``; it must not hold head parameters.
    loss : {"squared", "cross_entropy", "binary_cross_entropy"}, default "squared"
        The training loss (:mod:`slimtrain.training.losses`). For the cross-entropy losses the
        head update is one slimTik step on the *working targets*
        :math:`\tilde C = Z W^\top - \tfrac1b \nabla_f \ell` (``b = 1/2`` for softmax
        cross-entropy, ``1/4`` for the logistic loss), the least-squares majorizer of the batch
        loss at the current ``W`` (Böhning 1992): the same Grams, memory, sGCV and status, one
        extra head forward and a softmax. In the loss's units the regularization is
        ``b * Lambda``. Targets: class indices ``(N,)`` (``(N, H, W)`` for a ``Conv2d`` head,
        one class per pixel), an integer tensor, for ``"cross_entropy"``; values in [0, 1] of
        the head's output shape for ``"binary_cross_entropy"``. The step dict then adds
        ``accuracy``.
    accumulate_dtype : torch.dtype, default float64
        dtype in which the head statistics (Gram, cross products) are summed. float32 is faster
        on CPU for large heads; the solve is float64 either way.
    reducer : callable, optional
        Reduction of the batch statistics across processes. Default: inside an initialized
        ``torch.distributed`` group of several processes, one all-reduce
        (:func:`slimtrain.training.distributed.distributed_reducer`); otherwise none.
    debug_distributed : bool
        Check after every step that all ranks hold the same ``W`` (costs an all-gather).
    **slimtik_options
        Passed to :class:`~slimtrain.SlimTik` (``memory_depth``, ``initial_lambda``,
        ``lambda_rule``, ``lower``, ``upper``, ``reduction``, ...).

    References
    ----------
    E. Newman, J. Chung, M. Chung, L. Ruthotto, "slimTrain -- A Stochastic Approximation Method
    for Training Separable Deep Neural Networks", SIAM J. Sci. Comput. 44(4), 2022.
    """

    model: SeparableModel

    def __init__(
        self,
        model: SeparableModel,
        optimizer: torch.optim.Optimizer,
        loss: LossName = "squared",
        accumulate_dtype: torch.dtype = torch.float64,
        reducer: StatsReducer | None = None,
        debug_distributed: bool = False,
        **slimtik_options: Any,
    ) -> None:
        if not isinstance(model, SeparableModel):
            raise TypeError(
                f"SlimTrain needs a slimtrain.SeparableModel(features, head), found "
                f"{type(model).__name__}"
            )
        super().__init__(model, optimizer, loss)
        head_ids = {id(p) for p in model.head.parameters()}
        if head_ids & _optimizer_params(optimizer):
            raise ValueError(
                "the optimizer holds head parameters, which slimTik solves for; build it on "
                "model.feature_parameters() instead of model.parameters()"
            )
        if accumulate_dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"accumulate_dtype must be torch.float32 or torch.float64, found {accumulate_dtype}"
            )
        self.accumulate_dtype = accumulate_dtype
        self.adapter = head_adapter(model.head)
        self.debug_distributed = debug_distributed
        if reducer is None and distributed.is_distributed():
            reducer = distributed.distributed_reducer(debug=debug_distributed)
        self.solver = SlimTik(reducer=reducer, **slimtik_options)
        self._warned_statuses: set[SlimTikStatus] = set()
        self._seen_statuses: set[SlimTikStatus] = set()
        self._streak: tuple[SlimTikStatus | None, int] = (None, 0)
        self._ddp_checked = False
        #: Seconds of the last step's parts: head ``statistics``, slimTik ``solve`` (and the
        #: write-back of W), and the ``rest`` (validation, forward, backward, optimizer step).
        self.last_step_times: dict[str, float] = {}

    def step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """One slimTrain step; returns loss, lam, sum_lambda, gcv, rel_residual, status_ok, time
        (and ``accuracy`` for a classification loss).

        ``status_ok`` is 1.0 when the slimTik step needed no action and 0.0 otherwise (the
        degenerate case, ``Lambda`` at a bound, sGCV undefined). The first time a trainer sees
        each such status it logs it at INFO (a few degenerate steps at the start are expected
        when a batch has fewer rows than the head has unknowns); when the same status persists
        for ``STATUS_WARN_STEPS`` steps in a row it logs a warning with the status's advice,
        once per status. Other occurrences go to DEBUG.

        Raises
        ------
        ValueError, TypeError
            For a bad batch (non-finite values, shapes or dtypes that do not fit, an ``x`` the
            feature extractor rejects). The model (parameters and buffers such as BatchNorm
            running statistics), ``W`` and the solver are then exactly as before, as they are
            after any other exception raised before the optimizer step.
        """
        start = time.perf_counter()
        # Under torch.distributed every rank must reach each collective of the step (DDP's
        # forward, the statistics all-reduce), or none may: a rank that rejects its batch tells
        # the others by a flag all-reduce, before the forward for a bad batch and before the
        # statistics all-reduce for bad features or targets, and every rank raises.
        shared = distributed.is_distributed()
        if shared:
            self._check_distributed_setup()
        try:
            x, y = self._prepare(x, y)
        except (ValueError, TypeError) as error:
            if shared:
                distributed.agree_batch_ok(error, self.device)
            raise
        if shared:
            distributed.agree_batch_ok(None, self.device)
        agreed = False
        model, head, solver = self.model, self.model.head, self.solver
        # The forward updates buffers (BatchNorm running statistics): keep copies so that a
        # failed step (non-finite features, targets of the wrong shape, ...) changes nothing.
        buffers = [b.clone() for b in model.buffers()]
        solver_state, solver_info = solver.state, solver.last_info  # immutable records
        W = self.adapter.get_weight(head)  # a new tensor: the copy to restore on failure
        try:
            features = _forward(model.features, x, "features")
            # statistics() checks the features (finite, shape) before anything changes
            t_stats = time.perf_counter()
            detached = features.detach()
            targets = y  # the least-squares targets of the head update (losses.py)
            if self.loss.is_classification:
                logits = head(detached)  # the old W: one head forward, no autograd graph
                self.loss.check(logits, y)
                targets = self.loss.working_targets(logits, y)
            stats = self.adapter.statistics(head, detached, targets, dtype=self.accumulate_dtype)
            solver.check_statistics(W, stats)
            if shared:
                agreed = True
                distributed.agree_batch_ok(None, self.device)
            t_solve = time.perf_counter()
            W_new, info = solver.step_statistics(W, stats, checked=True)
            self.adapter.set_weight(head, W_new)
            t_rest = time.perf_counter()
            if self.debug_distributed:
                distributed.check_same_across_ranks(W_new, "the head weights W")
            self.optimizer.zero_grad(set_to_none=True)
            output = head(features)
            loss = self.loss.value(output, y)
            loss.backward()
        except BaseException as error:
            _restore_buffers(model, buffers)
            solver.state, solver.last_info = solver_state, solver_info
            self.adapter.set_weight(head, W)
            if shared and not agreed and isinstance(error, (ValueError, TypeError)):
                distributed.agree_batch_ok(error, self.device)
            raise
        self.optimizer.step()
        self._report_status(info.status, solver.n_steps)
        metrics = self._step_metrics(output, y)
        self.last_step_times = {  # host wall clock: on a GPU without sync, launch times
            "statistics": t_solve - t_stats,
            "solve": t_rest - t_solve,
            "rest": (t_stats - start) + (time.perf_counter() - t_rest),
        }
        return {
            **metrics,
            "loss": float(loss.detach()),
            "lam": info.lam,
            "sum_lambda": info.sum_lambda,
            "gcv": info.gcv,
            "rel_residual": info.rel_residual,
            "status_ok": 1.0 if info.status.is_ok else 0.0,
            "time": time.perf_counter() - start,
        }

    def _check_distributed_setup(self) -> None:
        """Inside a process group: the statistics must be all-reduced (else every rank would
        solve for its own shard and the ranks' W would drift apart), and theta's gradients
        should be averaged by DistributedDataParallel (warned once if not)."""
        if self.solver.reducer is None:
            raise ValueError(
                "torch.distributed is initialized but this SlimTrain has no statistics reducer: "
                "it was built before init_process_group. Build it after, or pass "
                "reducer=slimtrain.training.distributed.distributed_reducer()"
            )
        if not self._ddp_checked:
            self._ddp_checked = True
            from torch.nn.parallel import DistributedDataParallel

            if not isinstance(self.model.features, DistributedDataParallel):
                logger.warning(
                    "torch.distributed is initialized but the feature extractor is not wrapped "
                    "in DistributedDataParallel: theta's gradients are not averaged across "
                    "ranks. Use slimtrain.training.distributed.data_parallel(model)."
                )

    #: Consecutive steps with the same non-ok slimTik status after which it is a warning.
    STATUS_WARN_STEPS = 20

    def _report_status(self, status: SlimTikStatus, step: int) -> None:
        """Log a non-ok status: INFO the first time, a warning once it persists (rank 0)."""
        previous, count = self._streak
        self._streak = (status, count + 1 if status == previous else 1)
        if status.is_ok or not distributed.is_main_process():
            return
        run = self._streak[1]
        if run >= self.STATUS_WARN_STEPS and status not in self._warned_statuses:
            self._warned_statuses.add(status)
            logger.warning("slimTik steps %d-%d: %s", step - run + 1, step, status.value)
        elif status not in self._seen_statuses:
            self._seen_statuses.add(status)
            logger.info("slimTik step %d: %s", step, status.value)
        else:
            logger.debug("slimTik step %d: %s", step, status.value)

    @property
    def sum_lambda(self) -> float:
        """The solver's cumulative regularization."""
        return self.solver.sum_lambda

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and solver state (float64 Grams, ``Lambda``)."""
        state = super().state_dict()
        state["solver"] = self.solver.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore model, optimizer and solver."""
        if "solver" not in state_dict:
            raise ValueError("trainer state lacks 'solver'; was it saved by a GradientTrainer?")
        probe = SlimTik()
        probe.load_state_dict(state_dict["solver"])  # validate before touching anything
        super().load_state_dict(state_dict)
        self.solver.load_state_dict(state_dict["solver"])

    def __repr__(self) -> str:
        return (
            f"SlimTrain(head={type(self.model.head).__name__}, loss={self.loss.name!r}, "
            f"optimizer={type(self.optimizer).__name__}, solver={self.solver!r})"
        )


class GradientTrainer(Trainer):
    r"""Baseline: every parameter, the head included, trained end to end by ``optimizer``.

    .. math::

        (\theta, W) \leftarrow \operatorname{optimizer\ step}\bigl(\nabla_{\theta, W}\,
        \tfrac1N \textstyle\sum_i \tfrac12 \|f(x_i; \theta, W) - c_i\|^2\bigr)

    The head parameters of a :class:`SeparableModel` (which it sets to
    ``requires_grad=False`` for slimTrain) are made trainable again; every other parameter keeps
    its ``requires_grad``, so parameters frozen on purpose stay frozen. Under torch.distributed
    the gradients of parameters outside DistributedDataParallel (the head, which
    :func:`~slimtrain.training.distributed.data_parallel` leaves unwrapped) are averaged over
    the processes too, so every rank keeps the same parameters, and a batch rejected on one
    rank stops the step on all of them. Optimizers with
    train/eval modes (schedule-free AdamW) are switched by :meth:`train` / :meth:`eval`.

    Parameters
    ----------
    model : nn.Module
    optimizer : torch.optim.Optimizer
        Must hold every parameter that is trained: those with ``requires_grad=True`` and the
        head's of a :class:`SeparableModel`. ``model.parameters()`` always fits.
    loss : {"squared", "cross_entropy", "binary_cross_entropy"}, default "squared"
        As for :class:`SlimTrain` (:mod:`slimtrain.training.losses`); classes along dim 1 of
        the output (as ``nn.CrossEntropyLoss``), or the last dim for a
        :class:`SeparableModel` with an ``nn.Linear`` head.
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: LossName = "squared"
    ) -> None:
        super().__init__(model, optimizer, loss)
        head = list(model.head.parameters()) if isinstance(model, SeparableModel) else []
        head_ids = {id(p) for p in head}
        held = _optimizer_params(optimizer)
        missing = [
            name
            for name, p in model.named_parameters()
            if (p.requires_grad or id(p) in head_ids) and id(p) not in held
        ]
        if missing:
            raise ValueError(
                f"GradientTrainer trains every parameter that requires grad (and the head), but "
                f"the optimizer lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}; build "
                "it on model.parameters()"
            )
        for parameter in head:
            parameter.requires_grad_(True)

    def step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """One optimizer step on the batch loss; returns loss and time (and ``accuracy`` for a
        classification loss).

        Raises
        ------
        ValueError, TypeError
            For a bad batch, including an ``x`` the model's forward rejects; parameters and
            buffers are then as before (as after any exception raised before the optimizer
            step).
        """
        start = time.perf_counter()
        shared = distributed.is_distributed()
        try:
            x, y = self._prepare(x, y)
        except (ValueError, TypeError) as error:
            if shared:  # the other processes must not wait in DDP's all-reduce
                distributed.agree_batch_ok(error, self.device)
            raise
        if shared:
            distributed.agree_batch_ok(None, self.device)
        buffers = [b.clone() for b in self.model.buffers()]
        try:
            self.optimizer.zero_grad(set_to_none=True)
            output = _forward(self.model, x, "model")
            self.loss.check(output, y)
            loss = self.loss.value(output, y)
            loss.backward()
        except BaseException:
            _restore_buffers(self.model, buffers)
            raise
        if shared:  # DDP averages the wrapped parameters' gradients; average the others too
            distributed.average_unwrapped_gradients(self.model)
        self.optimizer.step()
        return {
            **self._step_metrics(output, y),
            "loss": float(loss.detach()),
            "time": time.perf_counter() - start,
        }

    def __repr__(self) -> str:
        return (
            f"GradientTrainer(model={type(self.model).__name__}, "
            f"optimizer={type(self.optimizer).__name__})"
        )

