"""Time of one slimTik step, split into forming the batch statistics (G, H) and the rest.

For p in {17, 65, 257, 1025}, rows in {32, 25088}, t in {1, 72, 784}: the median time of
``gram_statistics`` (float32 rows accumulated in float64), of ``slimtik_update`` (eigh, sGCV
over 61 trial points plus refinement, solve) with torch's thread count and with one thread
side by side, of the whole public ``SlimTik.step(W, Z, C)`` (input checks, statistics, solve;
it runs solves of p <= ``SINGLE_THREAD_MAX_P`` single-threaded), and the ratio of that step to
one forward + backward of a dense ``nn.Linear(p, t)`` on the same rows (float32), all measured
here in one run. The memory is full, and deep enough (at least 5 batches, more when
``(depth + 1) rows <= p``) that the step runs sGCV rather than the degenerate fallback; the
depth and the step's status are printed.

A second table times the float64 ``eigh`` of the head sizes of the experiments (CDR p = 17,
the autoencoder's four phase blocks 4 x 64 of p = 257, dense 257, width 64's blocks 4 x 256 of
p = 1025, dense 1025) on the CPU with one thread and with torch's threads, and, with
``--device cuda``, on the device and as a round trip through the CPU (copy, CPU eigh, copy
back: what ``SlimTik(cpu_eigh_max_size=...)`` does). Set ``cpu_eigh_max_size`` from it.

Usage: ``python benchmarks/slimtik_step.py [--quick] [--device cuda] [--eigh-only]``
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
from slimtrain._threads import num_threads
from slimtrain.linalg import SlimTikConfig, gram_statistics, initial_state, slimtik_update


def _median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed()  # warm-up
    return statistics.median(timed() for _ in range(repeats))


def eigh_table(device: torch.device, repeats: int) -> None:
    """Float64 eigh of the experiments' head sizes: CPU (1 thread, all), device, round trip."""
    sizes = [("17", 1, 17), ("4x64", 4, 64), ("257", 1, 257), ("4x256", 4, 256),
             ("1025", 1, 1025)]
    gen = torch.Generator().manual_seed(1)
    on_device = device.type != "cpu"
    cols = f"{'size':>6} | {'cpu 1 thr (ms)':>14} {f'cpu {torch.get_num_threads()} thr (ms)':>14}"
    if on_device:
        cols += f" | {'device (ms)':>11} {'via cpu (ms)':>12} {'device/cpu1':>11}"
    print("\nfloat64 eigh of the head sizes (batched for the phase blocks)")
    print(cols)
    print("-" * len(cols))
    cpu = torch.device("cpu")
    for label, batch, n in sizes:
        X = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
        A = X @ X.transpose(1, 2) / n
        reps = max(3, repeats // (4 if n >= 1025 else 1))
        with num_threads(1):
            t1 = _median_time(lambda A=A: torch.linalg.eigh(A), reps, cpu)
        tn = _median_time(lambda A=A: torch.linalg.eigh(A), reps, cpu)
        row = f"{label:>6} | {1e3 * t1:>14.3f} {1e3 * tn:>14.3f}"
        if on_device:
            Ad = A.to(device)
            td = _median_time(lambda Ad=Ad: torch.linalg.eigh(Ad), reps, device)

            def round_trip(Ad: torch.Tensor = Ad) -> None:
                with num_threads(1):
                    s, V = torch.linalg.eigh(Ad.cpu())
                s.to(device), V.to(device)

            tr = _median_time(round_trip, reps, device)
            row += f" | {1e3 * td:>11.3f} {1e3 * tr:>12.3f} {td / t1:>11.2f}"
        print(row)


def step_table(device: torch.device, quick: bool) -> None:
    ps = [17, 65, 257] if quick else [17, 65, 257, 1025]
    rows_list = [32, 25088]
    ts = [1, 72, 784]
    gen = torch.Generator().manual_seed(0)
    header = (f"{'p':>5} {'rows':>6} {'t':>4} {'r':>3} | {'G,H (ms)':>9} {'solve (ms)':>10} "
              f"{'solve 1t':>8} {'step (ms)':>9} | {'dense f+b (ms)':>14} {'step/f+b':>8} | "
              "status")
    print(header)
    print("-" * len(header))
    for p in ps:
        for rows in rows_list:
            for t in ts:
                repeats = 3 if (p >= 1025 or rows * p > 5e6) else 7
                Z = torch.randn(rows, p, generator=gen).to(device)
                C = torch.randn(rows, t, generator=gen).to(device)
                W = (torch.randn(t, p, generator=gen, dtype=torch.float64) * 0.01).to(device)
                stats = gram_statistics(Z, C)
                depth = max(5, math.ceil((p + 1) / rows))
                config = SlimTikConfig(memory_depth=depth)
                # A state with a full memory, as in training after the first few steps.
                state = initial_state(config)
                for _ in range(config.memory_depth):
                    _, state, _ = slimtik_update(W, stats, state, config)
                t_stats = _median_time(lambda Z=Z, C=C: gram_statistics(Z, C), repeats, device)

                def solve(W=W, stats=stats, state=state, config=config) -> object:
                    return slimtik_update(W, stats, state, config)

                t_solve = _median_time(solve, repeats, device)
                with num_threads(1):
                    t_solve1 = _median_time(solve, repeats, device)
                solver = SlimTik(memory_depth=depth)
                solver.state = state
                Wf = W.float()

                def public_step(solver=solver, state=state, Wf=Wf, Z=Z, C=C) -> str:
                    solver.state = state
                    return solver.step(Wf, Z, C)[1].status.name

                t_step = _median_time(public_step, repeats, device)
                status = public_step()
                layer = torch.nn.Linear(p, t).to(device)
                Zg = Z.clone()

                def forward_backward(layer=layer, Zg=Zg, C=C) -> None:
                    layer.zero_grad(set_to_none=True)
                    loss = 0.5 * ((layer(Zg) - C) ** 2).sum() / Zg.shape[0]
                    loss.backward()

                t_fb = _median_time(forward_backward, repeats, device)
                print(f"{p:>5} {rows:>6} {t:>4} {depth:>3} | {1e3 * t_stats:>9.2f} "
                      f"{1e3 * t_solve:>10.2f} {1e3 * t_solve1:>8.2f} {1e3 * t_step:>9.2f} | "
                      f"{1e3 * t_fb:>14.2f} {t_step / t_fb:>8.1f} | {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="p <= 257 and fewer repeats")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--eigh-only", action="store_true", help="only the eigh table")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False here")
    logging.getLogger("slimtrain").setLevel(logging.ERROR)  # statuses are printed per row
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          "float32 rows, float64 statistics and solve")
    if not args.eigh_only:
        step_table(device, args.quick)
    eigh_table(device, 5 if args.quick else 11)


if __name__ == "__main__":
    main()
