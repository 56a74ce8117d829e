"""Paper-style experiments, each declared once in :data:`REGISTRY` (and a command of the CLI).

- ``cdr``, ``peaks``, ``autoencoder``, ``classify`` (:mod:`~slimtrain.experiments.training`):
  slimTrain against gradient baselines through one loop; ``sweep``: their sensitivity grid;
- ``inverse``: slimTik on a streaming linear inverse problem;
- ``kernel``: EigenPro against exact kernel ridge regression.

:func:`run_experiment` checks the output folder, runs an experiment and writes its report.
"""

# isort: off  (importing a module registers its experiments, in this order)
from slimtrain.experiments import inverse, kernel, sweep, training  # noqa: F401

# isort: on
from slimtrain.experiments.execute import run_experiment
from slimtrain.experiments.options import METHODS, TrainingOptions
from slimtrain.experiments.registry import (
    REGISTRY,
    Experiment,
    Result,
    Session,
    build_options,
    register,
)
from slimtrain.experiments.runner import MethodResult, Setup, run_methods
from slimtrain.experiments.setups import TRAINING_EXPERIMENTS, make_setup

__all__ = [
    "METHODS",
    "REGISTRY",
    "TRAINING_EXPERIMENTS",
    "Experiment",
    "MethodResult",
    "Result",
    "Session",
    "Setup",
    "TrainingOptions",
    "build_options",
    "make_setup",
    "register",
    "run_experiment",
    "run_methods",
]
