"""Time to target: epochs and seconds slimTrain needs to reach Adam's best validation loss.

For each problem, Adam (lr 1e-3, the recommended setting) trains for the whole budget; its best
validation loss is the target. slimTrain (Adam lr 1e-3 on theta) and slimTrain + Prodigy (no
learning rate anywhere) train on the same network, initial weights and batch order, and we
report the first epoch at which each reaches the target, the training seconds up to that epoch
(step time only, evaluation excluded, for every method alike), and the ratios to what Adam
needed to reach its own best. All runs happen here, in one process, one after the other.

Problems: the CDR PDE surrogate (400 / 200 samples, batch 5) and the convolutional MNIST
autoencoder on the 10k test file (first 8000 train, last 2000 validation, batch 32), read
from ``--mnist`` (default ``../shared/data/mnist``; the problem is skipped with a message if
the folder does not exist).

With ``--seeds 0 1 2`` every seed (data split, initial weights, batch order) is run and a
summary gives the median and range over the seeds of each method's ratios to Adam.
``--device cuda`` trains on the GPU.

Usage: ``python benchmarks/time_to_target.py [--cdr-epochs 50] [--ae-epochs 10]
[--mnist DIR] [--only cdr|autoencoder] [--seeds 0 1 2] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from slimtrain.experiments import REGISTRY, TrainingOptions, make_setup, run_methods
from slimtrain.experiments.runner import MethodResult

METHODS = ("adam", "slimtrain", "slimtrain-prodigy")


def _to_target(result: MethodResult, target: float, scale: float) -> tuple[int | None, float]:
    """First epoch whose validation loss is <= target, and the training seconds up to it."""
    seconds = 0.0
    for record in result.history.records:
        seconds += record["epoch_time"]
        if scale * record["val_loss"] <= target * (1 + 1e-12):
            return int(record["epoch"]), seconds
    return None, math.nan


def _problem(
    name: str, epochs: int, data_dir: str | None, seed: int, device: str
) -> dict[str, tuple[float, float, float]]:
    """One seed: per method (best validation loss, epochs / Adam's, seconds / Adam's)."""
    setup = make_setup(name, seed=seed, data_dir=data_dir)
    batch = REGISTRY[name].defaults["batch_size"]
    config = TrainingOptions(epochs=epochs, batch_size=batch, lr=1e-3, seed=seed, device=device)
    start = time.perf_counter()
    results = run_methods(setup, METHODS, config, progress=False)
    wall = time.perf_counter() - start
    scale = setup.loss_scale
    adam = results["adam"]
    target = scale * adam.history.best_val_loss
    adam_epoch, adam_seconds = _to_target(adam, target, scale)
    print(f"\n{name}, seed {seed}: {len(setup.train)} train / {len(setup.val)} val, batch "
          f"{batch}, {epochs} epochs, device {device}, loss = {setup.loss_label}")
    print(f"target = Adam's best validation loss in {epochs} epochs: {target:.4g} "
          f"(epoch {adam_epoch}, {adam_seconds:.1f} s of training)")
    print(f"{'method':<20} {'best val':>10} {'epochs':>7} {'seconds':>8} "
          f"{'epochs/adam':>12} {'seconds/adam':>13} {'s/epoch':>8}")
    summary = {}
    for method, result in results.items():
        epoch, seconds = _to_target(result, target, scale)
        per_epoch = sum(result.history.column("epoch_time")) / max(epochs, 1)
        best = scale * result.history.best_val_loss
        if epoch is None or not adam_epoch:  # never reached, or Adam's best is epoch 0
            print(f"{method:<20} {best:>10.4g} {'never':>7} {'-':>8} {'-':>12} {'-':>13} "
                  f"{per_epoch:>8.2f}")
            summary[method] = (best, math.nan, math.nan)
            continue
        print(f"{method:<20} {best:>10.4g} {epoch:>7d} {seconds:>8.1f} "
              f"{epoch / adam_epoch:>12.3f} {seconds / adam_seconds:>13.3f} {per_epoch:>8.2f}")
        summary[method] = (best, epoch / adam_epoch, seconds / adam_seconds)
    print(f"(wall time of the three runs with evaluation: {wall:.0f} s)")
    return summary


def _median_range(values: list[float]) -> str:
    """``median [min, max]`` over the finite values, with a count of the others."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "never"
    text = f"{statistics.median(finite):.3g} [{min(finite):.3g}, {max(finite):.3g}]"
    missed = len(values) - len(finite)
    return text + (f" ({missed} never)" if missed else "")


def _over_seeds(name: str, per_seed: list[dict[str, tuple[float, float, float]]]) -> None:
    print(f"\n{name}: median [range] over {len(per_seed)} seeds")
    print(f"{'method':<20} {'best val':>26} {'epochs/adam':>26} {'seconds/adam':>26}")
    for method in per_seed[0]:
        cols = [_median_range([s[method][i] for s in per_seed]) for i in range(3)]
        print(f"{method:<20} {cols[0]:>26} {cols[1]:>26} {cols[2]:>26}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cdr-epochs", type=int, default=50)
    parser.add_argument("--ae-epochs", type=int, default=10)
    parser.add_argument("--mnist", default=str(Path(__file__).resolve().parents[1].parent
                                               / "shared" / "data" / "mnist"))
    parser.add_argument("--only", choices=["cdr", "autoencoder"], default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds to run; several give a median/range summary")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    problems = []
    if args.only in (None, "cdr"):
        problems.append(("cdr", args.cdr_epochs, None))
    if args.only in (None, "autoencoder"):
        if Path(args.mnist).is_dir():
            problems.append(("autoencoder", args.ae_epochs, args.mnist))
        else:
            print(f"\nautoencoder: MNIST folder {args.mnist} not found; pass --mnist DIR")
    for name, epochs, data in problems:
        per_seed = [_problem(name, epochs, data, seed, args.device) for seed in args.seeds]
        if len(per_seed) > 1:
            _over_seeds(name, per_seed)


if __name__ == "__main__":
    main()
