"""Command line: ``slimtrain demo``, ``slimtrain run EXPERIMENT``, ``slimtrain sweep EXPERIMENT``.

Subcommands, options, their help (with the real defaults) and which option applies where come
from the experiments' declarations (:data:`slimtrain.experiments.REGISTRY`). The only module
that prints; nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slimtrain import __version__
from slimtrain.experiments import REGISTRY, TRAINING_EXPERIMENTS, build_options, run_experiment
from slimtrain.experiments.execute import identity
from slimtrain.experiments.registry import Experiment, option_fields
from slimtrain.experiments.report import prepare_output

#: Set by the launcher for the processes it starts: the output folder is checked already.
_CHECKED = "SLIMTRAIN_OUTPUT_CHECKED"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(_text(v) for v in value)
    return format(value, "g") if isinstance(value, float) else str(value)


def _parser_of(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_explain(text: str) -> Any:
        try:
            return parse(text)
        except (ValueError, TypeError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse_or_explain


def _add_options(parser: argparse.ArgumentParser, experiment: Experiment,
                 defaults: dict[str, Any], quick: dict[str, Any] | None) -> None:
    for option in option_fields(experiment.options, defaults):
        text = option.help
        if isinstance(option.default, bool):
            parser.add_argument(_flag(option.flag), dest=option.name, action="store_true",
                                default=None, help=text)
            continue
        shown = "none" if option.default is None else _text(option.default)
        if quick and option.name in quick and quick[option.name] != option.default:
            shown += f"; {_text(quick[option.name])} with --quick"
        parse = option.parse or type(option.default)
        parser.add_argument(_flag(option.flag), dest=option.name, type=_parser_of(parse),
                            default=None, metavar=option.name.upper(),
                            help=f"{text} (default: {shown})")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: runs/<experiment>-<timestamp>); a folder "
                        "with results is refused unless --resume or --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the results in --out first")
    if experiment.resumable:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out from its checkpoints (the same "
                            "data and options; --epochs may grow, --method may be a subset)")
    if experiment.distributed:
        parser.add_argument("--nproc", type=int, default=None, help="start this many "
                            "data-parallel processes with torchrun (default: 1)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (one line per epoch instead)")


def _subject(experiment: Experiment) -> tuple[dict[str, Any], dict[str, Any] | None]:
    return dict(experiment.defaults), (dict(experiment.quick) if experiment.quick else None)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, built from the registry (exposed for tests and documentation)."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="slimtrain", allow_abbrev=False,
        description="slimTrain and EigenPro experiments: each writes metrics.csv, summary.json "
        "and PNG figures to its output folder.")
    parser.add_argument("--version", action="version", version=f"slimtrain {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", allow_abbrev=False, formatter_class=formatter,
                               help="the CDR surrogate with every method (about 2 minutes; "
                               "--quick under 30 s)")
    demo.add_argument("--quick", action="store_true", help="a small, fast version")
    demo.add_argument("--out", type=Path, default=None, help="output folder (default: "
                      "runs/demo-<timestamp>)")
    demo.add_argument("--overwrite", action="store_true", help="delete the results in --out")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    run = commands.add_parser("run", help="one experiment; 'slimtrain run NAME --help' shows "
                              "its options and defaults")
    runs = run.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, experiment in REGISTRY.items():
        if name != "sweep":
            sub = runs.add_parser(name, help=experiment.description, allow_abbrev=False,
                                  description=experiment.description)
            _add_options(sub, experiment, *_subject(experiment))
    sweep = commands.add_parser("sweep", help=REGISTRY["sweep"].description)
    sweeps = sweep.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name in TRAINING_EXPERIMENTS:
        sub = sweeps.add_parser(name, help=f"the sweep of {name}", allow_abbrev=False,
                                description=REGISTRY["sweep"].description)
        _add_options(sub, REGISTRY["sweep"], *_subject(REGISTRY[name]))
    return parser


def _subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = actions[0].choices[name] if actions and name in actions[0].choices else parser
    return parser


def _refuse_foreign(args: argparse.Namespace, extra: list[str],
                    parser: argparse.ArgumentParser) -> None:
    """``parser.error`` (exit 2) for options that this experiment does not have."""
    command = args.command if args.command == "demo" else f"{args.command} {args.experiment}"
    sub = _subparser(parser, *command.split())
    experiment = REGISTRY["sweep" if args.command == "sweep" else getattr(args, "experiment",
                                                                          "cdr")]
    own = ", ".join(a.option_strings[-1] for a in sub._actions if a.option_strings
                    and a.option_strings[-1].startswith("--") and a.dest != "help")
    for token in extra:
        flag = token.split("=")[0]
        dest = flag.lstrip("-").replace("-", "_")
        why = experiment.why_not.get(dest) or (
            "it is an option of other experiments" if flag.startswith("--") else "")
        sub.error(f"{flag} does not apply to 'slimtrain {command}'"
                  + (f": {why}" if why else "") + f". Its options are {own}.")


def _options(args: argparse.Namespace) -> tuple[str, Experiment, Any]:
    if args.command == "demo":
        name, given = "cdr", {"quick": args.quick}
    else:
        name = "sweep" if args.command == "sweep" else args.experiment
        given = {o.name: getattr(args, o.name) for o in option_fields(REGISTRY[name].options)
                 if getattr(args, o.name, None) is not None}
    experiment = REGISTRY[name]
    quick = bool(given.get("quick", False))
    subject = REGISTRY[args.experiment] if args.command == "sweep" else experiment
    defaults = {**subject.defaults, **((subject.quick or {}) if quick else {})}
    names = {o.name for o in option_fields(experiment.options)}
    given = {**{k: v for k, v in defaults.items() if k in names}, **given}
    has_subject = "experiment" in {f.name for f in dataclasses.fields(experiment.options)}
    fixed = {"experiment": getattr(args, "experiment", name)} if has_subject else {}
    return name, experiment, build_options(experiment, given, quick, fixed)


def _launch(nproc: int, argv: Sequence[str], out: Path) -> int:
    """Run the same command under torchrun; its processes' errors as one line each."""
    rest = [t for i, t in enumerate(argv) if not (t == "--nproc" or t.startswith("--nproc=")
                                                  or (i and argv[i - 1] == "--nproc"))]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "slimtrain", *rest]
    if not any(t == "--out" or t.startswith("--out=") for t in rest):
        command += ["--out", str(out)]  # the timestamped default, the same for every process
    print("launching:", " ".join(command), flush=True)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, _CHECKED: "1"})
    tail: list[str] = []
    said: set[str] = set()
    for line in process.stderr or ():
        if line.startswith("slimtrain:") and line not in said:
            said.add(line)
            sys.stderr.write(line)
        tail = (tail + [line])[-15:]
    code = process.wait()
    if code and not said:
        sys.stderr.write("".join(tail))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slimtrain`` console script and ``python -m slimtrain``.

    Returns the exit status. A process started by ``torchrun`` (``WORLD_SIZE`` above 1) ends
    through :func:`~slimtrain.training.distributed.end_process` instead of returning, so
    that a finished run cannot die in the interpreter's shutdown.
    """
    from slimtrain.training.distributed import end_process, launched_world_size

    code = _main(argv)
    try:
        grouped = launched_world_size() > 1
    except ValueError:  # a bad WORLD_SIZE: _main reported it, no group was formed
        grouped = False
    if grouped:
        end_process(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _refuse_foreign(args, extra, parser)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from slimtrain.training.distributed import (
        init_from_env,
        is_main_process,
        leave_process_group,
    )

    finished = False
    try:
        name, experiment, options = _options(args)
        label = "demo" if args.command == "demo" else name if name != "sweep" else \
            f"sweep-{args.experiment}"
        out = args.out or Path("runs") / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
        resume = bool(getattr(args, "resume", False))
        if resume and args.out is None:
            raise ValueError("--resume continues the run in --out DIR; give --out")
        nproc = getattr(args, "nproc", None)
        nproc = 1 if nproc is None else nproc  # not `or 1`: --nproc 0 is refused below
        if nproc < 1:
            raise ValueError(f"--nproc must be >= 1, found {nproc}")
        batch = getattr(getattr(options, "training", None), "batch_size", nproc)
        if batch % nproc:
            raise ValueError(f"--batch-size {batch} is not divisible by --nproc {nproc}: every "
                             f"process takes an equal share of each batch; choose a multiple "
                             f"of {nproc}")
        # checked once: by the launcher, or by rank 0 of a process group started otherwise
        if os.environ.get(_CHECKED) != "1" and os.environ.get("RANK", "0") == "0":
            prepare_output(out, identity(name, options), resume=resume,
                           overwrite=args.overwrite, changeable=experiment.resume_may_change)
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            return _launch(nproc, argv, out)
        init_from_env(getattr(getattr(options, "training", None), "device", "cpu"))
        main_process = is_main_process()
        notice = experiment.notice(options) if experiment.notice else None
        if notice and main_process:
            print(notice, flush=True)
        progress = not args.no_progress and main_process and sys.stderr.isatty()
        echo = None if progress or not main_process else (lambda line: print(line, flush=True))
        result = run_experiment(name, options, out, resume=resume, overwrite=args.overwrite,
                                progress=progress, echo=echo, output_checked=True)
        finished = True
    except (ValueError, TypeError, FileNotFoundError) as error:
        if is_main_process():
            print(f"slimtrain: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a failed write: full disk, permissions, a folder in the way
        if is_main_process():
            print(f"slimtrain: error: could not write the results ({error}); free space or "
                  "choose another --out, then --resume", file=sys.stderr)
        return 1
    finally:  # under torchrun: every rank leaves the group, after rank 0's writes on success
        leave_process_group(wait=finished)
    if main_process:
        if notice:
            print(f"\n({notice})")
        print(result.table)
        written = ", ".join(["metrics.csv", "summary.json", *result.figures])
        print(f"\nwrote {out}/ ({written})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
