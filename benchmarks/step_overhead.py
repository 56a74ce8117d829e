"""Median time per training step of SlimTrain / GradientTrainer(Adam), measured side by side.

Cases: (a) the SPEC's convolutional MNIST autoencoder (final layer ConvTranspose2d(16 -> 1, 4,
2, 1), p = 257 unknowns per output channel, 25088 rows per batch of 32) at batch 32; (b) the CDR
residual network (55 -> width 16 -> 72) at batch 5 and 32; (c) the autoencoder at width 64
(final layer 64 -> 1, p = 1025). Steps alternate between the two trainers so both see the same
machine load. For slimTrain the time is split into the head statistics (Gram, cross products),
the slimTik solve (eigh, sGCV, update) and the rest (forward, backward, Adam on theta). For the
autoencoder heads (strided ConvTranspose2d) the solve takes the block path (one batched eigh of
the stride-phase blocks, :mod:`slimtrain.linalg.structured`); the last column times the dense
solve of the same statistics (one eigh of the whole memory Gram) for comparison.

Usage: ``python benchmarks/step_overhead.py [--steps N] [--accumulate float32|float64]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from slimtrain import GradientTrainer, SeparableModel, SlimTrain
from slimtrain.problems.networks import autoencoder_network, cdr_network


def _case(name: str, build, x: torch.Tensor, y: torch.Tensor, steps: int, accumulate) -> None:
    torch.manual_seed(0)
    features, head = build()
    slim_model = SeparableModel(features, head)
    slim = SlimTrain(slim_model, torch.optim.Adam(slim_model.feature_parameters(), lr=1e-3),
                     memory_depth=5, accumulate_dtype=accumulate)
    torch.manual_seed(0)
    features, head = build()
    adam_model = SeparableModel(features, head)
    adam = GradientTrainer(adam_model, torch.optim.Adam(adam_model.parameters(), lr=1e-3))
    for _ in range(3):  # warm-up, fills slimTik's memory
        slim.step(x, y)
        adam.step(x, y)
    t_slim, t_adam = [], []
    for _ in range(steps):
        start = time.perf_counter()
        slim.step(x, y)
        t_slim.append(time.perf_counter() - start)
        start = time.perf_counter()
        adam.step(x, y)
        t_adam.append(time.perf_counter() - start)
    # Components of the slimTik part, timed on the same batch.
    with torch.no_grad():
        feats = slim_model.features(x)
    adapter, solver = slim.adapter, slim.solver
    t_stats, t_solve, t_dense = [], [], []
    W = adapter.get_weight(slim_model.head)
    for _ in range(max(3, steps // 4)):
        start = time.perf_counter()
        stats = adapter.statistics(slim_model.head, feats, y, dtype=accumulate)
        t_stats.append(time.perf_counter() - start)
        saved = solver.state
        start = time.perf_counter()
        solver.step_statistics(W, stats)
        t_solve.append(time.perf_counter() - start)
        solver.state = saved
        if stats.structure is not None:
            start = time.perf_counter()
            solver.step_statistics(W, stats._replace(structure=None))
            t_dense.append(time.perf_counter() - start)
            solver.state = saved
    ms = 1e3
    s, a = statistics.median(t_slim), statistics.median(t_adam)
    st, so = statistics.median(t_stats), statistics.median(t_solve)
    p = adapter.num_features(slim_model.head)
    dense = f"{ms * statistics.median(t_dense):>8.2f}" if t_dense else f"{'-':>8}"
    print(f"{name:<34} p={p:<5} {ms * s:>9.2f} {ms * a:>9.2f} {s / a:>7.2f} | "
          f"{ms * st:>8.2f} {ms * so:>8.2f} {ms * max(s - st - so, 0.0):>8.2f} | {dense}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--accumulate", choices=["float32", "float64"], default="float64",
                        help="dtype of the head statistics (the solve is float64 always)")
    args = parser.parse_args()
    accumulate = getattr(torch, args.accumulate)
    logging.getLogger("slimtrain").setLevel(logging.ERROR)  # sGCV statuses of random data
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; statistics in "
          f"{args.accumulate}; median of {args.steps} steps")
    print(f"{'case':<34} {'':<7} {'slim ms':>9} {'adam ms':>9} {'ratio':>7} | "
          f"{'stats ms':>8} {'solve ms':>8} {'rest ms':>8} | {'dense solve ms':>8}")
    x = torch.randn(32, 1, 28, 28, generator=gen)
    _case("autoencoder (width 16), batch 32", lambda: autoencoder_network(), x, x, args.steps,
          accumulate)
    for batch in (5, 32):
        xc = torch.rand(batch, 55, generator=gen) * 2 - 1
        yc = torch.randn(batch, 72, generator=gen)
        _case(f"CDR network 55->16->72, batch {batch}", lambda: cdr_network(), xc, yc,
              args.steps * 5, accumulate)
    _case("autoencoder (width 64), batch 32", lambda: autoencoder_network(width=64), x, x,
          max(5, args.steps // 2), accumulate)


if __name__ == "__main__":
    main()
