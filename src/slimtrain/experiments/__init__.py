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
    if summary.get("experiment") == "kernel":
        return _format_kernel(summary)
    lines = [f"{summary.get('experiment', '')}:"]
    for key, value in summary.items():
        if key not in ("experiment", "config"):
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)



def _format_kernel(summary: dict[str, Any]) -> str:
    ep, krr = summary["eigenpro"], summary["kernel_ridge"]
    config = summary.get("config", {})

    def err(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.2f} %"

    p = ep["parameters"]
    lines = [
        f"kernel: {config.get('dataset', '')}, {config.get('kernel', '')} kernel, bandwidth "
        f"{config.get('bandwidth', '')}",
        f"{'method':<28} {'test MSE':>10} {'test error':>11} {'fit s':>8}",
        f"{'EigenPro':<28} {ep['test_mse']:>10.4g} {err(ep.get('test_error')):>11} "
        f"{ep['fit_time']:>8.2f}",
        f"{'exact (' + krr['solver'].split('.')[-1] + ')':<28} {krr['test_mse']:>10.4g} "
        f"{err(krr.get('test_error')):>11} {krr['fit_time']:>8.2f}",
        f"chosen: subsample s={p['subsample_size']}, q={p['n_components']}, batch "
        f"m={p['batch_size']}, step eta={p['step_size']:.4g} ({p['regime']}); eigensystem "
        f"set-up {p['setup_time']:.2f} s",
    ]
    return "\n".join(lines)
