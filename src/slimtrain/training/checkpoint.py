"""Checkpoints: atomic writes, ``weights_only`` loads, and the RNG states that make a resumed
run continue exactly as an uninterrupted one."""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimtrain._io import atomic_write

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "capture_rng_state",
    "check_rng_state",
    "restore_rng_state",
]

CHECKPOINT_VERSION = 1


def atomic_save(obj: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file in the target folder, then rename over ``path``.

    A crash mid-write leaves the previous checkpoint intact.
    """
    return atomic_write(path, lambda handle: torch.save(obj, handle), binary=True)


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


def check_rng_state(state: Any, generators: list[torch.Generator] | None = None) -> None:
    """Check that :func:`restore_rng_state` can apply ``state`` to ``generators``; change nothing.

    Every entry is applied to a scratch generator of its kind (torch, numpy, Python), so a
    malformed state is found before any global random state is touched.

    Raises
    ------
    ValueError
        Naming the entry that is missing or malformed and what was expected, or a number of
        data-loader generator states that differs from ``len(generators)``.
    """
    gens = generators or []
    required = {"torch", "numpy", "python", "generators"}
    if not isinstance(state, dict) or not required <= set(state):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"checkpoint RNG state holds {found}; expected the keys {sorted(required)} "
            "(written by capture_rng_state)"
        )
    saved_gens = state["generators"]
    if not isinstance(saved_gens, (list, tuple)):
        raise ValueError(
            f"checkpoint RNG state 'generators' is a {type(saved_gens).__name__}; expected a "
            "list of data-loader generator states"
        )
    if len(saved_gens) != len(gens):
        raise ValueError(
            f"checkpoint holds {len(saved_gens)} data-loader generator states but the "
            f"loaders given have {len(gens)}; resume with the same loader set-up"
        )
    _try_apply("'torch'", lambda: torch.Generator().set_state(state["torch"]))
    for i, (generator, saved) in enumerate(zip(gens, saved_gens, strict=True)):
        scratch = torch.Generator(device=generator.device)
        _try_apply(f"'generators'[{i}]", functools.partial(scratch.set_state, saved))
    _try_apply("'numpy'", lambda: np.random.RandomState().set_state(_numpy_state(state["numpy"])))
    _try_apply(
        "'python'", lambda: random.Random().setstate(_python_state_from_plain(state["python"]))
    )
    gauss = state["python"][2]
    if gauss is not None and not isinstance(gauss, float):
        raise ValueError(
            f"checkpoint RNG state 'python' holds a cached Gaussian of type "
            f"{type(gauss).__name__}; expected None or a float"
        )
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        current = torch.cuda.get_rng_state_all()
        if (
            not isinstance(cuda, (list, tuple))
            or len(cuda) != len(current)
            or not all(
                isinstance(c, torch.Tensor) and c.dtype == now.dtype and c.shape == now.shape
                for c, now in zip(cuda, current, strict=False)
            )
        ):
            raise ValueError(
                f"checkpoint RNG state 'cuda' does not fit the {len(current)} CUDA device(s) "
                "here; expected one uint8 state per device, as torch.cuda.get_rng_state_all() "
                "gives"
            )


def restore_rng_state(
    state: dict[str, Any], generators: list[torch.Generator] | None = None
) -> None:
    """Inverse of :func:`capture_rng_state`.

    ``state`` is checked in full first (:func:`check_rng_state`), so a state that does not fit
    raises ``ValueError`` and leaves every random state as it was.
    """
    check_rng_state(state, generators)
    gens = generators or []
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))  # noqa: NPY002
    random.setstate(_python_state_from_plain(state["python"]))
    for generator, saved in zip(gens, state["generators"], strict=True):
        generator.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _try_apply(entry: str, apply: Callable[[], object]) -> None:
    """Run ``apply`` (which sets a scratch generator); turn its failure into a clear error."""
    try:
        apply()
    except (
        AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError, OverflowError
    ) as error:
        raise ValueError(
            f"checkpoint RNG state {entry} is malformed ({type(error).__name__}: {error}); "
            "expected the state written by capture_rng_state on this platform"
        ) from error


def _numpy_state(plain: dict[str, Any]) -> tuple[Any, ...]:
    """The legacy numpy state tuple from its plain form in a checkpoint."""
    return (
        "MT19937",
        plain["keys"].numpy().astype(np.uint32),
        plain["pos"],
        plain["has_gauss"],
        plain["cached_gaussian"],
    )


def _python_state_to_plain(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [int(version), list(internal), gauss]


def _python_state_from_plain(state: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return (int(version), tuple(int(v) for v in internal), gauss)
