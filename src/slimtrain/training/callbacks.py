"""Callbacks for :func:`slimtrain.fit`: progress bar, CSV/JSON writers, checkpoints,
TensorBoard.

Each callback implements any of ``on_fit_start(state)``, ``on_epoch_start(state)``,
``on_batch_end(state, step_info)``, ``on_epoch_end(state, record)`` and ``on_fit_end(state)``,
where ``state`` is :class:`slimtrain.training.loop.FitState`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from slimtrain._io import write_csv, write_json
from slimtrain._validation import check_int
from slimtrain.training.checkpoint import atomic_save

__all__ = ["Callback", "ProgressBar", "CSVLogger", "JSONLogger", "Checkpoint", "TensorBoardLogger"]

logger = logging.getLogger(__name__)


class Callback:
    """Base class with no-op hooks (subclassing is optional: duck typing works too)."""

    def on_fit_start(self, state: Any) -> None:
        """Before the first evaluation."""

    def on_epoch_start(self, state: Any) -> None:
        """Before the first batch of an epoch."""

    def on_batch_end(self, state: Any, step_info: dict[str, float]) -> None:
        """After each training step."""

    def on_epoch_end(self, state: Any, record: dict[str, float]) -> None:
        """After an epoch's evaluation (also once for epoch 0, before training)."""

    def on_fit_end(self, state: Any) -> None:
        """After the last epoch."""


class ProgressBar(Callback):
    """A tqdm bar over each epoch's batches with the loss and ``Lambda``.

    Parameters
    ----------
    desc : str
        Prefix of the bar (e.g. the method name).
    disable : bool or None
        ``None`` (default) disables the bar when the output is not a terminal.
    position : int
        tqdm row, for several bars at once.
    """

    def __init__(self, desc: str = "train", disable: bool | None = None, position: int = 0):
        self.desc = desc
        self.disable = disable
        self.position = position
        self._bar: Any = None

    def on_epoch_start(self, state: Any) -> None:
        self._bar = tqdm(
            total=state.batches_per_epoch,
            desc=f"{self.desc} {state.epoch}/{state.epochs}",
            disable=self.disable,
            leave=False,
            position=self.position,
            dynamic_ncols=True,
        )

    def on_batch_end(self, state: Any, step_info: dict[str, float]) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        postfix = {"loss": f"{step_info['loss']:.4g}"}
        if "sum_lambda" in step_info:
            postfix["Lambda"] = f"{step_info['sum_lambda']:.3g}"
        self._bar.set_postfix(postfix, refresh=False)

    def on_epoch_end(self, state: Any, record: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if not self.disable:
            val = record["val_loss"]
            accuracy = record.get("val_accuracy", math.nan)  # classification losses only
            logger.info(
                "%s epoch %d: train_loss %.4g%s%s",
                self.desc,
                int(record["epoch"]),
                record["train_loss"],
                "" if math.isnan(val) else f", val_loss {val:.4g}",
                "" if math.isnan(accuracy) else f", val_accuracy {accuracy:.4f}",
            )


class CSVLogger(Callback):
    """Write one row per epoch to ``path`` (rewritten whole each epoch, so resume is exact).

    Parameters
    ----------
    path : path-like
    extra : dict, optional
        Constant columns put first in every row (e.g. ``{"method": "adam"}``).
    """

    def __init__(self, path: str | os.PathLike[str], extra: dict[str, Any] | None = None):
        self.path = Path(path)
        self.extra = dict(extra or {})

    def on_epoch_end(self, state: Any, record: dict[str, float]) -> None:
        rows = [{**self.extra, **r} for r in state.history.records]
        write_csv(self.path, rows)


class JSONLogger(Callback):
    """Write the history (records, best epoch and loss) as JSON after every epoch."""

    def __init__(self, path: str | os.PathLike[str], extra: dict[str, Any] | None = None):
        self.path = Path(path)
        self.extra = dict(extra or {})

    def on_epoch_end(self, state: Any, record: dict[str, float]) -> None:
        payload = {**self.extra, **state.history.to_dict()}
        write_json(self.path, payload)


class Checkpoint(Callback):
    """Save everything needed to resume (atomic write) every ``every`` epochs and at the end.

    The file holds model, optimizer and solver state, the history, the best-validation model
    state, the epoch and the RNG states; it loads with ``torch.load(weights_only=True)``. Pass
    its path to ``fit(..., resume=path)`` to continue.
    """

    def __init__(self, path: str | os.PathLike[str], every: int = 1):
        check_int("every", every, minimum=1)
        self.path = Path(path)
        self.every = every

    def on_epoch_end(self, state: Any, record: dict[str, float]) -> None:
        epoch = int(record["epoch"])
        if epoch > 0 and (epoch % self.every == 0 or epoch == state.epochs):
            atomic_save(state.checkpoint(), self.path)


class TensorBoardLogger(Callback):
    """Scalars per epoch (and the step loss) to TensorBoard; needs ``pip install tensorboard``.

    The per-step loss is logged at the global step, the number of training steps taken so far
    in the run. It is counted from the history (the ``steps`` of every epoch's record), so a run
    resumed from a checkpoint continues the count where the interrupted run stopped instead of
    restarting at 0. Epoch scalars are logged at the epoch number.
    """

    def __init__(self, log_dir: str | os.PathLike[str], tag: str = "train"):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package: "
                "pip install 'slimtrain[tensorboard]'"
            ) from error
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.tag = tag
        self._global_step = 0

    def on_epoch_start(self, state: Any) -> None:
        # Steps of the epochs already recorded (all of them on resume); epoch 0 has none.
        self._global_step = int(sum(r.get("steps", 0.0) for r in state.history.records))

    def on_batch_end(self, state: Any, step_info: dict[str, float]) -> None:
        self._global_step += 1
        self.writer.add_scalar(f"{self.tag}/step_loss", step_info["loss"], self._global_step)

    def on_epoch_end(self, state: Any, record: dict[str, float]) -> None:
        for key, value in record.items():
            if key != "epoch" and not math.isnan(value):
                self.writer.add_scalar(f"{self.tag}/{key}", value, int(record["epoch"]))
        self.writer.flush()

    def on_fit_end(self, state: Any) -> None:
        self.writer.close()
