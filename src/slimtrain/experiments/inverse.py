r"""Streaming linear inverse problem: slimTik with sGCV against the best fixed Tikhonov solution
and against minibatch SGD (``slimtrain run inverse``).

Repeated measurements of a blurred signal, :math:`b_k = A x + e_k` with fresh noise in every
pass (:mod:`slimtrain.problems.inverse`), arrive as shuffled minibatches of rows. slimTik updates
:math:`x` (the weights ``W`` of shape ``(1, n)``) from each minibatch with no learning rate and
chooses its regularization by sGCV. References: the exact Tikhonov solution of *all* the
measurements at the fixed parameter that minimises the true error (found by a scan: an oracle
no practical method has), and minibatch SGD on :math:`\tfrac12\sum_k\|Ax - b_k\|^2` with the
step :math:`1/\|A\|_2^2` over the same minibatches.

A note on memory depth: the memory should not reach back over a whole pass. Otherwise it holds
the rows of the current batch a second time (with other noise), the batch is no longer a fresh
sample, and sGCV may cut Lambda to its lower bound. Even within a pass, on this severely
ill-posed problem sGCV now and then picks a large negative increment that drops Lambda to
``lower`` for a few steps: the error spikes and recovers. The summary reports the largest error
after the first pass next to the final one, so this is visible rather than hidden.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from slimtrain import plots
from slimtrain.experiments.runner import _json_safe
from slimtrain.linalg.solver import SlimTik
from slimtrain.problems.inverse import make_deblur_problem

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MEMORY_DEPTH",
    "DEFAULT_PASSES",
    "format_inverse",
    "run_inverse",
]

#: Rows per minibatch of :func:`run_inverse` (and ``slimtrain run inverse``) by default.
DEFAULT_BATCH_SIZE = 64
#: slimTik memory depth by default: 4 earlier batches of 64 rows plus the current one, 320 rows,
#: exceed the 256 unknowns, and the memory reaches back no further than one pass (256 rows).
DEFAULT_MEMORY_DEPTH = 4
#: Passes of fresh measurements by default.
DEFAULT_PASSES = 10


def run_inverse(
    out_dir: str | os.PathLike[str] = "runs/inverse",
    seed: int = 0,
    n: int = 256,
    noise: float = 0.01,
    memory_depth: int | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the comparison and write ``metrics.csv``, ``summary.json``, ``inverse.png``.

    Defaults: batch 64 rows, memory depth 4 (the rows in memory, 320, exceed the 256 unknowns,
    so sGCV is defined from the fifth step on, and the memory stays within one pass), 10 passes
    of fresh measurements, ``reduction="sum"`` (every row weighs the same).
    """
    batch = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    depth = DEFAULT_MEMORY_DEPTH if memory_depth is None else memory_depth
    passes = DEFAULT_PASSES if epochs is None else epochs
    for name, value, least in (("batch_size", batch, 1), ("memory_depth", depth, 0),
                               ("epochs", passes, 1), ("n", n, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, found {value!r}")
    problem = make_deblur_problem(n=n, noise=noise, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    # The measurement stream: every pass is a new noisy realisation, visited in random order.
    noise_std = noise * float(torch.linalg.vector_norm(problem.b_clean)) / math.sqrt(problem.n)
    stream: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    measurements = []
    for k in range(passes):
        b = problem.b if k == 0 else problem.b_clean + noise_std * torch.randn(
            problem.n, generator=gen, dtype=torch.float64
        )
        measurements.append(b)
        order = torch.randperm(problem.n, generator=gen)
        stream.append([(problem.A[rows], b[rows, None]) for rows in order.split(batch)])

    # slimTik.
    solver = SlimTik(memory_depth=depth, reduction="sum", initial_lambda=1e-10)
    W = torch.zeros(1, problem.n, dtype=torch.float64)
    trace: list[dict[str, Any]] = []
    start = time.perf_counter()
    for epoch, batches in enumerate(tqdm(stream, desc="inverse/slimtik",
                                         disable=not progress or None), start=1):
        for Z, C in batches:
            W, info = solver.step(W, Z, C)
            trace.append({"epoch": epoch, "sum_lambda": info.sum_lambda,
                          "rel_error": problem.relative_error(W), "status": info.status.name})
    slim_time = time.perf_counter() - start
    x_slim = W[0]

    # Minibatch SGD over the same minibatches.
    lipschitz = float(torch.linalg.matrix_norm(problem.A, ord=2)) ** 2
    x_sgd = torch.zeros(problem.n, dtype=torch.float64)
    sgd_errors: list[float] = []
    start = time.perf_counter()
    for batches in stream:
        for Z, C in batches:
            scale = problem.n / Z.shape[0]  # unbiased estimate of one pass's gradient
            x_sgd = x_sgd - (scale / lipschitz) * (Z.T @ (Z @ x_sgd - C[:, 0]))
            sgd_errors.append(problem.relative_error(x_sgd))
    sgd_time = time.perf_counter() - start

    # Exact Tikhonov of all measurements at the error-minimising fixed parameter (an oracle):
    # min sum_k ||A x - b_k||^2 + lam ||x||^2  <=>  min ||A x - mean b||^2 + (lam / P) ||x||^2.
    start = time.perf_counter()
    b_mean = torch.stack(measurements).mean(0)
    eye = torch.eye(problem.n, dtype=torch.float64)
    scan = np.logspace(-8, 2, 51)

    def tikhonov(lam: float) -> torch.Tensor:
        stacked = torch.cat([problem.A, math.sqrt(lam / passes) * eye])
        rhs = torch.cat([b_mean, torch.zeros(problem.n, dtype=torch.float64)])[:, None]
        return torch.linalg.lstsq(stacked, rhs).solution[:, 0]

    errors = [problem.relative_error(tikhonov(float(lam))) for lam in scan]
    best = int(np.argmin(errors))
    x_tik = tikhonov(float(scan[best]))
    tik_time = time.perf_counter() - start

    summary: dict[str, Any] = {
        "experiment": "inverse",
        "config": {"n": problem.n, "noise": noise, "sigma": problem.sigma, "seed": seed,
                   "batch_size": batch, "memory_depth": depth, "passes": passes,
                   "steps": len(trace), "reduction": "sum"},
        "results": {
            "slimtik_sgcv": {"rel_error": problem.relative_error(x_slim),
                             "max_rel_error_after_first_pass": max(
                                 [t["rel_error"] for t in trace if t["epoch"] > 1], default=math.nan
                             ),
                             "sum_lambda": solver.sum_lambda, "seconds": slim_time,
                             "statuses": sorted({t["status"] for t in trace})},
            "tikhonov_best_fixed": {"rel_error": errors[best], "lambda": float(scan[best]),
                                    "seconds": tik_time},
            "sgd": {"rel_error": sgd_errors[-1], "best_rel_error": min(sgd_errors),
                    "step_size": 1.0 / lipschitz, "seconds": sgd_time},
        },
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "epoch", "slimtik_rel_error", "sum_lambda", "sgd_rel_error"])
        for k, (row, sgd) in enumerate(zip(trace, sgd_errors, strict=True), start=1):
            writer.writerow([k, row["epoch"], row["rel_error"], row["sum_lambda"], sgd])
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))
    _plot(problem, x_slim, x_tik, x_sgd, trace, sgd_errors, errors[best], out / "inverse.png")
    return summary


