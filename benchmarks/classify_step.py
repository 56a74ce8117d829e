"""Median time per training step for classification: slimTrain with the cross-entropy head,
slimTrain with the squared loss (one-hot targets), and Adam with cross-entropy, side by side.

Issue 13's acceptance: the cross-entropy step costs no more than the squared-loss step plus one
head forward (logits at the current W, no autograd) and one softmax. Cases: the digits MLP
(64 -> 64 -> 64 tanh, Linear head 64 -> 10, p = 65) at batch 32, and the MNIST CNN
(:func:`slimtrain.problems.networks.cnn_classifier_network`, head 64 -> 10) at batch 32 and 128.
Steps rotate between the three trainers so all see the same machine load; memory depth 5.

Usage: ``python benchmarks/classify_step.py [--steps N] [--threads T]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
import torch.nn.functional as F

from slimtrain import GradientTrainer, SeparableModel, SlimTrain
from slimtrain.problems.networks import cnn_classifier_network, mlp_classifier_network


def _case(name: str, build, x: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
    one_hot = F.one_hot(labels, 10).to(x.dtype)
    trainers = {}
    for key in ("cross_entropy", "squared", "adam"):
        model = SeparableModel(*build())  # the same seeded start for each
        if key == "adam":
            trainers[key] = (GradientTrainer(model, torch.optim.Adam(model.parameters(), lr=1e-3),
                                             loss="cross_entropy"), labels)
        else:
            trainers[key] = (SlimTrain(model, torch.optim.Adam(model.feature_parameters(),
                                                               lr=1e-3),
                                       loss=key, memory_depth=5),
                             labels if key == "cross_entropy" else one_hot)
    times: dict[str, list[float]] = {key: [] for key in trainers}
    for i in range(steps + 3):
        for key, (trainer, y) in trainers.items():
            start = time.perf_counter()
            trainer.step(x, y)
            if i >= 3:  # warm-up fills slimTik's memory
                times[key].append(time.perf_counter() - start)
    ce, sq, adam = (statistics.median(times[k]) * 1e3 for k in ("cross_entropy", "squared", "adam"))
    print(f"{name:<26} {ce:>9.2f} {sq:>9.2f} {adam:>9.2f} {ce / sq:>8.2f} {ce / adam:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms per step")
    print(f"{'case':<26} {'slim-CE':>9} {'slim-sq':>9} {'Adam-CE':>9} {'CE/sq':>8} {'CE/Adam':>9}")
    for batch in (32, 128):
        x = torch.randn(batch, 64, generator=gen)
        labels = torch.randint(0, 10, (batch,), generator=gen)
        _case(f"digits MLP, batch {batch}", lambda: mlp_classifier_network(seed=0), x, labels,
              args.steps)
    for batch in (32, 128):
        x = torch.randn(batch, 1, 28, 28, generator=gen)
        labels = torch.randint(0, 10, (batch,), generator=gen)
        _case(f"MNIST CNN, batch {batch}", lambda: cnn_classifier_network(seed=0), x, labels,
              args.steps)


if __name__ == "__main__":
    main()
