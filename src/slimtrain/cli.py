"""Command line: ``slimtrain demo``, ``slimtrain run EXPERIMENT``, ``slimtrain sweep EXPERIMENT``.

The only module that prints. Nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimtrain.experiments.runner import METHODS, RunConfig, default_out_dir

EXPERIMENTS = ("cdr", "peaks", "autoencoder", "inverse", "kernel")
TRAINING_EXPERIMENTS = ("cdr", "peaks", "autoencoder")


def _methods(text: str) -> list[str]:
    if text == "all":
        return list(METHODS)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {bad}; expected 'all' or a comma-separated subset of "
            f"{', '.join(METHODS)}"
        )
    return methods


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, found {text!r}"
        ) from error


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, help="epochs (default: the experiment's)")
    parser.add_argument("--batch-size", type=int,
                        help="global batch size (default: the experiment's)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--alpha", type=float, default=0.0,
                        help="weight decay on the optimized parameters (default 0)")
    parser.add_argument("--memory-depth", type=int, default=5, help="slimTik memory depth r")
    parser.add_argument("--initial-lambda", type=float, default=1e-10,
                        help="slimTik initial Lambda (default 1e-10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with MNIST IDX files (autoencoder, kernel)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--quick", action="store_true", help="a small, fast version")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/<experiment>-<timestamp>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--nproc", type=int, default=1,
                        help="start this many data-parallel processes with torchrun")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="slimtrain",
        description="slimTrain and EigenPro experiments: each writes metrics.csv, summary.json "
        "and PNG plots to its output folder.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="CDR surrogate: slimTrain against Adam, Prodigy and "
                          "schedule-free AdamW (about 2 minutes; --quick under 30 s)")
    demo.add_argument("--quick", action="store_true")
    demo.add_argument("--out", type=Path, default=None)
    demo.add_argument("--no-progress", action="store_true")

    run = sub.add_parser("run", help="one experiment")
    run.add_argument("experiment", choices=EXPERIMENTS)
    run.add_argument("--method", type=_methods, default=list(METHODS),
                     help="'all' (default) or a comma-separated subset of " + ", ".join(METHODS))
    _training_options(run)
    run.add_argument("--kernel", default="gaussian", help="kernel experiment: gaussian, "
                     "laplacian or cauchy")
    run.add_argument("--bandwidth", type=float, default=None,
                     help="kernel bandwidth (default: 5 for digits and MNIST, 1 for friedman)")
    run.add_argument("--dataset", default=None,
                     help="kernel experiment: digits, mnist or friedman (default: mnist with "
                     "--data, else digits)")

    sweep = sub.add_parser("sweep", help="sensitivity grid over learning rate and "
                           "regularization for slimTrain and Adam")
    sweep.add_argument("experiment", choices=TRAINING_EXPERIMENTS)
    sweep.add_argument("--lrs", type=_floats, default=[1e-3, 1e-2, 1e-1])
    sweep.add_argument("--regs", type=_floats, default=[1e-10, 1e-5, 1e-1])
    sweep.add_argument("--methods", type=_methods, default=["slimtrain", "adam"])
    _training_options(sweep)
    return parser


def _config(args: argparse.Namespace, defaults: dict[str, Any]) -> RunConfig:
    return RunConfig(
        epochs=args.epochs if args.epochs is not None else defaults["epochs"],
        batch_size=args.batch_size if args.batch_size is not None else defaults["batch_size"],
        lr=args.lr,
        alpha=args.alpha,
        memory_depth=args.memory_depth,
        initial_lambda=args.initial_lambda,
        seed=args.seed,
        device=args.device,
    )


def _relaunch_with_torchrun(nproc: int, argv: Sequence[str]) -> int:
    rest = []
    skip = False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token == "--nproc":
            skip = True
            continue
        if token.startswith("--nproc="):
            continue
        rest.append(argv[i])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "slimtrain", *rest]
    print("launching:", " ".join(command), flush=True)
    return subprocess.call(command)


def _print_table(summary: dict[str, Any]) -> None:
    methods = summary.get("methods", {})
    if not methods:
        return
    print(f"\n{summary.get('experiment', '')}: {summary.get('config', {}).get('loss', '')}")
    header = f"{'method':<20} {'best val loss':>14} {'final val loss':>15} {'val rel err':>12} " \
             f"{'Lambda':>10} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    for method, m in methods.items():
        rel = m["val_rel_error"][-1]
        lam = m["sum_lambda"][-1]
        print(f"{method:<20} {_fmt(m['best_val_loss']):>14} {_fmt(m['val_loss'][-1]):>15} "
              f"{_fmt(rel):>12} {_fmt(lam):>10} {m.get('seconds', math.nan):>8.1f}")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slimtrain`` console script and ``python -m slimtrain``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "nproc", 1) > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch_with_torchrun(args.nproc, argv)

    from slimtrain import experiments
    from slimtrain.training.distributed import init_from_env, is_main_process

    init_from_env(getattr(args, "device", "cpu"))
    progress = not args.no_progress and is_main_process()
    try:
        if args.command == "demo":
            out = args.out or default_out_dir("demo")
            summary = experiments.run_demo(quick=args.quick, out_dir=out, progress=progress)
        elif args.command == "run" and args.experiment == "kernel":
            dataset = args.dataset or ("mnist" if args.data else "digits")
            out = args.out or default_out_dir("kernel")
            summary = experiments.run_kernel_experiment(
                dataset=dataset, data_dir=args.data, kernel=args.kernel,
                bandwidth=args.bandwidth, epochs=args.epochs if args.epochs is not None else 10,
                out_dir=out, seed=args.seed, progress=progress,
            )
        elif args.command == "run" and args.experiment == "inverse":
            out = args.out or default_out_dir("inverse")
            summary = experiments.run_inverse(
                out_dir=out, seed=args.seed, memory_depth=args.memory_depth,
                batch_size=args.batch_size, epochs=args.epochs, progress=progress,
            )
        elif args.command == "run":
            defaults = experiments.experiment_defaults(args.experiment, quick=args.quick)
            config = _config(args, defaults)
            out = args.out or default_out_dir(args.experiment)
            summary = experiments.run_experiment(
                args.experiment, args.method, config, out_dir=out, data_dir=args.data,
                quick=args.quick, progress=progress,
            )
        else:
            defaults = experiments.experiment_defaults(args.experiment, quick=args.quick)
            config = _config(args, defaults)
            out = args.out or default_out_dir(f"sweep-{args.experiment}")
            summary = experiments.run_sweep(
                args.experiment, config, lrs=args.lrs, regs=args.regs, methods=args.methods,
                out_dir=out, data_dir=args.data, quick=args.quick, progress=progress,
            )
    except (ValueError, TypeError, FileNotFoundError) as error:
        if is_main_process():
            print(f"slimtrain: error: {error}", file=sys.stderr)
        return 2
    if is_main_process():
        if args.command == "sweep":
            print(experiments.sweep_table(summary))
        elif "methods" in summary:
            _print_table(summary)
        else:
            print(experiments.format_summary(summary))
        print(f"\nwrote {out}/ (metrics.csv, summary.json, plots)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
