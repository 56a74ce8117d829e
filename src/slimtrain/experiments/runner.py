"""Run one experiment: the same network, data, seed and loop for every compared method, and the
report folder (``metrics.csv``, ``summary.json``, PNG plots)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from slimtrain import plots
from slimtrain.training import distributed as dist_utils
from slimtrain.training.callbacks import Callback, Checkpoint, ProgressBar
from slimtrain.training.checkpoint import atomic_save, load_checkpoint
from slimtrain.training.loop import History, fit
from slimtrain.training.model import SeparableModel
from slimtrain.training.trainers import GradientTrainer, SlimTrain, Trainer

__all__ = [
    "METHODS",
    "RunConfig",
    "Setup",
    "make_trainer",
    "run_methods",
    "write_report",
    "default_out_dir",
]

logger = logging.getLogger(__name__)

#: Methods a run can compare. ``slimtrain-prodigy`` has no learning rate anywhere.
METHODS = ("slimtrain", "slimtrain-prodigy", "adam", "prodigy", "schedulefree")


@dataclass(frozen=True)
class RunConfig:
    """Settings shared by every method of one run (validated).

    ``lr`` is the learning rate of Adam (on theta for slimTrain, on everything for the Adam
    baseline); Prodigy always uses its recommended ``lr=1.0`` and schedule-free AdamW its
    package default. ``alpha`` is weight decay on the optimizer's parameters.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    alpha: float = 0.0
    memory_depth: int = 5
    initial_lambda: float = 1e-10
    lower: float = 1e-7
    upper: float = 1e3
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "memory_depth", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, found {type(value).__name__}")
        if self.epochs < 0 or self.batch_size < 1 or self.memory_depth < 0:
            raise ValueError(
                f"expected epochs >= 0, batch_size >= 1, memory_depth >= 0; found "
                f"{self.epochs}, {self.batch_size}, {self.memory_depth}"
            )
        for name in ("lr", "alpha", "initial_lambda"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, found {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0, found 0")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:i]', found {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} was asked for but CUDA is not available")


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
        What the reported loss is, for plots and the summary.
    image_shape : tuple, optional
        ``(H, W)`` of image targets: reconstructions are plotted.
    info : dict
        Facts about the data for the summary (sizes, standardization, source).
    """

    name: str
    train: Dataset[Any]
    val: Dataset[Any]
    build: Callable[[], tuple[nn.Module, nn.Module]]
    loss_scale: float = 1.0
    loss_label: str = "loss: mean 1/2 ||f(x) - c||^2"
    image_shape: tuple[int, int] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _rank_device(device: str) -> str:
    """The device this process trains on: ``device``, except CUDA under torch.distributed.

    Under an initialized process group of several processes each rank owns one GPU: a CUDA
    ``device`` (``"cuda"`` or ``"cuda:i"``, whatever its index) becomes ``cuda:{LOCAL_RANK}``,
    the GPU that :func:`slimtrain.training.distributed.init_from_env` made current (without
    ``LOCAL_RANK`` in the environment, the current CUDA device). CPU and single-process runs
    keep ``device`` as given.
    """
    if not (device.startswith("cuda") and dist_utils.is_distributed()):
        return device
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None:
        try:
            index = int(local_rank)
        except ValueError:
            raise ValueError(
                f"LOCAL_RANK must be a non-negative int (set by torchrun), found {local_rank!r}"
            ) from None
        if index < 0:
            raise ValueError(f"LOCAL_RANK must be a non-negative int, found {index}")
    else:
        index = torch.cuda.current_device()
    return f"cuda:{index}"


def make_trainer(method: str, features: nn.Module, head: nn.Module, config: RunConfig) -> Trainer:
    """The trainer of one method on a freshly built network.

    The model goes to ``config.device``; under torch.distributed with CUDA each rank uses its
    own GPU, ``cuda:{LOCAL_RANK}`` (:func:`_rank_device`), for the model and DDP's
    ``device_ids``. Batches follow the model (``Trainer._prepare`` moves them to its device).
    """
    import prodigyopt
    import schedulefree

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    device = _rank_device(config.device)
    model = SeparableModel(features, head).to(device)
    if dist_utils.is_distributed():
        kwargs: dict[str, Any] = {}
        if device.startswith("cuda"):
            kwargs["device_ids"] = [torch.device(device).index]
        dist_utils.data_parallel(model, **kwargs)
    decay = config.alpha
    if method.startswith("slimtrain"):
        theta = list(model.feature_parameters())
        opt: torch.optim.Optimizer
        if method == "slimtrain":
            opt = torch.optim.Adam(theta, lr=config.lr, weight_decay=decay)
        else:
            opt = prodigyopt.Prodigy(theta, lr=1.0, weight_decay=decay)
        return SlimTrain(
            model,
            opt,
            memory_depth=config.memory_depth,
            initial_lambda=config.initial_lambda,
            lower=config.lower,
            upper=config.upper,
        )
    params = list(model.parameters())
    if method == "adam":
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=decay)
    elif method == "prodigy":
        opt = prodigyopt.Prodigy(params, lr=1.0, weight_decay=decay)
    else:
        opt = schedulefree.AdamWScheduleFree(params, weight_decay=decay)
    return GradientTrainer(model, opt)


class _LambdaTrace(Callback):
    """Collects Lambda after every step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_batch_end(self, state: Any, step_info: dict[str, float]) -> None:
        if "sum_lambda" in step_info:
            self.values.append(step_info["sum_lambda"])


def _loaders(setup: Setup, config: RunConfig) -> tuple[DataLoader[Any], DataLoader[Any]]:
    world = dist_utils.world_size()
    if config.batch_size % world:
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by the {world} processes"
        )
    local = config.batch_size // world
    gen = torch.Generator().manual_seed(config.seed)
    if world > 1:
        train_sampler: DistributedSampler[Any] = DistributedSampler(
            setup.train, shuffle=True, seed=config.seed
        )
        val_sampler: DistributedSampler[Any] = DistributedSampler(setup.val, shuffle=False)
        train = DataLoader(setup.train, batch_size=local, sampler=train_sampler)
        val = DataLoader(setup.val, batch_size=256, sampler=val_sampler)
    else:
        train = DataLoader(setup.train, batch_size=local, shuffle=True, generator=gen)
        val = DataLoader(setup.val, batch_size=256)
    return train, val


