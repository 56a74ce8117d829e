"""Validation accuracy per epoch on scikit-learn's digits: slimTrain (cross-entropy head) against
Adam on all weights with cross-entropy, from the same start, over several seeds.

The setting of issue 13: MLP 64 -> 64 -> 64 tanh features, Linear head to 10 logits, batch 32,
memory depth 5, Adam on theta (slimTrain) or on all weights (baseline) at lr 1e-3 and 1e-2;
1440 training / 357 validation images after a seeded permutation
(:func:`slimtrain.problems.digits_classification_data`). Seed s sets the network's initial
weights (the same for both methods) and the shuffling. Prints a Markdown table: the mean over
the seeds with the [min, max] range, for the validation accuracy and the validation loss.

Usage: ``python benchmarks/classify_digits.py [--seeds 5] [--epochs 3] [--memory-depth 5]``
"""

from __future__ import annotations

import argparse
import logging
import statistics

import torch
from torch.utils.data import DataLoader

from slimtrain import GradientTrainer, SeparableModel, SlimTrain, fit
from slimtrain.problems import digits_classification_data, mlp_classifier_network

METHODS = (("slimTrain", 1e-3), ("Adam", 1e-3), ("slimTrain", 1e-2), ("Adam", 1e-2))


def run(
    method: str, lr: float, seed: int, epochs: int, memory_depth: int = 5
) -> tuple[list[float], list[float]]:
    """Validation accuracy and loss after each epoch (epoch 0 = the initial network)."""
    data = digits_classification_data()
    model = SeparableModel(*mlp_classifier_network(seed=seed))
    trainer: SlimTrain | GradientTrainer
    if method == "slimTrain":
        trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=lr),
                            loss="cross_entropy", memory_depth=memory_depth)
    else:
        trainer = GradientTrainer(model, torch.optim.Adam(model.parameters(), lr=lr),
                                  loss="cross_entropy")
    loader = DataLoader(data.train, batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(seed + 1))
    history = fit(trainer, loader, DataLoader(data.val, batch_size=512), epochs=epochs,
                  eval_train=False)
    return history.column("val_accuracy"), history.column("val_loss")


def _cell(values: list[float], digits: int) -> str:
    mean, low, high = statistics.mean(values), min(values), max(values)
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--memory-depth", type=int, default=5, help="slimTik's memory depth")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)  # small kernels: one thread is fastest and deterministic
    results = {
        m: [run(m[0], m[1], s, args.epochs, args.memory_depth) for s in range(args.seeds)]
        for m in METHODS
    }
    epochs = range(1, args.epochs + 1)
    for what, index, digits in (("validation accuracy", 0, 3), ("validation loss", 1, 3)):
        print(f"\n{what}, mean [min, max] over {args.seeds} seeds\n")
        print("| method | lr | " + " | ".join(f"epoch {e}" for e in epochs) + " |")
        print("|---|---|" + "---|" * len(epochs))
        for (method, lr), runs in results.items():
            cells = [_cell([r[index][e] for r in runs], digits) for e in epochs]
            print(f"| {method} | {lr:g} | " + " | ".join(cells) + " |")
    wins = [
        sum(s[0][1] >= a[0][1] for s, a in zip(results[("slimTrain", lr)], results[("Adam", lr)],
                                                strict=True))
        for lr in (1e-3, 1e-2)
    ]
    print(f"\nseeds where slimTrain >= Adam after epoch 1: lr 1e-3 {wins[0]}/{args.seeds}, "
          f"lr 1e-2 {wins[1]}/{args.seeds}")


if __name__ == "__main__":
    main()
