"""Train the compared methods: the same network, data, seed and loop for every method, with a
checkpoint per method after every epoch that a resumed run checks against its identity."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from slimtrain.experiments.batches import make_loaders
from slimtrain.experiments.methods import make_trainer
from slimtrain.experiments.options import TrainingOptions, check_methods
from slimtrain.training import distributed as dist_utils
from slimtrain.training.callbacks import Callback, Checkpoint, ProgressBar
from slimtrain.training.checkpoint import atomic_save, load_checkpoint
from slimtrain.training.loop import History, fit
from slimtrain.training.losses import LossName
from slimtrain.training.trainers import Trainer

__all__ = ["MethodResult", "Setup", "data_fingerprint", "run_methods"]

logger = logging.getLogger(__name__)


@dataclass
class Setup:
    """An experiment's data and network.

    Attributes
    ----------
    name : str
    train, val : Dataset
        Yield ``(x, c)`` pairs.
    build : callable
        ``build() -> (features, head)``; called after seeding, so every method starts from the
        same weights.
    loss_scale : float
        Reported loss = ``loss_scale`` times the training loss ``mean 1/2 ||f(x) - c||^2``
        (2 gives the sum of squared errors per sample).
    loss_label : str
        What the reported loss is, for plots, tables and the summary.
    image_shape : tuple, optional
        ``(H, W)`` of image targets: reconstructions are plotted.
    loss : {"squared", "cross_entropy", "binary_cross_entropy"}
        The training loss of every method (:mod:`slimtrain.training.losses`); a classification
        loss adds accuracy columns to the report.
    info : dict
        Facts about the data for the summary (sizes, standardization, source).
    """

    name: str
    train: Dataset[Any]
    val: Dataset[Any]
    build: Callable[[], tuple[nn.Module, nn.Module]]
    loss_scale: float = 1.0
    loss_label: str = "mean 1/2 ||f(x) - c||^2 per sample"
    image_shape: tuple[int, int] | None = None
    loss: LossName = "squared"
    info: dict[str, Any] = field(default_factory=dict)


def data_fingerprint(setup: Setup) -> str:
    """SHA-256 (16 hex digits) of every training and validation tensor, in order: a resume on
    other data (another ``--data`` folder, ``--quick`` dropped) is told apart."""
    digest = hashlib.sha256()
    for dataset in (setup.train, setup.val):
        for x, c in DataLoader(dataset, batch_size=4096):
            for tensor in (x, c):
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class MethodResult:
    """One method's run."""

    history: History
    lambda_trace: list[float]
    trainer: Trainer
    seconds: float


class _LambdaTrace(Callback):
    """Collects Lambda after every step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_batch_end(self, state: Any, step_info: dict[str, float]) -> None:
        if "sum_lambda" in step_info:
            self.values.append(step_info["sum_lambda"])


class _EpochLine(Callback):
    """One line per epoch through ``echo`` (for logs without a terminal)."""

    def __init__(self, label: str, echo: Callable[[str], None], scale: float) -> None:
        self.label, self.echo, self.scale = label, echo, scale

    def on_epoch_end(self, state: Any, record: dict[str, float]) -> None:
        quality = (f"val accuracy {100 * record['val_accuracy']:.2f} %"
                   if "val_accuracy" in record else
                   f"val rel err {100 * record['val_rel_error']:.3g} %")
        self.echo(f"{self.label} epoch {int(record['epoch'])}/{state.epochs}: train loss "
                  f"{self.scale * record['train_loss']:.4g}, val loss "
                  f"{self.scale * record['val_loss']:.4g}, {quality}")


class _RunCheckpoint(Checkpoint):
    """:class:`Checkpoint` after every epoch, plus the Lambda trace and what the run was."""

    def __init__(self, path: Path, trace: _LambdaTrace, run: dict[str, Any]) -> None:
        super().__init__(path, every=1)
        self.trace = trace
        self.run = run

    def on_epoch_end(self, state: Any, record: dict[str, float]) -> None:
        if int(record["epoch"]) > 0:
            payload = state.checkpoint()
            payload["lambda_trace"] = torch.tensor(self.trace.values, dtype=torch.float64)
            payload["run"] = self.run
            atomic_save(payload, self.path)


def _run_identity(method: str, options: TrainingOptions, identity: dict[str, Any]
                  ) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: the method, the number of processes,
    the training options but ``epochs`` and ``device`` (tensors load onto the model's device),
    and the caller's ``identity`` (experiment, data fingerprint, ...)."""
    settings = {k: v for k, v in asdict(options).items() if k not in ("epochs", "device")}
    return {"method": method, "world_size": dist_utils.world_size(),
            "config": _flat({**settings, **identity})}


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def _saved_lambda_trace(path: Path, run: dict[str, Any]) -> list[float]:
    """The Lambda trace of a checkpoint, after checking that it is one of this run."""
    saved = load_checkpoint(path)
    found = saved.get("run")
    if found is None:
        raise ValueError(
            f"checkpoint {path} was not written by run_methods (it lacks the run's identity); "
            "resume it with slimtrain.fit(..., resume=path) instead"
        )
    if found["method"] != run["method"] or found["world_size"] != run["world_size"]:
        raise ValueError(
            f"checkpoint {path} holds method {found['method']!r} on {found['world_size']} "
            f"process(es); this run is {run['method']!r} on {run['world_size']}: resume with "
            "the same method and number of processes"
        )
    keys = sorted(set(found["config"]) | set(run["config"]))
    differ = [k for k in keys if found["config"].get(k) != run["config"].get(k)]
    if differ:
        listed = ", ".join(f"{k}={found['config'].get(k)!r} (now {run['config'].get(k)!r})"
                           for k in differ)
        raise ValueError(f"checkpoint {path} was written with {listed}; resume with the same "
                         "data and settings (only --epochs may change)")
    trace = saved.get("lambda_trace")
    return [] if trace is None else [float(v) for v in trace]


