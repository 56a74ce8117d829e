r"""Data-parallel slimTrain with :mod:`torch.distributed`.

Every process holds a shard of each global batch. The feature extractor is wrapped in
``DistributedDataParallel`` (its gradients are averaged as usual); the head update needs only
sums over rows, so each process forms the statistics of its shard and one all-reduce gives the
statistics of the global batch:

.. math::

    Z^\top Z = \sum_{\text{ranks}} Z_r^\top Z_r, \quad
    Z^\top C = \sum_r Z_r^\top C_r, \quad
    \|C\|_F^2 = \sum_r \|C_r\|_F^2, \quad N = \sum_r N_r, \quad \text{rows} = \sum_r \text{rows}_r .

Everything else of the step (``H = G W^T - Z^T C / N``, ``||R||^2``, the sGCV trace and residual
terms, the eigendecomposition and the solve) follows from these sums and the shared ``W``, so
every rank solves the same small system and ends the step with the same ``W``; no broadcast of
``W`` is needed. One step communicates a single float64 message of
``p (p + 1) / 2 + p t + 3`` numbers (the Gram is symmetric: only its upper triangle travels),
that is ``8 (p (p + 1) / 2 + p t + 3)`` bytes (fewer for a strided transposed-convolution
head, whose Gram is block diagonal: only the blocks and the bias column travel), besides DDP's
gradient all-reduce of theta.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

from slimtrain._threads import threads_per_local_process
from slimtrain._validation import check_int
from slimtrain.linalg.stats import GramStats
from slimtrain.linalg.structured import GramStructure, structure_zeros

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "distributed_reducer",
    "stats_message_bytes",
    "all_reduce_sums",
    "agree_batch_ok",
    "check_same_across_ranks",
    "free_local_port",
    "launched_world_size",
    "init_from_env",
    "leave_process_group",
    "end_process",
    "data_parallel",
    "average_unwrapped_gradients",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0: the process that logs, shows progress and writes files."""
    return rank() == 0


def stats_message_bytes(p: int, t: int, structure: GramStructure | None = None) -> int:
    """Bytes all-reduced per slimTik step for ``p`` features and ``t`` outputs.

    With a :class:`~slimtrain.linalg.structured.GramStructure` (a strided transposed
    convolution) only the Gram entries it allows travel: the upper triangles of the blocks and
    the bias column.
    """
    return 8 * (int(_gram_entries(p, structure, "cpu").shape[1]) + p * t + 3)


@functools.lru_cache(maxsize=32)
def _gram_entries(p: int, structure: GramStructure | None, device: str) -> Tensor:
    """Upper-triangle indices ``(2, n)`` of the Gram entries that can be non-zero."""
    iu = torch.triu_indices(p, p)
    if structure is not None and structure.p == p:
        support = ~structure_zeros(structure, "cpu")
        iu = iu[:, support[iu[0], iu[1]]]
    return iu.to(device)


def distributed_reducer(
    group: dist.ProcessGroup | None = None, debug: bool = False
) -> Callable[[GramStats], GramStats]:
    """A :class:`GramStats` reducer for :class:`~slimtrain.SlimTik`: one all-reduce (SUM).

    The upper triangle of ``Z^T Z`` (only its possibly non-zero entries when the statistics
    carry a block structure), ``Z^T C``, ``||C||^2`` and the sample and row counts are packed
    into one float64 message (counts are exact in float64 up to 2^53).

    Parameters
    ----------
    group : ProcessGroup, optional
        Default: the world.
    debug : bool
        Also check after the reduction that every rank holds the same statistics.
    """

    def reduce(stats: GramStats) -> GramStats:
        p, t = stats.ztc.shape
        iu = _gram_entries(p, stats.structure, str(stats.ztz.device))
        counts = torch.tensor(
            [float(stats.ctc), float(stats.n_samples), float(stats.n_rows)],
            dtype=torch.float64,
            device=stats.ztz.device,
        )
        message = torch.cat(
            [
                stats.ztz[iu[0], iu[1]].to(torch.float64),
                stats.ztc.reshape(-1).to(torch.float64),
                counts,
            ]
        )
        dist.all_reduce(message, op=dist.ReduceOp.SUM, group=group)
        n_tri = iu.shape[1]
        ztz = torch.zeros(p, p, dtype=torch.float64, device=message.device)
        ztz[iu[0], iu[1]] = message[:n_tri]
        ztz = ztz + ztz.T - torch.diag(torch.diagonal(ztz))
        ztc = message[n_tri : n_tri + p * t].reshape(p, t)
        ctc, n_samples, n_rows = message[n_tri + p * t :]
        if debug:
            check_same_across_ranks(message, "slimTik batch statistics", group)
        return GramStats(ztz, ztc, ctc, int(round(float(n_samples))), int(round(float(n_rows))),
                         stats.structure)

    return reduce


