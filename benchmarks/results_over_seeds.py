"""README results over several seeds: validation loss per epoch, median and range per method.

Runs the CDR demo (50 epochs, batch 5) and the MNIST autoencoder (10 epochs, batch 32, from
``--data``) for each seed through the package's own experiment functions
(:func:`slimtrain.experiments.make_setup`, :func:`~slimtrain.experiments.run_methods`), every
method from the same initial weights and batch order within a seed. The seed sets the initial
weights and the batch order (the data sets have their own fixed seeds). For each problem it
prints one table: per method, the validation loss after selected epochs and the best over the
run, each as ``median [min, max]`` over the seeds, plus the training seconds, and which method
is lowest at each selected epoch in how many seeds (a single-seed ranking need not survive
another seed).

Usage: ``python benchmarks/results_over_seeds.py [--seeds 0 1 2] [--data DIR] [--only cdr|
autoencoder] [--epochs E] [--quick] [--device cpu|cuda] [--methods ...]``. ``--quick`` runs
the experiments' quick settings (2 epochs, smaller CDR training set) as a smoke test.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from slimtrain.experiments import REGISTRY, TrainingOptions, make_setup, run_methods
from slimtrain.experiments.options import METHODS

LABELS = {
    "slimtrain": "slimTrain + Adam",
    "slimtrain-prodigy": "slimTrain + Prodigy",
    "adam": "Adam (lr 1e-3)",
    "prodigy": "Prodigy",
    "schedulefree": "schedule-free AdamW",
}


def _fmt(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.4g} [{min(values):.4g}, {max(values):.4g}]"


def _problem(name: str, args: argparse.Namespace) -> None:
    declared = REGISTRY[name]
    defaults = {**declared.defaults, **((declared.quick or {}) if args.quick else {})}
    epochs = args.epochs or defaults["epochs"]
    data = args.data if name == "autoencoder" else None
    curves: dict[str, list[dict[int, float]]] = {m: [] for m in args.methods}  # per seed
    best: dict[str, list[float]] = {m: [] for m in args.methods}
    seconds: dict[str, list[float]] = {m: [] for m in args.methods}
    label = ""
    for seed in args.seeds:
        setup = make_setup(name, seed=seed, data_dir=data, quick=args.quick)
        label = setup.loss_label
        config = TrainingOptions(epochs=epochs, batch_size=defaults["batch_size"], lr=1e-3,
                           seed=seed, device=args.device)
        start = time.perf_counter()
        results = run_methods(setup, args.methods, config, progress=False)
        print(f"{name}, seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
        for method, result in results.items():
            scale = setup.loss_scale
            curves[method].append({int(r["epoch"]): scale * r["val_loss"]
                                   for r in result.history.records})
            best[method].append(scale * result.history.best_val_loss)
            seconds[method].append(sum(result.history.column("epoch_time")))
    shown = sorted({e for e in (1, 2, 3, epochs) if 1 <= e <= epochs})
    print(f"\n{name}: validation loss ({label}), median [min, max] over seeds "
          f"{args.seeds}, {epochs} epochs, device {args.device}")
    head = " | ".join(f"epoch {e}" for e in shown)
    print(f"| method | {head} | best | training s |")
    print("|---" * (len(shown) + 3) + "|")
    for method in args.methods:
        cols = [_fmt([c[e] for c in curves[method]]) for e in shown]
        print(f"| {LABELS.get(method, method)} | {' | '.join(cols)} | {_fmt(best[method])} | "
              f"{_fmt(seconds[method])} |")
    for e in shown:
        wins: dict[str, int] = {}
        for s in range(len(args.seeds)):
            leader = min(args.methods, key=lambda m, s=s: curves[m][s][e])
            wins[leader] = wins.get(leader, 0) + 1
        text = ", ".join(f"{LABELS.get(m, m)} in {k}" for m, k in sorted(wins.items()))
        print(f"lowest after epoch {e}: {text} of {len(args.seeds)} seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent
                                              / "shared" / "data" / "mnist"),
                        help="MNIST IDX folder for the autoencoder")
    parser.add_argument("--only", choices=["cdr", "autoencoder"], default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs")
    parser.add_argument("--quick", action="store_true", help="the quick (smoke) settings")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    logging.getLogger("slimtrain").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    if args.only in (None, "cdr"):
        _problem("cdr", args)
    if args.only in (None, "autoencoder"):
        if Path(args.data).is_dir():
            _problem("autoencoder", args)
        else:
            print(f"\nautoencoder: MNIST folder {args.data} not found; pass --data DIR")


if __name__ == "__main__":
    main()
