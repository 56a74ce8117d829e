"""Run a declared experiment into its output folder: check the folder, run, write."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slimtrain.experiments.registry import REGISTRY, Result, Session, option_values
from slimtrain.experiments.report import prepare_output, write_result

__all__ = ["identity", "run_experiment"]

logger = logging.getLogger(__name__)


def run_experiment(
    name: str,
    options: Any,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
    output_checked: bool = False,
) -> Result:
    """Run experiment ``name`` of :data:`~slimtrain.experiments.registry.REGISTRY` with
    ``options`` and write its report to ``out_dir``.

    The folder is checked before anything is computed
    (:func:`~slimtrain.experiments.report.prepare_output`: a folder with results needs
    ``resume`` or ``overwrite``) unless ``output_checked`` (the launcher of several processes
    did it). Resumable experiments checkpoint to ``out_dir/checkpoints``; a resumed subset of
    the methods keeps the others' results.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; expected one of {', '.join(REGISTRY)}")
    experiment = REGISTRY[name]
    if not isinstance(options, experiment.options):
        raise TypeError(f"experiment {name!r} takes {experiment.options.__name__}, found "
                        f"{type(options).__name__}")
    if resume and not experiment.resumable:
        raise ValueError(f"--resume does not apply to {name!r}: it writes no checkpoints")
    out = Path(out_dir)
    if not output_checked:
        prepare_output(out, identity(name, options), resume=resume, overwrite=overwrite,
                       changeable=experiment.resume_may_change)
    session = Session(progress=progress, echo=echo, resume=resume,
                      checkpoint_dir=out / "checkpoints" if experiment.resumable else None)
    result = experiment.run(options, session)
    write_result(out, result, keep_other_methods=resume)
    return result


def identity(name: str, options: Any) -> dict[str, Any]:
    """What defines a run of ``name`` (``run.json``): the experiment and every option."""
    return {"declared": name, **option_values(options)}
