"""Memory budget of EigenPro: the largest batch a budget allows, the default budget, the
kernel-tile size and the subsample size the budget admits.

These are engineering rules (how much fits), kept apart from the statistical rule of
:mod:`slimtrain.kernels.preconditioner`.
"""

from __future__ import annotations

import math
import os

import torch

from slimtrain.kernels.functions import DEFAULT_TILE_ELEMENTS

__all__ = [
    "LARGE_DATA",
    "LARGE_SUBSAMPLE",
    "SMALL_SUBSAMPLE",
    "auto_subsample_size",
    "available_memory_bytes",
    "default_memory_gb",
    "default_tile_elements",
    "max_batch_size",
]

SMALL_SUBSAMPLE = 2000
"""Default subsample size below ``LARGE_DATA`` points."""
LARGE_SUBSAMPLE = 12000
"""Default subsample size from ``LARGE_DATA`` points on."""
LARGE_DATA = 100_000


def max_batch_size(
    memory_bytes: float,
    n_samples: int,
    n_features: int,
    n_outputs: int,
    itemsize: int,
    *,
    reserved_bytes: float = 0.0,
) -> int:
    r"""Largest batch whose kernel block ``k(X_B, X)`` fits in the memory budget.

    .. math:: m_{\max} = \min\left(n, \left\lfloor\frac{M - M_0 - b\, n (d + 3l)}{b\, n}
              \right\rfloor\right)

    where ``b`` is the item size, ``n (d + 3l)`` the points, targets, weights and one copy of
    the weights, and ``M_0`` other reserved memory. This is the EigenPro 2 rule for a device
    that forms the whole block at once; the CPU path forms it in cache-sized tiles, so its
    actual footprint stays ``O(n (d + l))``.

    Parameters
    ----------
    memory_bytes : float
        Budget ``M``.
    n_samples, n_features, n_outputs : int
        Points ``n``, features ``d`` and outputs ``l`` of the problem.
    itemsize : int
        Bytes per element of the working dtype.
    reserved_bytes : float
        ``M_0``.

    Returns
    -------
    int
        At least 1.

    Raises
    ------
    ValueError
        The budget cannot hold the data and one kernel row.

    Examples
    --------
    >>> max_batch_size(4 * 1000 * (9 + 3) + 4 * 1000 * 50, 1000, 9, 1, 4)
    50
    """
    data_bytes = itemsize * n_samples * (n_features + 3 * n_outputs) + reserved_bytes
    free = memory_bytes - data_bytes
    row = itemsize * max(n_samples, 1)
    if free < row:
        raise ValueError(
            f"memory budget of {memory_bytes / 2**30:.3g} GiB cannot hold the data "
            f"({data_bytes / 2**30:.3g} GiB for {n_samples} points) and one kernel row; "
            "raise memory_gb or use fewer points"
        )
    return int(max(1, min(n_samples, free // row)))


def available_memory_bytes() -> float | None:
    """Available host memory in bytes (``MemAvailable`` of ``/proc/meminfo``, else
    ``os.sysconf``), or None when neither can be read.

    Examples
    --------
    >>> (available_memory_bytes() or 1.0) > 0
    True
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_gb(device: str | torch.device = "cpu") -> float:
    """Default memory budget in GiB: half the available host memory, 80 % of a free GPU.

    Reads ``MemAvailable`` from ``/proc/meminfo`` (falling back to ``os.sysconf``, then to
    8 GiB); on CUDA uses :func:`torch.cuda.mem_get_info`. At least 0.25 GiB.

    Parameters
    ----------
    device : str or torch.device
        Device of the solver (``"cpu"`` or a CUDA device).

    Returns
    -------
    float

    Examples
    --------
    >>> default_memory_gb("cpu") >= 0.25
    True
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return max(0.25, 0.8 * free / 2**30)
    available = available_memory_bytes()
    if available is None:
        available = 8.0 * 2**30
    return max(0.25, 0.5 * available / 2**30)


def default_tile_elements(device: str | torch.device, free_bytes: float, itemsize: int) -> int:
    """Kernel-tile size: 2^20 entries on the CPU (cache-sized); on a GPU as much as a quarter
    of the free budget allows, up to 2^28 entries (large tiles keep kernel launches few).

    Parameters
    ----------
    device : str or torch.device
        Device of the solver.
    free_bytes : float
        Budget left after the data.
    itemsize : int
        Bytes per element of the working dtype.

    Returns
    -------
    int

    Examples
    --------
    >>> default_tile_elements("cpu", 1e9, 4)
    1048576
    """
    if torch.device(device).type == "cpu":
        return DEFAULT_TILE_ELEMENTS
    return int(max(DEFAULT_TILE_ELEMENTS, min(1 << 28, free_bytes / 4 / itemsize)))


def auto_subsample_size(n_samples: int, memory_bytes: float | None = None) -> int:
    """``s = min(n, 2000)`` for ``n < 100000``, else ``12000``; at most ``n``, and small enough
    that the float64 subsample Gram (``8 s^2`` bytes) takes at most a third of the budget.

    Parameters
    ----------
    n_samples : int
        Training points ``n``.
    memory_bytes : float, optional
        Memory budget; None for no cap.

    Returns
    -------
    int

    Examples
    --------
    >>> auto_subsample_size(500), auto_subsample_size(50_000), auto_subsample_size(10**6)
    (500, 2000, 12000)
    """
    s = SMALL_SUBSAMPLE if n_samples < LARGE_DATA else LARGE_SUBSAMPLE
    if memory_bytes is not None:
        s = min(s, max(1, math.isqrt(int(memory_bytes / 24))))
    return max(1, min(n_samples, s))

