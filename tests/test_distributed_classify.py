"""Classification heads under torch.distributed: each rank forms the working targets of its
shard, one all-reduce sums the statistics, and 2 gloo processes match 1 on the same batches."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from slimtrain import SeparableModel, SlimTrain
from slimtrain.training.distributed import data_parallel

STEPS = 4
LOCAL = 12  # samples per rank and step
CLASSES = 4


def _model(kind: str) -> SeparableModel:
    torch.manual_seed(0)
    if kind == "linear":
        features = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 9), nn.Tanh())
        head: nn.Module = nn.Linear(9, CLASSES)
    else:  # per-pixel classes: a Conv2d head, rows are pixels
        features = nn.Sequential(nn.Linear(5, 3 * 4 * 4), nn.Tanh(), nn.Unflatten(1, (3, 4, 4)))
        head = nn.Conv2d(3, CLASSES, 3, padding=1)
    return SeparableModel(features, head).double()


def _data(kind: str, n: int):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    shape = (n,) if kind == "linear" else (n, 4, 4)
    return x, torch.randint(0, CLASSES, shape, generator=gen)


def _train(kind: str, world: int, rank: int):
    model = _model(kind)
    if world > 1:
        data_parallel(model)
    trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-2),
                        loss="cross_entropy", memory_depth=2, debug_distributed=world > 1)
    x, y = _data(kind, STEPS * LOCAL * 2)
    glob = LOCAL * 2
    for s in range(STEPS):
        xb, yb = x[s * glob : (s + 1) * glob], y[s * glob : (s + 1) * glob]
        if world > 1:
            xb, yb = xb[rank * LOCAL : (rank + 1) * LOCAL], yb[rank * LOCAL : (rank + 1) * LOCAL]
        trainer.step(xb, yb)
    features = model.features.module if world > 1 else model.features
    return {
        "head": [p.detach().clone() for p in model.head.parameters()],
        "theta": [p.detach().clone() for p in features.parameters()],
        "sum_lambda": trainer.sum_lambda,
    }


KINDS = ("linear", "conv2d")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:  # both heads in one process group (one spawn: process start-up dominates)
        for kind in KINDS:
            torch.save(_train(kind, world, rank), Path(out) / f"{kind}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()



@pytest.mark.timeout(180)
def test_two_processes_match_one_with_cross_entropy(tmp_path, free_port):
    mp.spawn(_worker, args=(2, free_port, str(tmp_path)), nprocs=2, join=True)
    for kind, r in itertools.product(KINDS, range(2)):
        single = _train(kind, 1, 0)
        multi = torch.load(tmp_path / f"{kind}-rank{r}.pt", weights_only=True)
        assert multi["sum_lambda"] == pytest.approx(single["sum_lambda"], rel=1e-10)
        for a, b in zip(multi["head"], single["head"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(multi["theta"], single["theta"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
