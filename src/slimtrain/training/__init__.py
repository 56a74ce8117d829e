"""Training: the separable model, trainers, the ``fit`` loop and its callbacks."""

from slimtrain.training.callbacks import (
    Callback,
    Checkpoint,
    CSVLogger,
    JSONLogger,
    ProgressBar,
    TensorBoardLogger,
)
from slimtrain.training.checkpoint import atomic_save, load_checkpoint
from slimtrain.training.loop import FitState, History, evaluate, fit
from slimtrain.training.model import SeparableModel
from slimtrain.training.trainers import (
    GradientTrainer,
    SlimTrain,
    Trainer,
    relative_errors,
    squared_loss,
)

__all__ = [
    "CSVLogger",
    "Callback",
    "Checkpoint",
    "FitState",
    "GradientTrainer",
    "History",
    "JSONLogger",
    "ProgressBar",
    "SeparableModel",
    "SlimTrain",
    "TensorBoardLogger",
    "Trainer",
    "atomic_save",
    "evaluate",
    "fit",
    "load_checkpoint",
    "relative_errors",
    "squared_loss",
]
