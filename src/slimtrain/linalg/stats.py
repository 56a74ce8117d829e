"""Sufficient statistics of one batch of a linear least-squares system.

Everything the slimTik step needs from a batch is summarised by the Gram matrix of the rows,
the cross products with the targets and the squared norm of the targets. These are plain sums
over rows, so they can be formed per convolution phase, per chunk or per process and added
(:func:`torch.distributed.all_reduce`) before the solve.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from slimtrain.linalg.structured import GramStructure

__all__ = ["GramStats", "gram_statistics"]


class GramStats(NamedTuple):
    """Unscaled sums over the rows of a batch, ``Z`` ``(n_rows, p)`` and ``C`` ``(n_rows, t)``.

    Attributes
    ----------
    ztz : Tensor
        ``Z^T Z``, shape ``(p, p)``.
    ztc : Tensor
        ``Z^T C``, shape ``(p, t)``.
    ctc : Tensor
        ``||C||_F^2``, a 0-d tensor.
    n_samples : int
        Samples in the batch (``N``); the ``reduction="mean"`` scaling divides by it.
    n_rows : int
        Rows of the batch system (``N`` for a dense head, ``N * L`` for a convolutional one).
    structure : GramStructure, optional
        Known zeros of ``Z^T Z`` (block diagonal plus a bias column, as for a strided
        transposed convolution); the step then eigendecomposes the blocks only
        (:mod:`slimtrain.linalg.structured`). ``None``: dense.
    """

    ztz: Tensor
    ztc: Tensor
    ctc: Tensor
    n_samples: int
    n_rows: int
    structure: GramStructure | None = None

    def __add__(self, other: object) -> GramStats:
        """Statistics of the union of two disjoint row sets (not tuple concatenation)."""
        if not isinstance(other, GramStats):
            return NotImplemented
        return GramStats(
            self.ztz + other.ztz,
            self.ztc + other.ztc,
            self.ctc + other.ctc,
            self.n_samples + other.n_samples,
            self.n_rows + other.n_rows,
            self.structure if self.structure == other.structure else None,
        )


def gram_statistics(
    Z: Tensor,
    C: Tensor,
    n_samples: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> GramStats:
    """Form :class:`GramStats` from explicit rows.

    Parameters
    ----------
    Z : Tensor
        Design rows, shape ``(n_rows, p)``.
    C : Tensor
        Targets, shape ``(n_rows, t)``.
    n_samples : int, optional
        Samples the rows come from; defaults to ``n_rows`` (a dense head).
    dtype : torch.dtype
        Accumulation dtype of the sums (float64 by default, whatever the dtype of ``Z``).

    Returns
    -------
    GramStats
    """
    Zd = Z.to(dtype)
    Cd = C.to(dtype)
    n_rows = int(Z.shape[0])
    return GramStats(
        ztz=Zd.T @ Zd,
        ztc=Zd.T @ Cd,
        ctc=(Cd * Cd).sum(),
        n_samples=n_rows if n_samples is None else int(n_samples),
        n_rows=n_rows,
    )