def _plot(problem, x_slim, x_tik, x_sgd, trace, sgd_errors, tik_error, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    t = problem.t.numpy()
    ax = axes[0]
    ax.plot(t, problem.x_true.numpy(), "k", lw=2, label="true signal")
    ax.plot(t, problem.b.numpy(), color="0.6", lw=1, label="blurred, noisy data")
    ax.plot(t, x_slim.numpy(), "C0", label="slimTik + sGCV")
    ax.plot(t, x_tik.numpy(), "C2--", label="Tikhonov, best fixed lambda")
    ax.plot(t, x_sgd.numpy(), "C1", alpha=0.8, label="minibatch SGD")
    ax.set_title("reconstructions")
    ax.legend(fontsize=7)
    steps = np.arange(1, len(trace) + 1)
    axes[1].semilogy(steps, [r["sum_lambda"] for r in trace], "C0")
    axes[1].set_title(r"slimTik: $\Lambda$ per step")
    axes[1].set_xlabel("step")
    axes[2].semilogy(steps, [r["rel_error"] for r in trace], "C0", label="slimTik + sGCV")
    axes[2].semilogy(steps, sgd_errors, "C1", label="minibatch SGD")
    axes[2].axhline(tik_error, color="C2", ls="--", label="Tikhonov, best fixed lambda")
    axes[2].set_title("relative error")
    axes[2].set_xlabel("step")
    axes[2].legend(fontsize=7)
    plots._save(fig, path)


def format_inverse(summary: dict[str, Any]) -> str:
    """The inverse problem's result table as text."""
    r = summary["results"]
    lines = [
        f"inverse: 1-D deblurring, n={summary['config']['n']}, noise "
        f"{100 * summary['config']['noise']:g} %, {summary['config']['passes']} passes of fresh "
        f"measurements, {summary['config']['steps']} minibatch steps",
        f"{'method':<38} {'rel. error':>10} {'parameter':>22} {'seconds':>8}",
        f"{'slimTik + sGCV (no tuning)':<38} {r['slimtik_sgcv']['rel_error']:>10.4f} "
        f"{'Lambda=' + format(r['slimtik_sgcv']['sum_lambda'], '.3g'):>22} "
        f"{r['slimtik_sgcv']['seconds']:>8.2f}",
        f"{'Tikhonov all data, best fixed (oracle)':<38} "
        f"{r['tikhonov_best_fixed']['rel_error']:>10.4f} "
        f"{'lambda=' + format(r['tikhonov_best_fixed']['lambda'], '.3g'):>22} "
        f"{r['tikhonov_best_fixed']['seconds']:>8.2f}",
        f"{'minibatch SGD (step 1/L)':<38} {r['sgd']['rel_error']:>10.4f} "
        f"{'step=' + format(r['sgd']['step_size'], '.3g'):>22} {r['sgd']['seconds']:>8.2f}",
    ]
    lines.append(f"(slimTik's largest error after the first pass: "
                 f"{r['slimtik_sgcv']['max_rel_error_after_first_pass']:.4f})")
    if not math.isnan(r["sgd"]["best_rel_error"]):
        lines.append(f"(SGD's best error along its path, an oracle stop: "
                     f"{r['sgd']['best_rel_error']:.4f})")
    return "\n".join(lines)
