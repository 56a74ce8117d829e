"""Time of one slimTik step, split into forming the batch statistics (G, H) and the rest.

For p in {17, 65, 257, 1025}, rows in {32, 25088}, t in {1, 72, 784}: the median time of
``gram_statistics`` (float32 rows accumulated in float64), of ``slimtik_update`` (eigh, sGCV
over 61 trial points plus refinement, solve), of the whole public ``SlimTik.step(W, Z, C)``
(input checks, statistics, solve), and the ratio of that step to one forward + backward of a
dense ``nn.Linear(p, t)`` on the same rows (float32), all measured here in one run. The memory
is full, and deep enough (at least 5 batches, more when ``(depth + 1) rows <= p``) that the
step runs sGCV rather than the degenerate fallback; the depth and the step's status are printed.

Usage: ``python benchmarks/slimtik_step.py [--quick]``
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from collections.abc import Callable

import torch

from slimtrain import SlimTik
from slimtrain.linalg import SlimTikConfig, gram_statistics, initial_state, slimtik_update


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="p <= 257 and fewer repeats")
    args = parser.parse_args()
    ps = [17, 65, 257] if args.quick else [17, 65, 257, 1025]
    rows_list = [32, 25088]
    ts = [1, 72, 784]
    gen = torch.Generator().manual_seed(0)
    logging.getLogger("slimtrain").setLevel(logging.ERROR)  # statuses are printed per row
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 rows, "
          "float64 statistics and solve")
    header = (f"{'p':>5} {'rows':>6} {'t':>4} {'r':>3} | {'G,H (ms)':>9} {'solve (ms)':>10} "
              f"{'step (ms)':>9} | {'dense f+b (ms)':>14} {'step/f+b':>8} | status")
    print(header)
    print("-" * len(header))
    for p in ps:
        for rows in rows_list:
            for t in ts:
                repeats = 3 if (p >= 1025 or rows * p > 5e6) else 7
                Z = torch.randn(rows, p, generator=gen)
                C = torch.randn(rows, t, generator=gen)
                W = torch.randn(t, p, generator=gen, dtype=torch.float64) * 0.01
                stats = gram_statistics(Z, C)
                depth = max(5, math.ceil((p + 1) / rows))
                config = SlimTikConfig(memory_depth=depth)
                # A state with a full memory, as in training after the first few steps.
                state = initial_state(config)
                for _ in range(config.memory_depth):
                    _, state, _ = slimtik_update(W, stats, state, config)
                t_stats = _median_time(lambda Z=Z, C=C: gram_statistics(Z, C), repeats)
                t_solve = _median_time(
                    lambda W=W, stats=stats, state=state, config=config: slimtik_update(
                        W, stats, state, config),
                    repeats,
                )
                solver = SlimTik(memory_depth=depth)
                solver.state = state
                Wf = W.float()

                def public_step(solver=solver, state=state, Wf=Wf, Z=Z, C=C) -> str:
                    solver.state = state
                    return solver.step(Wf, Z, C)[1].status.name

                t_step = _median_time(public_step, repeats)
                status = public_step()
                layer = torch.nn.Linear(p, t)
                Zg = Z.clone()

                def forward_backward(layer=layer, Zg=Zg, C=C) -> None:
                    layer.zero_grad(set_to_none=True)
                    loss = 0.5 * ((layer(Zg) - C) ** 2).sum() / Zg.shape[0]
                    loss.backward()

                t_fb = _median_time(forward_backward, repeats)
                print(f"{p:>5} {rows:>6} {t:>4} {depth:>3} | {1e3 * t_stats:>9.2f} "
                      f"{1e3 * t_solve:>10.2f} {1e3 * t_step:>9.2f} | {1e3 * t_fb:>14.2f} "
                      f"{t_step / t_fb:>8.1f} | {status}")


if __name__ == "__main__":
    main()