def _resume_path(path: Path, resume: bool, device: torch.device) -> Path | None:
    """``path`` if a run should resume from it; the same answer on every rank."""
    if not resume:
        return None
    exists = path.is_file()
    if dist_utils.is_distributed():
        # nccl reduces CUDA tensors only; the trainer's device is the right one either way
        found = dist_utils.all_reduce_sums([float(exists)], device)[0]
        world = dist_utils.world_size()
        if 0 < found < world:
            raise ValueError(
                f"checkpoint {path} exists on {int(found)} of {world} processes; resuming needs "
                "a checkpoint_dir that every process sees (a shared file system)"
            )
    if not exists:
        logger.info("no checkpoint at %s; starting from scratch", path)
        return None
    return path


def run_methods(
    setup: Setup,
    methods: Sequence[str],
    options: TrainingOptions,
    progress: bool = False,
    on_method_end: Callable[[str, MethodResult], None] | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    identity: dict[str, Any] | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, MethodResult]:
    """Train every method from the same initial weights and batch order; return the results.

    Under torch.distributed every rank trains on its slice of the same global batches
    (:class:`~slimtrain.experiments.batches.GlobalBatchSampler`), so the run matches the
    single-process one to float rounding; only rank 0 writes (progress, checkpoints).

    Parameters
    ----------
    setup : Setup
    methods : sequence of str
        A non-empty subset of :data:`~slimtrain.experiments.options.METHODS`.
    options : TrainingOptions
    progress : bool
        A progress bar per method (rank 0 only).
    on_method_end : callable, optional
        ``on_method_end(method, result)`` after each method.
    checkpoint_dir : path-like, optional
        Save ``checkpoint_dir/<method>.pt`` after every epoch (atomic write, rank 0 only):
        model, optimizer and solver state, history, RNG states, the per-step Lambda trace and
        the run's identity.
    resume : bool
        Continue each method whose checkpoint exists up to ``options.epochs``, exactly as an
        uninterrupted run; methods without a file start from scratch. The checkpoint must
        agree on the method, the number of processes, every option but ``epochs`` and
        ``device``, and ``identity``; otherwise ``ValueError`` says what differs. Every
        process reads the file, so ``checkpoint_dir`` must be on a file system they all see.
    identity : dict, optional
        More that defines the run (the experiment, its data fingerprint, ``quick``).
    echo : callable, optional
        Called with one line per epoch and method (rank 0 only).
    """
    methods = check_methods(tuple(methods))
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, found {type(resume).__name__}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the folder of the checkpoints")
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    results: dict[str, MethodResult] = {}
    for method in methods:
        torch.manual_seed(options.seed)
        features, head = setup.build()
        trainer = make_trainer(method, features, head, options, loss=setup.loss)
        train, val = make_loaders(setup.train, setup.val, options.batch_size, options.seed)
        trace = _LambdaTrace()
        callbacks: list[Any] = [trace]
        resume_from: Path | None = None
        if folder is not None:
            path = folder / f"{method}.pt"
            run = _run_identity(method, options, identity or {})
            resume_from = _resume_path(path, resume, trainer.device)
            if resume_from is not None:
                trace.values = _saved_lambda_trace(resume_from, run)
            callbacks.append(_RunCheckpoint(path, trace, run))
        if progress:
            callbacks.append(ProgressBar(desc=f"{setup.name}/{method}"))
        if echo is not None:
            callbacks.append(_EpochLine(f"{setup.name}/{method}", echo, setup.loss_scale))
        start = time.perf_counter()
        history = fit(trainer, train, val, epochs=options.epochs, callbacks=callbacks,
                      resume=resume_from)
        results[method] = MethodResult(history, trace.values, trainer, time.perf_counter() - start)
        logger.info("%s/%s: best val loss %.4g", setup.name, method, history.best_val_loss)
        if on_method_end is not None:
            on_method_end(method, results[method])
    return results
