"""Sensitivity to hyperparameters: spread of the final validation loss over the sweep grid.

The grid of ``slimtrain sweep``: learning rate {1e-3, 1e-2, 1e-1} x regularization (weight decay
alpha of what the optimizer trains) {1e-10, 1e-5, 1e-1}, for slimTrain (Adam on theta, Lambda
automatic) and Adam end to end, same network, initial weights and batch order in every cell.
Prints both grids, each method's spread max/min of the final validation loss, and the ratio of
the spreads (Adam / slimTrain: above 1 means slimTrain is less sensitive). Files (metrics.csv,
summary.json, sweep.png) go to ``--out``.

Usage: ``python benchmarks/sensitivity.py [--experiment cdr|peaks|autoencoder] [--epochs N]
[--data DIR] [--out DIR]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from slimtrain.experiments import REGISTRY, TrainingOptions, run_experiment
from slimtrain.experiments.sweep import SweepOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=["cdr", "peaks", "autoencoder"], default="cdr")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per cell (default: the experiment's full default)")
    parser.add_argument("--data", default=None, help="MNIST IDX folder (autoencoder)")
    parser.add_argument("--out", default=None, help="report folder (default: a temporary one)")
    args = parser.parse_args()
    defaults = REGISTRY[args.experiment].defaults
    epochs = defaults["epochs"] if args.epochs is None else args.epochs
    config = TrainingOptions(epochs=epochs, batch_size=defaults["batch_size"], seed=0)
    out = args.out or tempfile.mkdtemp(prefix=f"sensitivity-{args.experiment}-")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.experiment}, "
          f"{epochs} epochs per cell, batch {config.batch_size}")
    start = time.perf_counter()
    options = SweepOptions(experiment=args.experiment, training=config,
                           data=None if args.data is None else Path(args.data))
    print(run_experiment("sweep", options, out, overwrite=True).table)
    print(f"({time.perf_counter() - start:.0f} s for 9 cells x 2 methods; report in {out})")


if __name__ == "__main__":
    main()
