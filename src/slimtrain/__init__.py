"""slimtrain: separable network training with slimTik/sGCV and EigenPro kernel regression.

Public names:

- :class:`SlimTik`: the sampled limited-memory Tikhonov solver for linear weights.
- :class:`SeparableModel`, :class:`SlimTrain`, :class:`GradientTrainer`, :func:`fit`: training.
- :mod:`slimtrain.kernels`: ``EigenProRegressor`` and ``EigenProClassifier``.
"""

from slimtrain.linalg import GramStats, SlimTik, SlimTikConfig, SlimTikInfo, SlimTikStatus
from slimtrain.training import (
    Callback,
    Checkpoint,
    CSVLogger,
    GradientTrainer,
    History,
    JSONLogger,
    ProgressBar,
    SeparableModel,
    SlimTrain,
    TensorBoardLogger,
    fit,
)

__version__ = "0.1.0"

__all__ = [
    "CSVLogger",
    "Callback",
    "Checkpoint",
    "GradientTrainer",
    "GramStats",
    "History",
    "JSONLogger",
    "ProgressBar",
    "SeparableModel",
    "SlimTik",
    "SlimTikConfig",
    "SlimTikInfo",
    "SlimTikStatus",
    "SlimTrain",
    "TensorBoardLogger",
    "__version__",
    "fit",
]
