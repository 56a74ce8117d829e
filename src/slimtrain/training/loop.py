"""``fit``: the one training loop. Progress, logs and checkpoints are callbacks."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from slimtrain._validation import check_int
from slimtrain.training.checkpoint import (
    capture_rng_state,
    check_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from slimtrain.training.distributed import all_reduce_sums, is_main_process
from slimtrain.training.trainers import SlimTrain, Trainer

__all__ = ["History", "fit", "evaluate", "evaluate_metrics"]

logger = logging.getLogger(__name__)

Batches = Iterable[tuple[Tensor, Tensor]]


@dataclass
class History:
    """Per-epoch records of a run; ``records[0]`` describes the model before training.

    Each record holds ``epoch``, ``train_loss``, ``train_rel_error``, ``val_loss``,
    ``val_rel_error`` (``||F - C||_F / ||C||_F`` of the whole set; NaN without a validation
    loader), ``sum_lambda``, ``lam`` (the last step's), ``epoch_time`` (seconds of training in
    that epoch) and ``steps``. With a classification loss (``loss="cross_entropy"`` or
    ``"binary_cross_entropy"``) the relative errors are NaN and the records end with
    ``train_accuracy`` and ``val_accuracy``.
    """

    records: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf

    def column(self, key: str) -> list[float]:
        """One metric over epochs."""
        return [record[key] for record in self.records]

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (JSON and checkpoints)."""
        return {
            "records": [dict(r) for r in self.records],
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
        }

    @classmethod
    def from_dict(cls, data: Any) -> History:
        """Inverse of :meth:`to_dict`, validated.

        Raises
        ------
        ValueError
            If ``data`` is not a dict with ``records`` (a list of dicts of real numbers),
            ``best_epoch`` (an int) and ``best_val_loss`` (a real number), naming what was found.
        """
        required = {"records", "best_epoch", "best_val_loss"}
        if not isinstance(data, dict) or not required <= set(data):
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"history holds {found}; expected the keys {sorted(required)}")
        records = data["records"]
        if not isinstance(records, (list, tuple)):
            raise ValueError(
                f"history 'records' is a {type(records).__name__}; expected a list of dicts"
            )
        parsed: list[dict[str, float]] = []
        for i, record in enumerate(records):
            if not isinstance(record, dict) or not all(
                isinstance(k, str) and _is_real(v) for k, v in record.items()
            ):
                raise ValueError(
                    f"history record {i} is {record!r}; expected a dict of metric names to "
                    "real numbers"
                )
            parsed.append({k: float(v) for k, v in record.items()})
        best_epoch, best_val_loss = data["best_epoch"], data["best_val_loss"]
        try:
            check_int("history 'best_epoch'", best_epoch)
        except TypeError as error:
            raise ValueError(str(error)) from None
        if not _is_real(best_val_loss):
            raise ValueError(
                f"history 'best_val_loss' must be a real number, found {best_val_loss!r}"
            )
        return cls(parsed, best_epoch, float(best_val_loss))


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class FitState:
    """What callbacks see: the trainer, the history, and where the loop is."""

    trainer: Trainer
    history: History
    epochs: int
    epoch: int = 0
    batches_per_epoch: int | None = None
    best_state: dict[str, Any] | None = None
    generators: list[torch.Generator] = field(default_factory=list)

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue exactly from the end of the current epoch."""
        from slimtrain.training.checkpoint import CHECKPOINT_VERSION

        return {
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "trainer": self.trainer.state_dict(),
            "history": self.history.to_dict(),
            "best_state": self.best_state,
            "rng": capture_rng_state(self.generators),
        }


def evaluate(trainer: Trainer, batches: Batches) -> tuple[float, float]:
    """Mean loss and relative error of the whole set over ``batches``, current parameters.

    The relative error is NaN for a classification loss; see :func:`evaluate_metrics`.
    """
    means = evaluate_metrics(trainer, batches)
    return means["loss"], means.get("rel_error", math.nan)


def evaluate_metrics(trainer: Trainer, batches: Batches) -> dict[str, float]:
    r"""The loss (mean over samples) and the trainer's metrics over the whole of ``batches``.

    Keys: ``loss`` and ``rel_error`` (squared loss: :math:`\|F - C\|_F / \|C\|_F` over all
    samples, not a mean of per-sample ratios, which explodes near zero targets) or
    ``accuracy`` (classification losses). Under ``torch.distributed`` the sums are reduced
    over the ranks.
    """
    trainer.eval()
    keys = ("loss", *trainer.loss.sum_names, "n")
    totals = [0.0] * len(keys)
    for x, y in batches:
        sums = trainer.evaluate_metrics(x, y)
        totals = [total + sums[key] for total, key in zip(totals, keys, strict=True)]
    reduced = dict(zip(keys, all_reduce_sums(totals, trainer.device), strict=True))
    if reduced["n"] == 0:
        raise ValueError("found an empty data loader; expected at least one batch to evaluate")
    return trainer.loss.metric_means(reduced)


def _loader_generators(loader: Batches) -> list[torch.Generator]:
    """Generators that drive a DataLoader's shuffling (saved in checkpoints)."""
    gens: list[torch.Generator] = []
    if isinstance(loader, DataLoader):
        for owner in (loader, loader.sampler, getattr(loader, "batch_sampler", None)):
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator) and all(gen is not g for g in gens):
                gens.append(gen)
    return gens


