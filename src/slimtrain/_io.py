"""Atomic file writes and strict JSON: the one implementation that every writer uses."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "TEMP_SUFFIX",
    "atomic_write",
    "json_safe",
    "remove_stale_temporaries",
    "write_csv",
    "write_json",
]

#: Suffix of the temporary files of :func:`atomic_write` (``.<name>.<random>.tmp``).
TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], None],
                 binary: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it over ``path``.

    A crash mid-write leaves the previous file intact; the temporary file is removed on any
    error (a killed process leaves it behind: :func:`remove_stale_temporaries`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write` calls left in ``folder``
    (not recursive); return them."""
    found = sorted(Path(folder).glob(f".*{TEMP_SUFFIX}"))
    for path in found:
        path.unlink(missing_ok=True)
    return found


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf as None, NumPy scalars as Python numbers, tuples as lists and
    keys as strings, so that :func:`json.dumps` writes strict JSON."""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as strict, indented JSON (atomically)."""
    text = json.dumps(json_safe(payload), indent=2)

    def write(handle: IO[Any]) -> None:
        handle.write(text)

    return atomic_write(path, write)


def write_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]],
              fields: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as CSV with a header (atomically); columns are ``fields`` or the keys of
    the first row, missing values are empty."""
    columns = list(fields if fields is not None else (rows[0] if rows else []))

    def write(handle: IO[Any]) -> None:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    return atomic_write(path, write)
