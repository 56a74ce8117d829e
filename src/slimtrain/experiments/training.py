"""The training experiments ``cdr``, ``peaks``, ``autoencoder`` and ``classify``: slimTrain
against gradient baselines through one loop, declared in the registry."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from slimtrain import plots
from slimtrain.experiments.options import METHODS, TrainingOptions, check_methods
from slimtrain.experiments.registry import Experiment, Result, Session, register
from slimtrain.experiments.runner import MethodResult, Setup, data_fingerprint, run_methods
from slimtrain.experiments.setups import DATA_EXPERIMENTS, TRAINING_EXPERIMENTS, make_setup
from slimtrain.experiments.tables import training_table
from slimtrain.training.distributed import is_main_process

__all__ = ["DataRunOptions", "TrainingRunOptions", "parse_methods", "run_training",
           "training_result"]


def parse_methods(text: str) -> tuple[str, ...]:
    """``"all"`` or a comma-separated list of methods."""
    if text == "all":
        return METHODS
    return check_methods(tuple(m.strip() for m in text.split(",") if m.strip()))


@dataclass(frozen=True)
class TrainingRunOptions:
    """One training experiment: which methods, trained how, on which version of the data."""

    experiment: str = field(default="cdr", metadata={"cli": False})
    methods: tuple[str, ...] = field(default=METHODS, metadata={
        "flag": "method", "parse": parse_methods,
        "help": f"'all' or a comma-separated subset of {', '.join(METHODS)}"})
    training: TrainingOptions = field(default_factory=TrainingOptions)
    quick: bool = field(default=False, metadata={"help": "a small, fast version (a smaller "
                                                 "training set and fewer epochs)"})

    def __post_init__(self) -> None:
        if self.experiment not in TRAINING_EXPERIMENTS:
            raise ValueError(f"unknown training experiment {self.experiment!r}; expected one of "
                             f"{', '.join(TRAINING_EXPERIMENTS)}")
        object.__setattr__(self, "methods", check_methods(self.methods))
        if not isinstance(self.training, TrainingOptions):
            raise TypeError(f"training must be TrainingOptions, found {self.training!r}")
        if not isinstance(self.quick, bool):
            raise TypeError(f"quick must be a bool, found {self.quick!r}")

    @property
    def data_dir(self) -> Path | None:
        """The data folder (only the autoencoder reads one)."""
        return None


@dataclass(frozen=True)
class DataRunOptions(TrainingRunOptions):
    """An experiment that can read MNIST (:data:`~slimtrain.experiments.setups.DATA_EXPERIMENTS`:
    the autoencoder and the classifier)."""

    data: Path | None = field(default=None, metadata={
        "parse": Path, "help": "folder with the MNIST IDX files (default: scikit-learn's "
        "bundled 8x8 digits)"})

    @property
    def data_dir(self) -> Path | None:
        return self.data

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data is not None and self.experiment not in DATA_EXPERIMENTS:
            raise ValueError(f"--data applies to {', '.join(DATA_EXPERIMENTS)} only, found it "
                             f"for {self.experiment!r}")


def run_training(options: TrainingRunOptions, session: Session) -> Result:
    """Train ``options.methods`` on ``options.experiment``; the report of the run."""
    setup = make_setup(options.experiment, seed=options.training.seed,
                       data_dir=options.data_dir, quick=options.quick)
    identity = {"experiment": options.experiment, "quick": options.quick,
                "data": data_fingerprint(setup)}
    results = run_methods(setup, options.methods, options.training, progress=session.progress,
                          checkpoint_dir=session.checkpoint_dir, resume=session.resume,
                          identity=identity, echo=session.echo)
    return training_result(setup, asdict(options), results)


def training_result(setup: Setup, config: dict[str, Any],
                    results: dict[str, MethodResult]) -> Result:
    """Summary, metric rows, figures and table of a run of several methods."""
    scale = setup.loss_scale
    methods = {m: _method_summary(r, scale) for m, r in results.items()}
    summary = {"experiment": setup.name,
               "config": {**config, "loss": setup.loss_label, "data": setup.info},
               "methods": methods}
    rows = [{"method": m, **r, "epoch": int(r["epoch"]), "train_loss": scale * r["train_loss"],
             "val_loss": scale * r["val_loss"]}
            for m, res in results.items() for r in res.history.records]
    figures = {}
    if is_main_process():
        figures["loss.png"] = plots.plot_loss_curves(methods, title=setup.name,
                                                     ylabel=setup.loss_label)
        if any("val_accuracy" in m for m in methods.values()):
            figures["accuracy.png"] = plots.plot_accuracy_curves(
                methods, title=setup.name, ylabel="accuracy (fraction of images)")
        traces = {m: r.lambda_trace for m, r in results.items() if r.lambda_trace}
        if traces:
            figures["lambda.png"] = plots.plot_lambda(traces,
                                                      title=f"{setup.name}: Lambda per step")
        if setup.image_shape is not None:
            figures["reconstructions.png"] = _reconstructions(setup, results)
    return Result(summary, rows, figures, training_table(summary))


def _method_summary(result: MethodResult, scale: float) -> dict[str, Any]:
    """The per-method block of ``summary.json`` (lists indexed by epoch, 0 = before training)."""
    h = result.history
    summary: dict[str, Any] = {
        "val_loss": [scale * v for v in h.column("val_loss")],
        "train_loss": [scale * v for v in h.column("train_loss")],
        "val_rel_error": h.column("val_rel_error"),
        "sum_lambda": h.column("sum_lambda"),
        "epoch_time": h.column("epoch_time"),
        "best_val_loss": scale * h.best_val_loss,
        "best_epoch": h.best_epoch,
        "seconds": result.seconds,
    }
    if result.trainer.loss.is_classification:
        summary["val_accuracy"] = h.column("val_accuracy")
        summary["train_accuracy"] = h.column("train_accuracy")
    return summary


def _reconstructions(setup: Setup, results: dict[str, MethodResult]) -> Any:
    n = min(8, len(setup.val))  # type: ignore[arg-type]
    xs = torch.stack([setup.val[i][0] for i in range(n)])
    cs = torch.stack([setup.val[i][1] for i in range(n)])
    shape = setup.image_shape or (0, 0)
    predictions = {}
    for method, result in results.items():
        model = result.trainer.model
        model.eval()
        with torch.no_grad():
            prediction = model(xs.to(result.trainer.device, result.trainer.dtype)).cpu()
        predictions[method] = prediction.reshape(n, *shape).numpy()
    return plots.plot_reconstructions(cs.reshape(n, *shape).numpy(), predictions,
                                      title=f"{setup.name}: validation reconstructions")


def _digits_notice(options: DataRunOptions) -> str | None:
    if options.data is not None:
        return None
    return (f"{options.experiment}: no --data given, so it trains on scikit-learn's 8x8 digits, "
            "not MNIST (pass --data DIR, a folder with the MNIST IDX files)")


register(Experiment("cdr", "CDR surrogate: slimTrain against Adam, Prodigy and schedule-free "
                    "AdamW", TrainingRunOptions, run_training,
                    defaults={"epochs": 50, "batch_size": 5},
                    quick={"epochs": 4, "batch_size": 5}, distributed=True, resumable=True))
register(Experiment("peaks", "peaks classification-by-regression surrogate", TrainingRunOptions,
                    run_training, defaults={"epochs": 20, "batch_size": 5},
                    quick={"epochs": 3, "batch_size": 5}, distributed=True, resumable=True))
register(Experiment("autoencoder", "MNIST (or 8x8 digits) autoencoder with a "
                    "transposed-convolution head", DataRunOptions, run_training,
                    defaults={"epochs": 10, "batch_size": 32},
                    quick={"epochs": 2, "batch_size": 32}, notice=_digits_notice,
                    distributed=True, resumable=True))
register(Experiment("classify", "MNIST (or 8x8 digits) classification: a small CNN with a "
                    "Linear head on the cross-entropy loss", DataRunOptions, run_training,
                    defaults={"epochs": 10, "batch_size": 32},
                    quick={"epochs": 2, "batch_size": 32}, notice=_digits_notice,
                    distributed=True, resumable=True))
