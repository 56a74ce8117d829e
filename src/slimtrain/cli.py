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

from slimtrain.experiments.inverse import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MEMORY_DEPTH,
    DEFAULT_PASSES,
)
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


def _training_options(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    # Options default to None (flags to False) so that main() can tell a given option from an
    # absent one: absent ones take the experiment's own default, given ones that the experiment
    # does not use are an error (see _check_applicable). The sweep sets --lr and --alpha per
    # cell: it accepts them only to reject them with that reason, and hides them from --help.
    parser.add_argument("--epochs", type=int,
                        help="epochs; passes of fresh measurements for inverse (default: the "
                        f"experiment's, {DEFAULT_PASSES} for inverse)")
    parser.add_argument("--batch-size", type=int,
                        help="global batch size; rows per minibatch for inverse (default: the "
                        f"experiment's, {DEFAULT_BATCH_SIZE} for inverse)")
    parser.add_argument("--lr", type=float, default=None,
                        help=argparse.SUPPRESS if sweep else f"Adam learning rate (default "
                        f"{RunConfig.lr:g}; training experiments only)")
    parser.add_argument("--alpha", type=float, default=None,
                        help=argparse.SUPPRESS if sweep else f"weight decay on the optimized "
                        f"parameters (default {RunConfig.alpha:g}; training experiments only)")
    parser.add_argument("--memory-depth", type=int, default=None,
                        help=f"slimTik memory depth r (default {RunConfig.memory_depth} for the "
                        f"training experiments, {DEFAULT_MEMORY_DEPTH} for inverse)")
    parser.add_argument("--initial-lambda", type=float, default=None,
                        help=f"slimTik initial Lambda (default {RunConfig.initial_lambda:g}; "
                        "training experiments only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with MNIST IDX files (autoencoder, kernel)")
    parser.add_argument("--device", default=None,
                        help=f"cpu or cuda[:i] (default {RunConfig.device}; training "
                        "experiments only)")
    parser.add_argument("--quick", action="store_true",
                        help="a small, fast version (training experiments only)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/<experiment>-<timestamp>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--nproc", type=int, default=None,
                        help="start this many data-parallel processes with torchrun (training "
                        "experiments only)")


def _build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
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
    run.add_argument("--method", type=_methods, default=None,
                     help="'all' (default) or a comma-separated subset of " + ", ".join(METHODS)
                     + " (training experiments only)")
    _training_options(run)
    run.add_argument("--kernel", default=None, help="kernel experiment: gaussian (default), "
                     "laplacian or cauchy")
    run.add_argument("--bandwidth", type=float, default=None,
                     help="kernel bandwidth (default: 5 for digits and MNIST, 1 for friedman)")
    run.add_argument("--resume", action="store_true",
                     help="training experiments: continue the run in --out from the checkpoints "
                     "it wrote to OUT/checkpoints after every epoch (same settings and number "
                     "of processes; --epochs may grow)")
    run.add_argument("--dataset", default=None,
                     help="kernel experiment: digits, mnist or friedman (default: mnist with "
                     "--data, else digits)")

    sweep = sub.add_parser("sweep", help="sensitivity grid over learning rate and "
                           "regularization for slimTrain and Adam")
    sweep.add_argument("experiment", choices=TRAINING_EXPERIMENTS)
    sweep.add_argument("--lrs", type=_floats, default=[1e-3, 1e-2, 1e-1])
    sweep.add_argument("--regs", type=_floats, default=[1e-10, 1e-5, 1e-1])
    sweep.add_argument("--methods", type=_methods, default=["slimtrain", "adam"])
    _training_options(sweep, sweep=True)
    return parser, {"demo": demo, "run": run, "sweep": sweep}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    return _build_parsers()[0]


_COMMON = frozenset({"seed", "out", "no_progress"})
_TRAINING = _COMMON | {"epochs", "batch_size", "lr", "alpha", "memory_depth", "initial_lambda",
                       "device", "quick", "nproc"}

# Why an option does not apply, where more can be said than "it is not used".
_WHY = {
    ("sweep", "lr"): "the sweep sets each cell's learning rate from --lrs",
    ("sweep", "alpha"): "the sweep sets each cell's weight decay from --regs",
    ("inverse", "lr"): "slimTik has no learning rate and minibatch SGD takes the step 1/L",
    ("inverse", "method"): "it always compares slimTik + sGCV, the best fixed Tikhonov "
    "solution and minibatch SGD",
    ("inverse", "alpha"): "slimTik chooses its regularization by sGCV",
    ("inverse", "initial_lambda"): "it starts slimTik from Lambda = 1e-10",
    ("kernel", "method"): "it always compares EigenPro with exact kernel ridge regression",
    ("kernel", "batch_size"): "EigenPro chooses its batch size",
}


def _applicable(command: str, experiment: str) -> frozenset[str]:
    """The options (``dest`` names) that ``slimtrain COMMAND EXPERIMENT`` uses."""
    if command == "sweep":
        options = (_TRAINING - {"lr", "alpha"}) | {"lrs", "regs", "methods"}
    elif experiment == "inverse":
        options = _COMMON | {"epochs", "batch_size", "memory_depth"}
    elif experiment == "kernel":
        options = _COMMON | {"epochs", "data", "dataset", "kernel", "bandwidth"}
    else:
        options = _TRAINING | {"method", "resume"}
    if experiment == "autoencoder":
        options |= {"data"}
    return frozenset(options)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_applicable(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``parser.error`` (exit status 2) for a given option the experiment would not use."""
    if args.command not in ("run", "sweep"):
        return
    usable = _applicable(args.command, args.experiment)
    given = [dest for dest, value in vars(args).items()
             if dest not in ("command", "verbose", "experiment")
             and value is not None and value is not False]
    for dest in given:
        if dest in usable:
            continue
        where = f"'slimtrain {args.command} {args.experiment}'"
        why = _WHY.get((args.experiment if args.command == "run" else "sweep", dest))
        if why is None and dest == "data":
            why = "only the autoencoder and kernel experiments read a data folder"
        if why is None and dest in ("kernel", "bandwidth", "dataset"):
            why = "it is an option of 'slimtrain run kernel'"
        options = ", ".join(_flag(d) for d in vars(args) if d in usable)
        parser.error(f"{_flag(dest)} does not apply to {where}"
                     + (f": {why}" if why else "") + f". Its options are {options}.")
    if args.nproc is not None and args.nproc < 1:
        parser.error(f"--nproc must be >= 1, found {args.nproc}")


def _config(args: argparse.Namespace, defaults: dict[str, Any]) -> RunConfig:
    """RunConfig of the given options; absent ones take ``defaults`` (the experiment's epochs
    and batch size), then RunConfig's own defaults."""
    names = ("epochs", "batch_size", "lr", "alpha", "memory_depth", "initial_lambda", "seed",
             "device")
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return RunConfig(**{**defaults, **given})


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
    parser, subparsers = _build_parsers()
    args = parser.parse_args(argv)
    _check_applicable(args, subparsers[args.command])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if (getattr(args, "nproc", None) or 1) > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch_with_torchrun(args.nproc, argv)

    from slimtrain import experiments
    from slimtrain.training.distributed import init_from_env, is_main_process

    init_from_env(getattr(args, "device", None) or RunConfig.device)
    progress = not args.no_progress and is_main_process()
    try:
        if args.command == "demo":
            out = args.out or default_out_dir("demo")
            summary = experiments.run_demo(quick=args.quick, out_dir=out, progress=progress)
        elif args.command == "run" and args.experiment == "kernel":
            dataset = args.dataset or ("mnist" if args.data else "digits")
            out = args.out or default_out_dir("kernel")
            # Absent options take run_kernel_experiment's own defaults.
            optional = {k: getattr(args, k) for k in ("kernel", "epochs")
                        if getattr(args, k) is not None}
            summary = experiments.run_kernel_experiment(
                dataset=dataset, data_dir=args.data, bandwidth=args.bandwidth, out_dir=out,
                seed=args.seed, progress=progress, **optional,
            )
        elif args.command == "run" and args.experiment == "inverse":
            out = args.out or default_out_dir("inverse")
            # None (an absent option) takes run_inverse's own default.
            summary = experiments.run_inverse(
                out_dir=out, seed=args.seed, memory_depth=args.memory_depth,
                batch_size=args.batch_size, epochs=args.epochs, progress=progress,
            )
        elif args.command == "run":
            defaults = experiments.experiment_defaults(args.experiment, quick=args.quick)
            config = _config(args, defaults)
            if args.resume and args.out is None:
                subparsers["run"].error("--resume continues the run in --out DIR; give --out")
            out = args.out or default_out_dir(args.experiment)
            methods = args.method if args.method is not None else list(METHODS)
            summary = experiments.run_experiment(
                args.experiment, methods, config, out_dir=out, data_dir=args.data,
                quick=args.quick, progress=progress, checkpoint_dir=Path(out) / "checkpoints",
                resume=args.resume,
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
