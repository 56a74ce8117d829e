"""The text tables the command line prints, one per kind of result (pure formatting)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["inverse_table", "kernel_table", "sweep_table", "training_table"]


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def training_table(summary: dict[str, Any]) -> str:
    """Best and final validation loss, relative error (or accuracy for a classifier), Lambda
    and time of every method."""
    config = summary.get("config", {})
    source = config.get("data", {}).get("source")
    title = f"{summary['experiment']}" + (f" on {source}" if source else "")
    methods = summary.get("methods", {})
    accuracy = any("val_accuracy" in m for m in methods.values())
    quality = "val accuracy %" if accuracy else "val rel err %"
    header = (f"{'method':<20} {'best val loss':>14} {'final val loss':>15} "
              f"{quality:>14} {'Lambda':>10} {'seconds':>8}")
    lines = [f"{title}: loss = {config.get('loss', '')}", header, "-" * len(header)]
    for method, m in methods.items():
        value = m["val_accuracy" if accuracy else "val_rel_error"][-1]
        value = None if value is None else 100 * value
        spec = ".4g" if accuracy else ".3g"
        lines.append(f"{method:<20} {_fmt(m['best_val_loss']):>14} {_fmt(m['val_loss'][-1]):>15} "
                     f"{_fmt(value, spec):>14} {_fmt(m['sum_lambda'][-1]):>10} "
                     f"{_fmt(m.get('seconds'), '.1f'):>8}")
    lines.append("val accuracy = correctly classified validation images (final epoch)" if accuracy
                 else "val rel err = ||F - C||_F / ||C||_F over the whole validation set")
    return "\n".join(lines)


def sweep_table(summary: dict[str, Any]) -> str:
    """The sweep: one grid per method, then the spreads."""
    lines = [f"{summary['experiment']}: final validation loss ({summary['config']['loss']})"]
    regs = summary["regs"]
    for method, grid in summary["final_val_loss"].items():
        lines.append(f"\n{method:<12}" + "".join(f"{'alpha=' + format(r, 'g'):>14}" for r in regs))
        for lr, row in zip(summary["lrs"], grid, strict=True):
            lines.append(f"{'lr=' + format(lr, 'g'):<12}" + "".join(f"{_fmt(v):>14}" for v in row))
    lines.append("")
    for method, spread in summary["spread"].items():
        lines.append(f"spread max/min of {method}: {_fmt(spread, '.3g')}")
    for method, grid in summary.get("final_val_accuracy", {}).items():
        best = max((v for row in grid for v in row if not math.isnan(v)), default=math.nan)
        lines.append(f"final val accuracy of {method}: best {_fmt(100 * best, '.4g')} %, range "
                     f"{_fmt(100 * summary['accuracy_range'][method], '.3g')} points")
    if "spread_ratio_adam_over_slimtrain" in summary:
        ratio = summary["spread_ratio_adam_over_slimtrain"]
        lines.append(f"ratio of spreads adam / slimtrain: {_fmt(ratio, '.3g')}")
    return "\n".join(lines)


def inverse_table(summary: dict[str, Any]) -> str:
    """The inverse problem's result table."""
    r, c = summary["results"], summary["config"]
    slim, tik, sgd = r["slimtik_sgcv"], r["tikhonov_best_fixed"], r["sgd"]
    lines = [
        f"inverse: 1-D deblurring, n={c['n']}, noise {100 * c['noise']:g} %, {c['passes']} "
        f"passes of fresh measurements, {c['steps']} minibatch steps",
        f"{'method':<38} {'rel. error':>10} {'parameter':>22} {'seconds':>8}",
        f"{'slimTik + sGCV (no tuning)':<38} {slim['rel_error']:>10.4f} "
        f"{'Lambda=' + format(slim['sum_lambda'], '.3g'):>22} {slim['seconds']:>8.2f}",
        f"{'Tikhonov all data, best fixed (oracle)':<38} {tik['rel_error']:>10.4f} "
        f"{'lambda=' + format(tik['lambda'], '.3g'):>22} {tik['seconds']:>8.2f}",
        f"{'minibatch SGD (step 1/L)':<38} {sgd['rel_error']:>10.4f} "
        f"{'step=' + format(sgd['step_size'], '.3g'):>22} {sgd['seconds']:>8.2f}",
        f"(slimTik's largest error after the first pass: "
        f"{_fmt(slim['max_rel_error_after_first_pass'], '.4f')})",
    ]
    if sgd["best_rel_error"] is not None and not math.isnan(sgd["best_rel_error"]):
        lines.append(f"(SGD's best error along its path, an oracle stop: "
                     f"{sgd['best_rel_error']:.4f})")
    return "\n".join(lines)


def kernel_table(summary: dict[str, Any]) -> str:
    """EigenPro against exact kernel ridge regression."""
    ep, krr, config = summary["eigenpro"], summary["kernel_ridge"], summary["config"]

    def err(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.2f} %"

    p = ep["parameters"]
    lines = [
        f"kernel: {config['dataset']}, {config['kernel']} kernel, bandwidth {config['bandwidth']}",
        f"{'method':<28} {'test MSE':>10} {'test error':>11} {'fit s':>8}",
        f"{'EigenPro':<28} {ep['test_mse']:>10.4g} {err(ep.get('test_error')):>11} "
        f"{ep['fit_time']:>8.2f}",
    ]
    if "skipped" in krr:
        lines.append(f"{'exact kernel ridge':<28} skipped: {krr['skipped']}")
    else:
        lines.append(f"{'exact (' + krr['solver'].split('.')[-1] + ')':<28} "
                     f"{krr['test_mse']:>10.4g} {err(krr.get('test_error')):>11} "
                     f"{krr['fit_time']:>8.2f}")
    lines.append(f"chosen: subsample s={p['subsample_size']}, q={p['n_components']}, batch "
                 f"m={p['batch_size']}, step eta={p['step_size']:.4g} ({p['regime']}); "
                 f"eigensystem set-up {p['setup_time']:.2f} s")
    return "\n".join(lines)
