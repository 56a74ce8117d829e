"""How often a finished two-process gloo run dies on its way out, by the way its workers end.

Each run spawns two processes that wrap a small network in ``DistributedDataParallel``, take
three steps and an all-reduce, and end; one of them (``--lag-rank``) waits ``--lag`` seconds
first, so the other exits while its peer still holds the group. A run that finished its work
but had a process killed by a signal (SIGABRT: "terminate called without an active
exception") counts as aborted. The endings:

- ``plain``: ``destroy_process_group()``, then the interpreter's normal exit;
- ``barrier``: a barrier, ``destroy_process_group()``, the normal exit;
- ``end_process``: ``leave_process_group()`` (barrier and destroy), then
  :func:`slimtrain.training.distributed.end_process` (flush, ``os._exit``).

    python benchmarks/process_exit.py --runs 20
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessExitedException

from slimtrain.training.distributed import end_process, free_local_port, leave_process_group

ENDINGS = ("plain", "barrier", "end_process")


def _worker(rank: int, port: int, ending: str, lag_rank: int, lag: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    for _ in range(3):
        model(torch.randn(8, 4)).sum().backward()
        total = torch.ones(5)
        dist.all_reduce(total)
    if rank == lag_rank:
        time.sleep(lag)
    if ending == "end_process":
        leave_process_group(wait=True)
        end_process(0)
    if ending == "barrier":
        dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per ending and lagging rank")
    parser.add_argument("--lag", type=float, default=0.5, help="seconds one process waits")
    args = parser.parse_args()
    print(f"torch {torch.__version__}; two gloo processes on 127.0.0.1, one {args.lag} s "
          f"behind; {args.runs} runs per ending and lagging rank", flush=True)
    print(f"{'ending':<12} {'aborted':>8} {'runs':>5} {'seconds':>8}", flush=True)
    for ending in ENDINGS:
        aborted = 0
        start = time.perf_counter()
        for lag_rank in (0, 1):
            for _ in range(args.runs):
                try:
                    mp.spawn(_worker, args=(free_local_port(), ending, lag_rank, args.lag),
                             nprocs=2, join=True)
                except ProcessExitedException as error:
                    if error.signal_name is None:
                        raise
                    aborted += 1
        seconds = time.perf_counter() - start
        print(f"{ending:<12} {aborted:>8} {2 * args.runs:>5} {seconds:>8.0f}", flush=True)
    sys.stderr.flush()


if __name__ == "__main__":
    main()