def all_reduce_sums(values: list[float], device: torch.device | None = None) -> list[float]:
    """Sum a few floats over all ranks (identity without a process group)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor]


def agree_batch_ok(error: BaseException | None, device: torch.device | None = None) -> None:
    """Tell every rank whether all ranks accepted their batch; raise on the others if not.

    Call it exactly once per step on every rank, before the step's first collective: a rank
    whose batch failed validation passes its ``error`` (and then raises it itself), the others
    pass ``None`` and get a ``ValueError`` naming the failing rank if there is one. So a bad
    shard stops the step on every process, with nothing changed, instead of leaving the other
    processes waiting in the all-reduce. No-op without a process group.
    """
    if not is_distributed():
        return
    failed = torch.tensor([0 if error is None else rank() + 1], dtype=torch.int64,
                          device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    culprit = int(failed.item()) - 1
    if error is None and culprit >= 0:
        raise ValueError(
            f"process {culprit} rejected its shard of this batch (see its error); every process "
            "skipped the step and nothing was changed"
        )


def check_same_across_ranks(
    tensor: Tensor, what: str, group: dist.ProcessGroup | None = None
) -> None:
    """Raise ``RuntimeError`` unless ``tensor`` is bitwise identical on every rank."""
    if not is_distributed():
        return
    digest = hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).digest()
    mine = torch.tensor(list(digest[:8]), dtype=torch.int64, device=tensor.device)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine, group=group)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"{what} differs across ranks; the processes have diverged")


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that is free at the moment of the call.

    For the ``init_method=f"tcp://127.0.0.1:{port}"`` of a group of processes on one machine
    (``torch.multiprocessing.spawn``); another program may still take it before the group
    binds it.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started: ``WORLD_SIZE``, 1 when it is not set.

    Raises ``ValueError`` for a value that is not a positive integer.
    """
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer (torchrun sets it), "
                         f"found {value!r}")
    return size


def init_from_env(device: str = "cpu") -> bool:
    """Initialise the default process group from torchrun's environment, if present.

    Uses gloo on CPU and nccl on CUDA, and gives each process ``cores / LOCAL_WORLD_SIZE``
    threads (:func:`slimtrain._threads.threads_per_local_process`). Returns True when a group
    of more than one process was set up (or already existed).
    """
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if launched_world_size() <= 1:
        return False
    backend = "nccl" if device.startswith("cuda") else "gloo"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = threads_per_local_process(local)
    torch.set_num_threads(threads)
    dist.init_process_group(backend=backend)
    logger.info("%d threads per process (%d processes on this machine)", threads, local)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    logger.info("process group: %s, rank %d of %d", backend, rank(), world_size())
    return True


def leave_process_group(wait: bool = True) -> None:
    """Leave the default process group cleanly, if one exists.

    With ``wait=True`` (every rank finished its work) a barrier first lets rank 0 finish its
    writes before any rank tears its connections down. ``wait=False`` after an error skips the
    barrier, which a rank that failed elsewhere would never reach. The barrier does not make
    the process's exit safe: a rank that exits while its peer still runs can die of SIGABRT
    in the interpreter's shutdown (exit code -6 under torchrun although the run had finished);
    end the process with :func:`end_process`.
    """
    if not dist.is_initialized():
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()


def end_process(code: int = 0) -> NoReturn:
    """End a process of a process group once its work is done: flush, then ``os._exit``.

    Call it last in a worker (a ``torchrun`` process, a ``torch.multiprocessing.spawn``
    function), after :func:`leave_process_group` and after every result is written. It
    flushes the standard streams and the logging handlers and ends the process with
    ``code`` without the interpreter's shutdown, which can abort a finished run: the gloo
    backend's worker threads outlive ``destroy_process_group`` while a
    ``DistributedDataParallel`` module holds the group, and a worker that still has to
    release a tensor of the last collective needs the GIL for it; if it gets the GIL while
    the interpreter is finalizing, the thread is unwound inside a destructor and the process
    dies of SIGABRT ("terminate called without an active exception", PyTorch 2.13), as a
    process that exits while its peer still runs did in up to 11 of 75 runs on two cores
    (``benchmarks/process_exit.py``; the README has the figures). ``os._exit`` ends every
    thread at once. ``atexit`` handlers do not run.

    Parameters
    ----------
    code : int
        Exit status, 0 to 255.
    """
    code = check_int("code", code, minimum=0, maximum=255)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed or replaced streams
            pass
    logging.shutdown()
    os._exit(code)


def data_parallel(model: torch.nn.Module, **ddp_kwargs: object) -> torch.nn.Module:
    """Wrap the feature extractor of a :class:`~slimtrain.SeparableModel` in DDP, in place.

    The head stays unwrapped: its weights are solved identically on every rank and have
    ``requires_grad=False``, so DDP has nothing to synchronise there. Keyword arguments go to
    :class:`torch.nn.parallel.DistributedDataParallel` (e.g. ``device_ids`` on CUDA).
    """
    from torch.nn.parallel import DistributedDataParallel

    features = getattr(model, "features", None)
    if not isinstance(features, torch.nn.Module):
        raise TypeError(
            f"data_parallel expects a SeparableModel with .features, found {type(model).__name__}"
        )
    if not isinstance(features, DistributedDataParallel):
        model.features = DistributedDataParallel(features, **ddp_kwargs)  # type: ignore[arg-type]
    return model


def average_unwrapped_gradients(model: torch.nn.Module) -> None:
    """Average over the processes the gradients of parameters that DDP does not manage.

    :func:`data_parallel` wraps only the feature extractor, so a gradient-trained head would
    otherwise take a different step on every rank. One all-reduce of the concatenated
    gradients; parameters without a gradient are skipped (the same ones on every rank). No-op
    without a process group.
    """
    if not is_distributed():
        return
    from torch.nn.parallel import DistributedDataParallel

    managed = {id(p) for m in model.modules() if isinstance(m, DistributedDataParallel)
               for p in m.parameters()}
    grads = [p.grad for p in model.parameters() if id(p) not in managed and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
