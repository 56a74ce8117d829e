"""Symmetric eigendecompositions of the slimTik step, on the device or on the CPU by size.

Small (batched) ``eigh`` calls are often slower on a GPU than on the CPU: the GPU solvers are
tuned for large matrices and launch many small kernels. :func:`symmetric_eigh` runs a matrix
(or each matrix of a batch) of size at most ``cpu_max_size`` on the CPU when it lives on
another device, and returns the factors on that device. The round trip reads the matrix back
to the host, a synchronisation, so it pays only where the device ``eigh`` is slower than the
copy; ``benchmarks/slimtik_step.py --device cuda`` prints both timings for the head sizes of
the experiments so that the threshold can be set from measurements. The default ``0`` never
moves anything.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CPU_EIGH_MAX_SIZE", "symmetric_eigh"]

#: Default of every ``cpu_eigh_max_size``: never move a decomposition to the CPU (no GPU
#: measurements yet; set it from ``benchmarks/slimtik_step.py --device cuda``).
CPU_EIGH_MAX_SIZE = 0


def symmetric_eigh(A: Tensor, cpu_max_size: int = CPU_EIGH_MAX_SIZE) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of ``A`` ``(..., n, n)``, on the CPU when ``n <= cpu_max_size``.

    Parameters
    ----------
    A : Tensor
        Symmetric matrices, shape ``(..., n, n)``.
    cpu_max_size : int
        Largest ``n`` decomposed on the CPU when ``A`` is on another device (0: never).

    Returns
    -------
    eigenvalues : Tensor
        Shape ``(..., n)``, ascending, on the device of ``A``.
    eigenvectors : Tensor
        Shape ``(..., n, n)``, on the device of ``A``.
    """
    if A.device.type != "cpu" and A.shape[-1] <= cpu_max_size:
        s, V = torch.linalg.eigh(A.cpu())
        return s.to(A.device, non_blocking=True), V.to(A.device, non_blocking=True)
    s, V = torch.linalg.eigh(A)
    return s, V
