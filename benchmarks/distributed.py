"""Data-parallel slimTrain: step time on 1 and 2 processes, and the bytes all-reduced per step.

Each case trains the same network on the same global batches, once in this process and once
in two gloo processes on 127.0.0.1 (each rank holds half of every global batch, feature
extractor in DistributedDataParallel, one all-reduce of the slimTik statistics per step). The
machine's threads are split between the processes (2 threads for 1 process, 1 each for 2), so
both configurations use the same cores. Printed per case: the median step time of each
configuration and their ratio, the median time of the statistics all-reduce alone, and what
one step communicates: the slimTik message (``8 (p (p + 1) / 2 + p t + 3)`` bytes, or only the
phase blocks and the bias column of a strided transposed-convolution head) and DDP's gradient
all-reduce of theta (4 bytes per float32 parameter).

Usage: ``python benchmarks/distributed.py [--steps N]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from slimtrain import SeparableModel, SlimTrain
from slimtrain.linalg.stats import GramStats
from slimtrain.problems.networks import autoencoder_network, cdr_network
from slimtrain.training.distributed import (
    data_parallel,
    distributed_reducer,
    end_process,
    free_local_port,
    leave_process_group,
    stats_message_bytes,
)

CASES = {
    "autoencoder (width 16), global batch 32": ("autoencoder", 32),
    "CDR network 55->16->72, global batch 32": ("cdr", 32),
}


def _build(kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    return autoencoder_network(seed=0) if kind == "autoencoder" else cdr_network(seed=0)


def _batches(kind: str, batch: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        if kind == "autoencoder":
            x = torch.randn(batch, 1, 28, 28, generator=gen)
            out.append((x, x))
        else:
            out.append((torch.rand(batch, 55, generator=gen) * 2 - 1,
                        torch.randn(batch, 72, generator=gen)))
    return out


def _run(rank: int, world: int, kind: str, batch: int, steps: int) -> dict[str, float]:
    logging.getLogger("slimtrain").setLevel(logging.ERROR)  # sGCV statuses of random data
    features, head = _build(kind)
    model = SeparableModel(features, head)
    comm: list[float] = []
    reducer = None
    if world > 1:
        data_parallel(model)
        inner = distributed_reducer()

        def reducer(stats: GramStats) -> GramStats:
            start = time.perf_counter()
            reduced = inner(stats)
            comm.append(time.perf_counter() - start)
            return reduced

    trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-3),
                        memory_depth=5, reducer=reducer)
    local = batch // world
    times = []
    for i, (x, y) in enumerate(_batches(kind, batch, steps + 3)):
        xs, ys = x[rank * local : (rank + 1) * local], y[rank * local : (rank + 1) * local]
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        trainer.step(xs, ys)
        if i >= 3:  # warm-up steps fill the memory
            times.append(time.perf_counter() - start)
    theta = sum(p.numel() for p in model.feature_parameters())
    with torch.no_grad():
        x, y = _batches(kind, 2, 1)[0]
        structure = trainer.adapter.statistics(model.head, model.features(x), y).structure
    p, t = trainer.adapter.num_features(model.head), trainer.adapter.num_outputs(model.head)
    return {
        "message": stats_message_bytes(p, t, structure),
        "step": statistics.median(times),
        "comm": statistics.median(comm[3:]) if comm else 0.0,
        "p": p,
        "t": t,
        "theta": theta,
        "sum_lambda": trainer.sum_lambda,
    }


def _worker(rank: int, world: int, port: int, kind: str, batch: int, steps: int, threads: int,
            out: str) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    finished = False
    try:
        result = _run(rank, world, kind, batch, steps)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        finished = True
    finally:
        leave_process_group(wait=finished)
    end_process()  # not the interpreter's shutdown: see end_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads in all; gloo on 127.0.0.1; median of "
          f"{args.steps} steps")
    print(f"{'case':<42} {'1 proc ms':>9} {'2 proc ms':>9} {'2/1':>6} {'allreduce ms':>12} | "
          f"{'slimTik bytes':>13} {'DDP grad bytes':>14}")
    for name, (kind, batch) in CASES.items():
        single = _run(0, 1, kind, batch, args.steps)
        with tempfile.TemporaryDirectory() as out:
            mp.spawn(_worker, args=(2, free_local_port(), kind, batch, args.steps,
                                    max(1, threads // 2), out), nprocs=2, join=True)
            ranks = [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(2)]
        multi = max(r["step"] for r in ranks)
        p, t = int(single["p"]), int(single["t"])
        message = int(single["message"])
        grads = 4 * int(single["theta"])
        print(f"{name:<42} {1e3 * single['step']:>9.2f} {1e3 * multi:>9.2f} "
              f"{multi / single['step']:>6.2f} {1e3 * ranks[0]['comm']:>12.3f} | "
              f"{message:>13,d} {grads:>14,d}   (p={p}, t={t})")
        if abs(ranks[0]["sum_lambda"] - single["sum_lambda"]) > 1e-8 * abs(single["sum_lambda"]):
            print(f"  note: Lambda differs between 1 and 2 processes: {single['sum_lambda']:.6g} "
                  f"vs {ranks[0]['sum_lambda']:.6g} (BatchNorm sees half batches per rank)")


if __name__ == "__main__":
    main()
