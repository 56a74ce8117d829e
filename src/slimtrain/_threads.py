"""Thread-count control for small dense kernels.

torch's intra-op pool speeds up large products, but small LAPACK calls (a 65 x 65 ``eigh``,
the sGCV candidates, a 2000 x 2000 Nystrom eigensystem) gain little from it and slow down by one
to two orders of magnitude when the cores are shared with another busy process. The solvers
run such calls inside :func:`num_threads`, which sets torch's intra-op thread count for the
block and restores the caller's setting afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["num_threads", "threads_per_local_process"]


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, then restore the previous count.

    A no-op when ``n`` equals the current count (``torch.set_num_threads`` costs a few
    microseconds otherwise). ``n`` is trusted: callers pass a positive constant.
    """
    previous = torch.get_num_threads()
    if n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def threads_per_local_process(local_world_size: int) -> int:
    """Threads for each of ``local_world_size`` processes sharing this machine's cores.

    ``os.sched_getaffinity`` counts the cores this process may use (a container's or
    ``taskset``'s limit), falling back to ``os.cpu_count()``.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_world_size))
