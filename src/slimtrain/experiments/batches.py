"""Batches that do not depend on the number of processes.

Every epoch one permutation of the training set is drawn from the run's seed and cut into
global batches; each process takes its slice of every global batch. So ``--nproc 2`` sees the
same global batches as one process and, for every method, the same run to float rounding
(the slimTik statistics and the gradients are sums or means over the global batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from slimtrain._validation import check_int
from slimtrain.training import distributed as dist_utils

__all__ = ["GlobalBatchSampler", "make_loaders", "VAL_BATCH_SIZE"]

#: Samples per evaluation batch (evaluation sums over all samples, so it changes no result).
VAL_BATCH_SIZE = 256


class GlobalBatchSampler(Sampler[list[int]]):
    """This process's slices of the global batches of a seeded permutation per epoch.

    Parameters
    ----------
    n_samples : int
    batch_size : int
        Global batch size; ``world_size`` must divide it.
    generator : torch.Generator
        Draws one permutation per epoch (saved in checkpoints, so a resumed run continues
        with the same batches).
    rank, world_size : int
        This process and the number of processes.

    The last global batch may be smaller than ``batch_size``: each process takes an equal
    share of it, so up to ``world_size - 1`` of its samples are left out under several
    processes (none with one process, or when ``batch_size`` divides the training set).
    """

    def __init__(self, n_samples: int, batch_size: int, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n_samples = check_int("n_samples", n_samples, minimum=1)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.world_size = check_int("world_size", world_size, minimum=1)
        self.rank = check_int("rank", rank, minimum=0, maximum=self.world_size - 1)
        if self.batch_size % self.world_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by the {self.world_size} "
                "processes; choose a batch size that is a multiple of the number of processes"
            )
        self.generator = generator

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n_samples, generator=self.generator).tolist()
        for start in range(0, self.n_samples, self.batch_size):
            batch = order[start : start + self.batch_size]
            share = len(batch) // self.world_size
            if share == 0:  # fewer samples than processes: every rank skips it
                return
            yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        full, rest = divmod(self.n_samples, self.batch_size)
        return full + (1 if rest >= self.world_size else 0)


def make_loaders(
    train: Dataset[Any], val: Dataset[Any], batch_size: int, seed: int
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Training batches of :class:`GlobalBatchSampler` and this process's share of the
    validation set (contiguous, unpadded: the evaluation sums over processes)."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    generator = torch.Generator().manual_seed(seed)
    sampler = GlobalBatchSampler(len(train), batch_size, generator, rank, world)  # type: ignore[arg-type]
    n_val = len(val) if isinstance(val, Sized) else 0
    bounds = [n_val * r // world for r in range(world + 1)]
    shard = torch.utils.data.Subset(val, range(bounds[rank], bounds[rank + 1]))
    return (DataLoader(train, batch_sampler=sampler),
            DataLoader(shard, batch_size=VAL_BATCH_SIZE))