@dataclass
class MethodResult:
    """One method's run."""

    history: History
    lambda_trace: list[float]
    trainer: Trainer
    seconds: float


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


def _run_identity(method: str, config: RunConfig) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: the method, the number of processes and
    the settings but ``epochs`` and ``device`` (tensors load onto the model's device)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("epochs", "device")}
    return {"method": method, "world_size": dist_utils.world_size(), "config": settings}


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
    differ = {
        k: (found["config"].get(k), v) for k, v in run["config"].items()
        if found["config"].get(k) != v
    }
    if differ:
        listed = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in differ.items())
        raise ValueError(
            f"checkpoint {path} was written with {listed}; resume with the same settings "
            "(only epochs may change)"
        )
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
    config: RunConfig,
    progress: bool = True,
    on_method_end: Callable[[str, MethodResult], None] | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> dict[str, MethodResult]:
    """Train every method from the same initial weights and batch order; return the results.

    Under torch.distributed every rank trains and only rank 0 writes (progress, checkpoints:
    :func:`slimtrain.fit` runs callbacks on rank 0 only).

    Parameters
    ----------
    setup : Setup
    methods : sequence of str
        A non-empty subset of :data:`METHODS`.
    config : RunConfig
    progress : bool
        A progress bar per method (rank 0 only).
    on_method_end : callable, optional
        ``on_method_end(method, result)`` after each method.
    checkpoint_dir : path-like, optional
        Save ``checkpoint_dir/<method>.pt`` after every epoch through
        :class:`~slimtrain.training.callbacks.Checkpoint` (atomic write, rank 0 only): model,
        optimizer and solver state, history, RNG states, plus the per-step Lambda trace and
        the run's method, settings and number of processes.
    resume : bool
        Continue each method whose ``checkpoint_dir/<method>.pt`` exists up to
        ``config.epochs`` (``fit(..., resume=path)``), exactly as an uninterrupted run;
        methods without a file start from scratch. Needs ``checkpoint_dir`` and the same
        setup, method, settings (all of ``config`` but ``epochs`` and ``device``) and number
        of processes as the run that wrote the file; otherwise ``ValueError`` says what
        differs. Checkpoints are not portable across world sizes: under torch.distributed the
        model's state_dict keys are ``features.module.*`` (DDP) and the data shards depend on
        the world size, so a single-process checkpoint does not load into a distributed run or
        the reverse. Every process reads the file, so with several processes
        ``checkpoint_dir`` must be on a file system they all see. ``seconds`` of a resumed
        method counts only the resumed part.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}; expected a non-empty subset of {METHODS}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, found {type(resume).__name__}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir, the folder of the checkpoints")
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    results: dict[str, MethodResult] = {}
    for method in methods:
        torch.manual_seed(config.seed)
        features, head = setup.build()
        trainer = make_trainer(method, features, head, config)
        train, val = _loaders(setup, config)
        trace = _LambdaTrace()
        callbacks: list[Any] = [trace]
        resume_from: Path | None = None
        if folder is not None:
            path = folder / f"{method}.pt"
            run = _run_identity(method, config)
            resume_from = _resume_path(path, resume, trainer.device)
            if resume_from is not None:
                trace.values = _saved_lambda_trace(resume_from, run)
            callbacks.append(_RunCheckpoint(path, trace, run))
        if progress:
            callbacks.append(ProgressBar(desc=f"{setup.name}/{method}"))
        start = time.perf_counter()
        history = fit(trainer, train, val, epochs=config.epochs, callbacks=callbacks,
                      resume=resume_from)
        results[method] = MethodResult(history, trace.values, trainer, time.perf_counter() - start)
        logger.info("%s/%s: best val loss %.4g", setup.name, method, history.best_val_loss)
        if on_method_end is not None:
            on_method_end(method, results[method])
    return results


def default_out_dir(experiment: str) -> Path:
    """``runs/<experiment>-<timestamp>``."""
    return Path("runs") / f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"


def method_summary(result: MethodResult, scale: float) -> dict[str, Any]:
    """The per-method block of ``summary.json`` (lists indexed by epoch, 0 = before training)."""
    h = result.history
    return {
        "val_loss": [scale * v for v in h.column("val_loss")],
        "train_loss": [scale * v for v in h.column("train_loss")],
        "val_rel_error": h.column("val_rel_error"),
        "sum_lambda": h.column("sum_lambda"),
        "epoch_time": h.column("epoch_time"),
        "best_val_loss": scale * h.best_val_loss,
        "best_epoch": h.best_epoch,
        "seconds": result.seconds,
    }


def write_report(
    setup: Setup,
    config: RunConfig,
    results: dict[str, MethodResult],
    out_dir: str | Path,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.csv``, ``summary.json`` and the plots; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale = setup.loss_scale
    fields = ["method", "epoch", "train_loss", "val_loss", "val_rel_error", "train_rel_error",
              "sum_lambda", "lam", "epoch_time"]
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for method, result in results.items():
            for r in result.history.records:
                row = {k: r.get(k, math.nan) for k in fields[1:]}
                row["epoch"] = int(r["epoch"])
                row["train_loss"] = scale * r["train_loss"]
                row["val_loss"] = scale * r["val_loss"]
                writer.writerow({"method": method, **row})
    summary: dict[str, Any] = {
        "experiment": setup.name,
        "config": {**asdict(config), **(extra_config or {}), "loss": setup.loss_label,
                   "data": setup.info},
        "methods": {m: method_summary(r, scale) for m, r in results.items()},
    }
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
    plots.plot_loss_curves(summary["methods"], out / "loss.png", title=setup.name,
                           ylabel=setup.loss_label)
    traces = {m: r.lambda_trace for m, r in results.items() if r.lambda_trace}
    if traces:
        plots.plot_lambda(traces, out / "lambda.png", title=f"{setup.name}: Lambda per step")
    if setup.image_shape is not None:
        _plot_reconstructions(setup, results, out / "reconstructions.png")
    return summary


def _plot_reconstructions(setup: Setup, results: dict[str, MethodResult], path: Path) -> None:
    n = min(8, len(setup.val))  # type: ignore[arg-type]
    xs = torch.stack([setup.val[i][0] for i in range(n)])
    cs = torch.stack([setup.val[i][1] for i in range(n)])
    shape = setup.image_shape
    if shape is None:
        return
    predictions = {}
    for method, result in results.items():
        model = result.trainer.model
        model.eval()
        with torch.no_grad():
            prediction = model(xs.to(result.trainer.device, result.trainer.dtype)).cpu()
        predictions[method] = prediction.reshape(n, *shape).numpy()
    plots.plot_reconstructions(cs.reshape(n, *shape).numpy(), predictions, path,
                               title=f"{setup.name}: validation reconstructions")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
