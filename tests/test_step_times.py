"""SlimTrain.last_step_times: the split of a step that benchmarks/step_overhead.py reports."""

from __future__ import annotations

import time

import torch
from torch import nn

from slimtrain import SeparableModel, SlimTrain


def test_last_step_times_split_the_step() -> None:
    torch.manual_seed(0)
    model = SeparableModel(nn.Sequential(nn.Linear(3, 8), nn.Tanh()), nn.Linear(8, 2))
    trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-3))
    assert trainer.last_step_times == {}
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    start = time.perf_counter()
    info = trainer.step(x, y)
    outside = time.perf_counter() - start
    parts = trainer.last_step_times
    assert set(parts) == {"statistics", "solve", "rest"}
    assert all(value > 0 for value in parts.values())
    assert sum(parts.values()) <= min(info["time"] + 1e-3, outside)
