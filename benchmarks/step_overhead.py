"""Time per training step of SlimTrain / GradientTrainer(Adam), measured side by side.

Cases: (a) the SPEC's convolutional MNIST autoencoder (final layer ConvTranspose2d(16 -> 1, 4,
2, 1), p = 257 unknowns per output channel, 25088 rows per batch of 32) at batch 32; (b) the CDR
residual network (55 -> width 16 -> 72) at batch 5 and 32; (c) the autoencoder at width 64
(final layer 64 -> 1, p = 1025). Steps alternate between the two trainers so both see the same
machine load. For slimTrain the step is split, inside the same steps
(``SlimTrain.last_step_times``), into the head statistics (Gram, cross products), the slimTik
solve (eigh, sGCV, update, write-back of W) and the rest (validation, forward, backward, Adam on
theta). The whole measurement is repeated ``--runs`` times; the table shows the median over the
runs of each run's median step, and the range of the ratio over the runs.

The steps alternate in blocks of ``--block`` consecutive steps per trainer (default 10): within a
block each trainer's working set stays in the caches, as in training, while alternating blocks
keeps both trainers under the same machine load. ``--block 1`` alternates single steps, which
slows Adam's step by 6-10 % (the other trainer's cache footprint) and so understates the ratio
(autoencoder 2.50 alternating single steps against 2.74-2.93 consecutive, in one process).

``--busy`` starts a neighbour process that runs a matrix-product loop for the whole
measurement (and stops it at the end), to show the step beside a busy neighbour.
``--profile`` prints, per case, the top entries by self time of ``torch.profiler`` over a few
slimTrain steps.

Usage: ``python benchmarks/step_overhead.py [--steps N] [--runs R] [--block B]
[--device cpu|cuda] [--accumulate float32|float64] [--threads T] [--busy] [--profile]
[--cases ...]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from slimtrain import GradientTrainer, SeparableModel, SlimTrain
from slimtrain.problems.networks import autoencoder_network, cdr_network

BUSY_LOOP = (
    "import torch\n"
    "torch.set_num_threads(1)\n"
    "a = torch.randn(512, 512)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a * 1e-3)\n"
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_case(
    build: Callable[[], tuple[nn.Module, nn.Module]],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    accumulate: torch.dtype,
    device: torch.device,
    profile: bool,
    block: int,
) -> dict[str, float]:
    """Median times (seconds) of one run: slim, adam and slimTrain's three parts."""
    torch.manual_seed(0)
    features, head = build()
    slim_model = SeparableModel(features, head).to(device)
    slim = SlimTrain(slim_model, torch.optim.Adam(slim_model.feature_parameters(), lr=1e-3),
                     memory_depth=5, accumulate_dtype=accumulate)
    torch.manual_seed(0)
    features, head = build()
    adam_model = SeparableModel(features, head).to(device)
    adam = GradientTrainer(adam_model, torch.optim.Adam(adam_model.parameters(), lr=1e-3))
    x, y = x.to(device), y.to(device)
    for _ in range(3):  # warm-up, fills slimTik's memory
        slim.step(x, y)
        adam.step(x, y)
    times: dict[str, list[float]] = {k: [] for k in ("slim", "adam", "statistics", "solve",
                                                     "rest")}
    for first in range(0, steps, block):  # blocks of consecutive steps, alternating trainers
        n = min(block, steps - first)
        for name, trainer in (("slim", slim), ("adam", adam)):
            for _ in range(n):
                _sync(device)
                start = time.perf_counter()
                trainer.step(x, y)
                _sync(device)
                times[name].append(time.perf_counter() - start)
                if trainer is slim:
                    for part, value in slim.last_step_times.items():
                        times[part].append(value)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with torch_profile(activities=activities) as prof:
            for _ in range(5):
                slim.step(x, y)
            _sync(device)
        sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=12))
    return {k: statistics.median(v) for k, v in times.items()}


def _cases(
    steps: int, gen: torch.Generator, only: list[str] | None
) -> list[tuple[str, Callable[[], tuple[nn.Module, nn.Module]], torch.Tensor, torch.Tensor,
                int]]:
    x = torch.randn(32, 1, 28, 28, generator=gen)
    cases = [("autoencoder (width 16), batch 32", autoencoder_network, x, x, steps)]
    for batch in (5, 32):
        xc = torch.rand(batch, 55, generator=gen) * 2 - 1
        yc = torch.randn(batch, 72, generator=gen)
        cases.append((f"CDR network 55->16->72, batch {batch}", cdr_network, xc, yc, steps * 5))
    cases.append(("autoencoder (width 64), batch 32", lambda: autoencoder_network(width=64),
                  x, x, max(5, steps // 2)))
    if only:
        cases = [c for c in cases if any(key in c[0] for key in only)]
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="repeat the measurement R times")
    parser.add_argument("--block", type=int, default=10,
                        help="consecutive steps per trainer before switching (1: alternate)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--accumulate", choices=["float32", "float64"], default="float64",
                        help="dtype of the head statistics (the solve is float64 always)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--busy", action="store_true",
                        help="run a matrix-product loop in a neighbour process meanwhile")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top entries by self time per case")
    parser.add_argument("--cases", nargs="*", default=None,
                        help="substrings selecting cases, e.g. 'width 16' 'batch 5'")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.block < 1 or args.steps < 1 or args.runs < 1:
        parser.error("--block, --steps and --runs must be at least 1")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    accumulate = getattr(torch, args.accumulate)
    logging.getLogger("slimtrain").setLevel(logging.ERROR)  # sGCV statuses of random data
    neighbour = None
    if args.busy:
        neighbour = subprocess.Popen([sys.executable, "-c", BUSY_LOOP],
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        time.sleep(1.0)  # let it start
    try:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; "
              f"statistics in {args.accumulate}; {args.runs} runs, median of {args.steps} "
              f"steps each, in blocks of {args.block}; "
              f"busy neighbour: {'yes' if args.busy else 'no'}; "
              f"load average {load:.2f}")
        print(f"{'case':<34} {'slim ms':>9} {'adam ms':>9} {'ratio':>6} {'ratio range':>13} | "
              f"{'stats ms':>8} {'solve ms':>8} {'rest ms':>8}")
        gen = torch.Generator().manual_seed(0)
        for name, build, x, y, steps in _cases(args.steps, gen, args.cases):
            runs = [_run_case(build, x, y, steps, accumulate, device,
                              args.profile and r == 0, args.block) for r in range(args.runs)]
            med = {k: 1e3 * statistics.median(r[k] for r in runs) for k in runs[0]}
            ratios = [r["slim"] / r["adam"] for r in runs]
            print(f"{name:<34} {med['slim']:>9.2f} {med['adam']:>9.2f} "
                  f"{statistics.median(ratios):>6.2f} "
                  f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>13} | "
                  f"{med['statistics']:>8.2f} {med['solve']:>8.2f} {med['rest']:>8.2f}",
                  flush=True)
    finally:
        if neighbour is not None:
            neighbour.terminate()
            neighbour.wait(timeout=10)


if __name__ == "__main__":
    main()
