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

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from slimtrain import plots
from slimtrain._validation import check_int, check_real
from slimtrain.experiments.registry import Experiment, Result, Session, register
from slimtrain.experiments.tables import inverse_table
from slimtrain.linalg.solver import SlimTik
from slimtrain.problems.inverse import make_deblur_problem

__all__ = ["InverseOptions", "run_inverse"]


@dataclass(frozen=True)
class InverseOptions:
    """The streaming deblurring comparison.

    The default memory depth 4: 4 earlier batches of 64 rows plus the current one, 320 rows,
    exceed the 256 unknowns (so sGCV is defined from the fifth step on), and the memory reaches
    back no further than one pass (256 rows).
    """

    epochs: int = field(default=10, metadata={"help": "passes of fresh measurements"})
    batch_size: int = field(default=64, metadata={"help": "rows per minibatch"})
    memory_depth: int = field(default=4, metadata={"help": "slimTik memory depth r"})
    seed: int = field(default=0, metadata={"help": "seed of the noise and the row order"})
    n: int = field(default=256, metadata={"cli": False})
    noise: float = field(default=0.01, metadata={"cli": False})

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("memory_depth", self.memory_depth, minimum=0)
        check_int("seed", self.seed, minimum=0)
        check_int("n", self.n, minimum=2)
        check_real("noise", self.noise, minimum=0.0)


def run_inverse(options: InverseOptions, session: Session) -> Result:
    """Run the comparison: ``metrics.csv`` rows per step, the summary and ``inverse.png``.

    slimTik runs with ``reduction="sum"`` (every row weighs the same).
    """
    n, noise, seed, progress = options.n, options.noise, options.seed, session.progress
    batch, depth, passes = options.batch_size, options.memory_depth, options.epochs
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
    rows = [{"step": k, "epoch": row["epoch"], "slimtik_rel_error": row["rel_error"],
             "sum_lambda": row["sum_lambda"], "sgd_rel_error": sgd}
            for k, (row, sgd) in enumerate(zip(trace, sgd_errors, strict=True), start=1)]
    figure = _plot(problem, x_slim, x_tik, x_sgd, trace, sgd_errors, errors[best])
    return Result(summary, rows, {"inverse.png": figure}, inverse_table(summary))


def _plot(problem: Any, x_slim: Any, x_tik: Any, x_sgd: Any, trace: list[dict[str, Any]],
          sgd_errors: list[float], tik_error: float) -> Any:
    fig, axes = plots.new_figure(1, 3, figsize=(14, 3.8))
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
    return fig


register(Experiment(
    "inverse", "slimTik with sGCV on a streaming deblurring problem, against the best fixed "
    "Tikhonov solution and minibatch SGD", InverseOptions, run_inverse, resume_may_change=(),
    why_not={"lr": "slimTik has no learning rate and minibatch SGD takes the step 1/L",
             "method": "it always compares slimTik + sGCV, the best fixed Tikhonov solution "
             "and minibatch SGD",
             "alpha": "slimTik chooses its regularization by sGCV",
             "initial_lambda": "it starts slimTik from Lambda = 1e-10"}))
