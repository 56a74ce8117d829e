"""The output folder: its rules (checked before any training) and every file written to it.

Rules: an output folder that holds results is never overwritten silently. A new run into it is
refused unless ``resume`` (continue it: the run's identity, kept in ``run.json``, must match)
or ``overwrite`` (its results are deleted first). Temporary files that a killed write left are
removed at the start. Only rank 0 writes; every write is atomic
(:func:`slimtrain._io.atomic_write`).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from slimtrain import plots
from slimtrain._io import json_safe, remove_stale_temporaries, write_csv, write_json
from slimtrain.experiments.registry import Result
from slimtrain.training.distributed import is_main_process

__all__ = ["RESULTS", "prepare_output", "write_result"]

logger = logging.getLogger(__name__)

#: What a run writes into its folder; ``checkpoints/`` holds the checkpoints.
RESULTS = ("run.json", "summary.json", "metrics.csv", "checkpoints")


def prepare_output(out: Path, identity: dict[str, Any], *, resume: bool = False,
                   overwrite: bool = False, changeable: tuple[str, ...] = ()) -> None:
    """Check and prepare the output folder before anything is computed (rank 0 only).

    Raises ``ValueError`` with what to do for a path that is a file, a folder that cannot be
    written, a folder with results (without ``resume`` or ``overwrite``), a resume whose
    ``identity`` differs from the one in ``run.json`` in anything but ``changeable``, and a
    checkpoint path that is a folder. Then records ``identity`` in ``run.json``.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite deletes it; "
                         "give one of them")
    if not is_main_process():
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder (a new one, or the folder "
                         "of a run to --resume)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / ".write-test", "ok").unlink()
    except OSError as error:
        raise ValueError(f"cannot write to the output folder {out} ({error.strerror or error}); "
                         "choose another --out") from None
    checkpoints = out / "checkpoints"
    for folder in (out, checkpoints):
        if folder.is_dir():
            for stale in remove_stale_temporaries(folder):
                logger.warning("removed %s, left by an interrupted write", stale)
    found = [name for name in RESULTS if (out / name).exists()]
    if found and overwrite:
        for name in found:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        logger.warning("--overwrite: deleted %s in %s", ", ".join(found), out)
    elif found and not resume:
        raise ValueError(f"{out} already holds the results of a run ({', '.join(found)}); "
                         "pass --resume to continue it, --overwrite to replace it, or choose "
                         "another --out")
    elif resume and (out / "run.json").is_file():
        _check_same_run(out / "run.json", identity, changeable)
    if checkpoints.is_dir():
        bad = [p.name for p in checkpoints.iterdir() if p.suffix == ".pt" and not p.is_file()]
        if bad:
            raise ValueError(f"{checkpoints} holds {', '.join(bad)}, which are not files; "
                             "remove them or choose another --out")
    write_json(out / "run.json", identity)


def _check_same_run(path: Path, identity: dict[str, Any], changeable: tuple[str, ...]) -> None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} ({error}); the folder is not a run to resume"
                         ) from None
    now = json_safe(identity)
    keys = sorted((set(saved) | set(now)) - set(changeable))
    differ = [k for k in keys if saved.get(k) != now.get(k)]
    if differ:
        listed = ", ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in differ)
        raise ValueError(f"--resume: {path.parent} holds another run ({listed}); resume with "
                         "the same experiment, data and options (only --epochs, --device and "
                         "--method may change)")


def write_result(out: Path, result: Result, keep_other_methods: bool = False) -> None:
    """Write ``summary.json``, ``metrics.csv`` and the figures (rank 0 only).

    ``keep_other_methods``: the methods of a previous run in ``out`` that this one did not
    train keep their summary block and metric rows (a resumed subset of the methods).
    """
    if not is_main_process():
        return
    summary, rows = dict(result.summary), list(result.metrics)
    if keep_other_methods and "methods" in summary:
        summary, rows = _merge_previous(out, summary, rows)
    write_json(out / "summary.json", summary)
    fields: dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    write_csv(out / "metrics.csv", [json_safe(r) for r in rows], list(fields))
    for name, figure in result.figures.items():
        plots.save_figure(figure, out / name)


def _merge_previous(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]]
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    previous = out / "summary.json"
    if not previous.is_file():
        return summary, rows
    old = json.loads(previous.read_text())
    kept = {m: v for m, v in old.get("methods", {}).items() if m not in summary["methods"]}
    summary["methods"] = {**kept, **summary["methods"]}
    if (out / "metrics.csv").is_file():
        with (out / "metrics.csv").open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("method") in kept] + rows
    return summary, rows