def fit(
    trainer: Trainer,
    train_loader: Batches,
    val_loader: Batches | None = None,
    epochs: int = 10,
    callbacks: Sequence[Any] = (),
    resume: str | os.PathLike[str] | None = None,
    eval_train: bool = True,
) -> History:
    """Train for ``epochs`` epochs, evaluating before training and after every epoch.

    Parameters
    ----------
    trainer : SlimTrain or GradientTrainer
        Anything with ``step(x, y)``, ``evaluate_metrics``, ``loss``, ``train``/``eval`` and
        ``state_dict``/``load_state_dict``. With a classification loss the records add
        ``train_accuracy`` and ``val_accuracy`` (:class:`History`).
    train_loader, val_loader : iterable of (x, y)
        Usually ``torch.utils.data.DataLoader``; the training loader is re-iterated each epoch.
    epochs : int
        Total epochs (a resumed run continues up to this number).
    callbacks : sequence
        Objects with any of the hooks ``on_fit_start(state)``, ``on_epoch_start(state)``,
        ``on_batch_end(state, step_info)``, ``on_epoch_end(state, record)``,
        ``on_fit_end(state)`` (:mod:`slimtrain.training.callbacks`). Under
        ``torch.distributed`` only rank 0 runs them.
    resume : path, optional
        A checkpoint of this run: model, optimizer, solver, history and RNG states are
        restored and training continues after its epoch, exactly as if never interrupted.
    eval_train : bool
        Evaluate the loss on the whole training set after each epoch (otherwise the running
        mean of the step losses is recorded as ``train_loss``).

    Returns
    -------
    History
        Also the best-validation model state in ``history``'s companion
        ``trainer.best_state_dict`` (set on the trainer).
    """
    check_int("epochs", epochs, minimum=0)
    generators = _loader_generators(train_loader)
    history = History()
    state = FitState(trainer, history, epochs, generators=generators)
    try:
        state.batches_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        state.batches_per_epoch = None

    if resume is not None:
        checkpoint = load_checkpoint(resume)
        restored = _check_resumable(checkpoint, resume, epochs, generators)
        # Everything that can be checked without the trainer is valid; the trainer's own load
        # validates into copies. Set the RNGs first so that a failed trainer load can undo them.
        rng_before = capture_rng_state(generators)
        restore_rng_state(checkpoint["rng"], generators)
        try:
            trainer.load_state_dict(checkpoint["trainer"])
        except BaseException:
            restore_rng_state(rng_before, generators)
            raise
        history.records, history.best_epoch = restored.records, restored.best_epoch
        history.best_val_loss = restored.best_val_loss
        state.best_state = checkpoint.get("best_state")
        state.epoch = int(checkpoint["epoch"])
        logger.info("resumed from %s at epoch %d", resume, state.epoch)

    _call(callbacks, "on_fit_start", state)
    if state.epoch == 0 and not history.records:
        record = _epoch_record(trainer, train_loader, val_loader, 0, [], 0.0)
        _track_best(state, record)
        history.records.append(record)
        _call(callbacks, "on_epoch_end", state, record)

    while state.epoch < epochs:
        state.epoch += 1
        sampler = getattr(train_loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(state.epoch)  # type: ignore[union-attr]  # DistributedSampler
        _call(callbacks, "on_epoch_start", state)
        trainer.train()
        steps: list[tuple[float, int]] = []
        correct = 0.0  # sum over samples of the step accuracies (classification losses)
        last: dict[str, float] = {}
        elapsed = 0.0
        for x, y in train_loader:
            start = time.perf_counter()
            last = trainer.step(x, y)
            elapsed += time.perf_counter() - start
            steps.append((last["loss"], int(x.shape[0])))
            correct += last.get("accuracy", math.nan) * int(x.shape[0])
            _call(callbacks, "on_batch_end", state, last)
        if not steps:
            raise ValueError("found an empty training loader; expected at least one batch")
        record = _epoch_record(
            trainer, train_loader if eval_train else None, val_loader, state.epoch, steps, elapsed,
            correct,
        )
        if "lam" in last:
            record["lam"] = last["lam"]
        _track_best(state, record)
        history.records.append(record)
        _call(callbacks, "on_epoch_end", state, record)
    trainer.best_state_dict = state.best_state
    _call(callbacks, "on_fit_end", state)
    return history


def _check_resumable(
    checkpoint: dict[str, Any],
    path: str | os.PathLike[str],
    epochs: int,
    generators: list[torch.Generator],
) -> History:
    """Validate what :func:`fit` restores besides the trainer; return the parsed history.

    Nothing is changed, so a checkpoint that does not fit this run leaves the trainer and
    every random state as they were.
    """
    epoch = checkpoint["epoch"]
    try:
        check_int("epoch", epoch, minimum=0)
    except (TypeError, ValueError):
        raise ValueError(f"checkpoint {path} has epoch {epoch!r}; expected a non-negative int"
                         ) from None
    if epoch > epochs:
        raise ValueError(f"checkpoint {path} is at epoch {epoch}, beyond epochs={epochs}")
    try:
        restored = History.from_dict(checkpoint["history"])
    except ValueError as error:
        raise ValueError(f"checkpoint {path} has a malformed history: {error}") from error
    last = restored.records[-1].get("epoch") if restored.records else None
    if last != epoch:
        raise ValueError(
            f"checkpoint {path} is at epoch {epoch} but its history ends at epoch {last}; "
            "expected a history whose last record is the checkpoint's epoch"
        )
    best_state = checkpoint.get("best_state")
    if best_state is not None and not isinstance(best_state, dict):
        raise ValueError(
            f"checkpoint {path} has best_state of type {type(best_state).__name__}; "
            "expected a model state dict or None"
        )
    try:
        check_rng_state(checkpoint["rng"], generators)
    except ValueError as error:
        raise ValueError(f"checkpoint {path} does not fit this run: {error}") from error
    return restored


def _epoch_record(
    trainer: Trainer,
    train_loader: Batches | None,
    val_loader: Batches | None,
    epoch: int,
    steps: list[tuple[float, int]],
    elapsed: float,
    correct: float = math.nan,
) -> dict[str, float]:
    nan = math.nan
    if train_loader is not None:
        train = evaluate_metrics(trainer, train_loader)
    else:  # the running means of the steps
        loss_sum, correct, total = all_reduce_sums(
            [sum(loss * n for loss, n in steps), correct, float(sum(n for _, n in steps))],
            trainer.device,
        )
        train = {"loss": loss_sum / total, "accuracy": correct / total if total else nan}
    val = evaluate_metrics(trainer, val_loader) if val_loader is not None else {}
    record = {
        "epoch": float(epoch),
        "train_loss": train["loss"],
        "train_rel_error": train.get("rel_error", nan),
        "val_loss": val.get("loss", nan),
        "val_rel_error": val.get("rel_error", nan),
        "sum_lambda": trainer.sum_lambda if isinstance(trainer, SlimTrain) else nan,
        "lam": nan,
        "epoch_time": elapsed,
        "steps": float(len(steps)),
    }
    if trainer.loss.is_classification:
        record["train_accuracy"] = train.get("accuracy", nan)
        record["val_accuracy"] = val.get("accuracy", nan)
    return record


def _track_best(state: FitState, record: dict[str, float]) -> None:
    score = record["val_loss"] if not math.isnan(record["val_loss"]) else record["train_loss"]
    if score < state.history.best_val_loss:
        state.history.best_val_loss = score
        state.history.best_epoch = int(record["epoch"])
        state.best_state = copy.deepcopy(
            {k: v.detach().cpu() for k, v in state.trainer.model.state_dict().items()}
        )


def _call(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    """Run a hook of every callback; under torch.distributed only rank 0 runs callbacks."""
    if not is_main_process():
        return
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)
