"""Paper-style experiments: each a function here and a command of the CLI.

- :func:`run_demo`, :func:`run_experiment` (``cdr``, ``peaks``, ``autoencoder``) and
  :func:`run_sweep`: slimTrain against gradient baselines through one loop;
- :func:`run_inverse`: slimTik on a streaming linear inverse problem;
- :func:`run_kernel_experiment`: EigenPro against exact kernel ridge regression.
"""

from typing import Any

from slimtrain.experiments.inverse import format_inverse, run_inverse
from slimtrain.experiments.kernel import run_kernel_experiment
from slimtrain.experiments.runner import METHODS, RunConfig, Setup, run_methods, write_report
from slimtrain.experiments.setups import TRAINING_EXPERIMENTS, experiment_defaults, make_setup
from slimtrain.experiments.training_runs import run_demo, run_experiment, run_sweep, sweep_table

__all__ = [
    "METHODS",
    "TRAINING_EXPERIMENTS",
    "RunConfig",
    "Setup",
    "experiment_defaults",
    "format_inverse",
    "format_summary",
    "make_setup",
    "run_demo",
    "run_experiment",
    "run_inverse",
    "run_kernel_experiment",
    "run_methods",
    "run_sweep",
    "sweep_table",
    "write_report",
]


def format_summary(summary: dict[str, Any]) -> str:
    """A short text form of a summary that has no per-method training curves."""
    if summary.get("experiment") == "inverse":
        return format_inverse(summary)
    lines = [f"{summary.get('experiment', '')}:"]
    for key, value in summary.items():
        if key not in ("experiment", "config"):
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)

