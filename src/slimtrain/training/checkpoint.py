"""Checkpoints: atomic writes, ``weights_only`` loads, and the RNG states that make a resumed
run continue exactly as an uninterrupted one."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_save", "load_checkpoint", "capture_rng_state", "restore_rng_state"]

CHECKPOINT_VERSION = 1


def atomic_save(obj: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file in the target folder, then rename over ``path``.

    A crash mid-write leaves the previous checkpoint intact.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :class:`~slimtrain.training.callbacks.Checkpoint`.

    Uses ``torch.load(weights_only=True)`` on the CPU and raises ``FileNotFoundError`` or
    ``ValueError`` naming the path for a missing, corrupt or foreign file.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {source} does not exist")
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated/corrupt files
        raise ValueError(
            f"checkpoint {source} could not be read ({type(error).__name__}: {error}); "
            "expected a file written by slimtrain's Checkpoint callback"
        ) from error
    required = {"version", "epoch", "trainer", "history", "rng"}
    if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"checkpoint {source} holds {found}; expected the keys {sorted(required)}"
        )
    if checkpoint["version"] != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {source} has format version {checkpoint['version']}; "
            f"this slimtrain reads version {CHECKPOINT_VERSION}"
        )
    return checkpoint


def capture_rng_state(generators: list[torch.Generator] | None = None) -> dict[str, Any]:
    """Global torch/CUDA/numpy/python RNG states and those of the given generators.

    Everything is stored as tensors and plain Python values so that it loads under
    ``weights_only=True``.
    """
    np_state: Any = np.random.get_state()  # noqa: NPY002 - the legacy global RNG users seed
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_plain(random.getstate()),
        "generators": [g.get_state() for g in (generators or [])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(
    state: dict[str, Any], generators: list[torch.Generator] | None = None
) -> None:
    """Inverse of :func:`capture_rng_state`."""
    gens = generators or []
    if len(state["generators"]) != len(gens):
        raise ValueError(
            f"checkpoint holds {len(state['generators'])} data-loader generator states but the "
            f"loaders given have {len(gens)}; resume with the same loader set-up"
        )
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    random.setstate(_python_state_from_plain(state["python"]))
    for generator, saved in zip(gens, state["generators"], strict=True):
        generator.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [int(version), list(internal), gauss]


def _python_state_from_plain(state: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return (int(version), tuple(int(v) for v in internal), gauss)
