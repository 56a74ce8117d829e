"""Pieces of the Gram statistics shared by the two convolutional adapters.

Gathered-tap products in chunks of samples (the ``method="gather"`` path), the check of the
``method`` option, the :class:`ShiftPlan` of the correlation path, the scatter of tap-pair
blocks into ``Z^T Z`` and the completion of the ones row and column. Used by
:mod:`slimtrain.heads.conv` and :mod:`slimtrain.heads.transpose`; public within
:mod:`slimtrain.heads` but not part of its ``__all__``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from slimtrain.linalg.correlation import Window, WindowPlan
from slimtrain.linalg.stats import GramStats

logger = logging.getLogger(__name__)


def _gather_taps(
    x_cn: Tensor,
    starts: Sequence[tuple[int, int]],
    step: tuple[int, int],
    size: tuple[int, int],
) -> Tensor:
    """Gather strided windows of ``x_cn`` ``(c, n, H, W)`` into ``(c * taps, n * Jy * Jx)``.

    Tap ``t`` with start ``(a, b)`` contributes ``x_cn[:, :, a + step_y * i, b + step_x * j]``
    for ``i < Jy``, ``j < Jx``; rows are ordered ``(c, t)`` and columns ``(n, i, j)``.
    """
    (sy, sx), (jy, jx) = step, size
    windows = [
        x_cn[:, :, a : a + sy * (jy - 1) + 1 : sy, b : b + sx * (jx - 1) + 1 : sx]
        for a, b in starts
    ]
    patches = torch.stack(windows, dim=1)  # (c, taps, n, Jy, Jx)
    return patches.reshape(patches.shape[0] * patches.shape[1], -1)


def sample_chunks(n_samples: int, per_sample: int, max_elements: int) -> list[slice]:
    """Slices of ``range(n_samples)`` of at most ``max_elements // per_sample`` samples (at
    least one) each."""
    size = max(1, max_elements // max(1, per_sample))
    if size < n_samples:
        logger.debug("gathering patches in chunks of %d of %d samples", size, n_samples)
    return [slice(i, min(i + size, n_samples)) for i in range(0, n_samples, size)]


METHODS = ("auto", "correlation", "gather")


def check_method(method: object) -> None:
    """Raise ``ValueError`` unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, found {method!r}")


def targets_with_ones(targets: Tensor, biased: bool, dim: int) -> Tensor:
    """Append a channel of ones along ``dim`` (the channels) when ``biased``."""
    if not biased:
        return targets
    shape = list(targets.shape)
    shape[dim] = 1
    return torch.cat([targets, targets.new_ones(shape)], dim)


@dataclass(frozen=True)
class ShiftPlan:
    """Taps of a convolution as windows of feature maps (the correlation path's plan)."""

    components: tuple[tuple[int, int], ...]  # per map: polyphase component (ry, rx) (Conv2d)
    windows: tuple[Window, ...]  # per tap
    taps: tuple[int, ...]  # per tap: its column (ky' * kw + kx') in W's layout
    target_of: tuple[int, ...]  # per tap: index of its target map (the phase)
    plan: WindowPlan  # the requested tap-pair blocks
    columns: tuple[tuple[int, int], ...]  # per block: the columns of its two taps


def scatter_blocks(
    ztz: Tensor, blocks: Tensor, columns: Sequence[tuple[int, int]], kk: int, c: int
) -> None:
    """Add block ``k`` ``(c, c)`` of tap columns ``(a, b)`` to ``ztz[c * kk + a, d * kk + b]``.

    No blocks (a transposed convolution whose every output row sees only the bias) add nothing.
    """
    if not columns:
        return
    cols = torch.tensor(columns, device=ztz.device)  # (blocks, 2)
    channel = torch.arange(c, device=ztz.device) * kk
    rows = cols[:, 0, None, None] + channel[None, :, None]
    index = torch.broadcast_tensors(rows, cols[:, 1, None, None] + channel[None, None, :])
    ztz.index_put_(index, blocks, accumulate=True)


def new_stats(like: Tensor, p: int, t: int) -> tuple[Tensor, Tensor]:
    """Zero ``Z^T Z`` ``(p, p)`` and ``Z^T C`` ``(p, t)`` with the dtype/device of ``like``."""
    return like.new_zeros(p, p), like.new_zeros(p, t)


def _tap_products(U: Tensor, c_block: Tensor) -> tuple[Tensor, Tensor]:
    """``U U^T`` ``(m, m)`` and ``U [C | 1]`` ``(m, t + 1)`` for gathered taps ``U``.

    ``U`` is ``(m, rows)`` with rows ordered ``(n, i, j)``, ``c_block`` the targets of these
    rows as ``(t, n, Jy, Jx)``; the last column of the second product is ``U``'s row sums
    (the cross products with the ones column).
    """
    t = c_block.shape[0]
    rhs = U.new_empty(t + 1, U.shape[1])
    rhs[:t].view(c_block.shape).copy_(c_block)
    rhs[t] = 1
    return U @ U.T, U @ rhs.T


def chunked_products(
    x_cn: Tensor,
    c_block: Tensor,
    starts: Sequence[tuple[int, int]],
    step: tuple[int, int],
    size: tuple[int, int],
    max_elements: int,
) -> tuple[Tensor, Tensor]:
    """:func:`_tap_products` of the taps ``starts`` over all samples, in chunks of samples.

    ``x_cn`` is the padded input ``(c, N, Hp, Wp)``, ``c_block`` the matching targets
    ``(t, N, Jy, Jx)``; returns ``(m, m)`` and ``(m, t + 1)`` with ``m = c * len(starts)``.
    """
    n = x_cn.shape[1]
    per_sample = x_cn.shape[0] * len(starts) * size[0] * size[1]
    gram = cross = None
    for chunk in sample_chunks(n, per_sample, max_elements):
        U = _gather_taps(x_cn[:, chunk], starts, step, size)  # (m, rows of the chunk)
        g, c = _tap_products(U, c_block[:, chunk])
        if gram is None or cross is None:
            gram, cross = g, c
        else:
            gram += g
            cross += c
    if gram is None or cross is None:  # pragma: no cover - n >= 1 is checked at the boundary
        raise ValueError("no samples to gather")
    return gram, cross


def finish_conv_stats(
    ztz: Tensor, ztc: Tensor, c_cn: Tensor, biased: bool, n_samples: int, n_rows: int
) -> GramStats:
    """Complete the ones row/column (if ``ztz`` has one) and add ``||C||^2``.

    On entry the weight block of ``ztz``, ``ztc`` and the last column ``ztz[:-1, -1]`` (the
    column sums of the weight columns, if biased) are filled; ``c_cn`` is ``(t, N, H, W)``.
    """
    if biased:
        ztz[-1, :-1] = ztz[:-1, -1]
        ztz[-1, -1] = float(n_rows)
        ztc[-1] = c_cn.sum((1, 2, 3))
    return GramStats(ztz, ztc, (c_cn * c_cn).sum(), n_samples, n_rows)
