"""Helpers shared by the tests: a free TCP port for process groups, few threads for small
problems, and a temporary CDR cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

from slimtrain.training.distributed import free_local_port


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for ``init_process_group``)."""
    return free_local_port()


@pytest.fixture(scope="session")
def new_port() -> Callable[[], int]:
    """``new_port()`` gives a port as :func:`free_port` does, for fixtures of a wider scope."""
    return free_local_port


@pytest.fixture(scope="module")
def few_threads() -> Iterator[None]:
    """One torch thread and one BLAS thread for the module: the problems are small, and with
    two threads per library on a busy two-core machine OpenMP barriers and OpenBLAS spinning
    turned 10 ms solves into seconds (and a 3 s autoencoder run into 30 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cdr_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary CDR cache as ``$SLIMTRAIN_CACHE``: never ``~/.cache`` in tests."""
    path = tmp_path_factory.mktemp("cdr-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLIMTRAIN_CACHE", str(path))
        yield path
