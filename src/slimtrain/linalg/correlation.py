r"""Gram blocks of shifted windows of feature maps, from one correlation per shift.

The rows of a convolutional head (:mod:`slimtrain.heads`) are windows of its input maps: tap
``t`` reads map ``f_t`` ``(c, N, H, W)`` at positions ``a_t + m`` for ``m`` in a window of size
``J``. The ``(t, t')`` block of the Gram of the rows is

.. math::

    G_{t t'}[c, d] = \sum_n \sum_{m < J} f_t[c, n, a_t + m] \, f_{t'}[d, n, a_{t'} + m].

Every pair with the same maps and the same shift ``\delta = a_{t'} - a_t`` sums the same
per-position products

.. math::

    P_\delta[i, c, d] = \sum_n f[c, n, i] \, g[d, n, i + \delta]

over a different window ``[a_t, a_t + J)``. So :func:`window_gram_blocks` forms ``P_\delta``
once per distinct shift (one batched matrix product over positions) and reads each block as
the sum of ``P_\delta`` over the pair's window (one matrix product of 0/1 window masks with
``P_\delta`` for all pairs of that shift). Pairs ``(t, t')`` and ``(t', t)`` share a shift up
to sign and transposition, so only one of the two is formed. For a ``k x k`` stride-1
convolution this replaces the ``k^4`` tap-pair products by ``((2k - 1)^2 + 1) / 2`` shift
products; for the stride-2 transposed convolution of the autoencoder (``4 x 4`` kernel, four
phases of ``2 x 2`` taps) 64 tap-pair products by 5 shift products. The result is exact:
every entry is a sum of the same products as the Gram of the explicit rows, in another order
(float rounding only).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Window",
    "WindowPlan",
    "plan_window_grams",
    "window_cross_blocks",
    "window_gram_blocks",
]

#: A tap's window: (index of its map, start row, start column, rows J_y, columns J_x).
Window = tuple[int, int, int, int, int]


@dataclass(frozen=True, eq=False)
class _ShiftGroup:
    f: int  # index of the first map
    g: int  # index of the second map
    offset: int  # flat shift: position p of f pairs with position p + offset of g
    span: tuple[int, int]  # flat positions [p0, p1) of f that some window of the group covers
    masks: Tensor  # (pairs, p1 - p0) float64: 1 where the pair's window covers the position
    outputs: tuple[int, ...]  # per pair: index of the requested block
    transposed: tuple[bool, ...]  # per pair: the requested block is the transpose
    copies: dict[tuple[str, torch.device, torch.dtype], Tensor] = field(default_factory=dict)

    def masks_as(self, like: Tensor) -> Tensor:
        """The masks on the device and in the dtype of ``like`` (converted once, then kept)."""
        return _kept(self.copies, "masks", like.device, like.dtype, lambda: self.masks)

    def indices_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``outputs`` (int64) and ``transposed`` (bool, ``(pairs, 1, 1)``) on ``device``."""
        outputs = _kept(self.copies, "outputs", device, torch.int64,
                        lambda: torch.tensor(self.outputs))
        flips = _kept(self.copies, "transposed", device, torch.bool,
                      lambda: torch.tensor(self.transposed)[:, None, None])
        return outputs, flips


def _kept(
    cache: dict[tuple[str, torch.device, torch.dtype], Tensor],
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    make: Callable[[], Tensor],
) -> Tensor:
    """``make()`` on ``device`` in ``dtype``, formed once per (name, device, dtype) and kept:
    no host-to-device copy per step for the plan's constant index and mask tensors."""
    key = (name, device, dtype)
    if key not in cache:
        cache[key] = make().to(device=device, dtype=dtype)
    return cache[key]


@dataclass(frozen=True, eq=False)
class WindowPlan:
    """Which shift correlations to form and where each requested block is read.

    Build with :func:`plan_window_grams` (cached; pure in the geometry).
    """

    n_blocks: int
    size: tuple[int, int]  # (H, W) the maps are zero-extended to
    groups: tuple[_ShiftGroup, ...]

    @property
    def largest_span(self) -> int:
        """Positions of the largest group (its product tensor is this times ``c^2``)."""
        return max((g.span[1] - g.span[0] for g in self.groups), default=0)


@functools.lru_cache(maxsize=256)
def plan_window_grams(
    windows: tuple[Window, ...], pairs: tuple[tuple[int, int], ...], size: tuple[int, int]
) -> WindowPlan:
    """Group the requested blocks ``(t, t')`` by (maps, shift) up to orientation.

    Parameters
    ----------
    windows : tuple of Window
        Per tap ``(map, a_y, a_x, J_y, J_x)``; the window must lie inside its map.
    pairs : tuple of (int, int)
        The blocks wanted, as tap indices; both taps of a pair must have the same window size.
    size : (int, int)
        ``(H, W)`` at least as large as every map; the maps are zero-extended to it, so that a
        shift ``(dy, dx)`` is the constant offset ``dy W + dx`` of flattened positions.

    Returns
    -------
    WindowPlan
    """
    width = size[1]
    grouped: dict[tuple[int, int, int, int], list[tuple[int, int, int, int, int, bool]]] = {}
    for out, (t, u) in enumerate(pairs):
        (mt, ayt, axt, jy, jx), (mu, ayu, axu, jyu, jxu) = windows[t], windows[u]
        if (jy, jx) != (jyu, jxu):
            raise ValueError(f"taps {t} and {u} have windows of different sizes")
        key = (mt, mu, ayu - ayt, axu - axt)
        flipped = (mu, mt, ayt - ayu, axt - axu)
        if flipped < key:  # form the other orientation and transpose it
            grouped.setdefault(flipped, []).append((out, ayu, axu, jy, jx, True))
        else:
            grouped.setdefault(key, []).append((out, ayt, axt, jy, jx, False))
    groups = []
    for (f, g, dy, dx), members in sorted(grouped.items()):
        p0 = min(ay * width + ax for _, ay, ax, _, _, _ in members)
        p1 = max((ay + jy - 1) * width + ax + jx for _, ay, ax, jy, jx, _ in members)
        flat = torch.arange(p0, p1)
        y, x = flat // width, flat % width
        masks = torch.stack([
            ((y >= ay) & (y < ay + jy) & (x >= ax) & (x < ax + jx)).to(torch.float64)
            for _, ay, ax, jy, jx, _ in members
        ])
        groups.append(
            _ShiftGroup(
                f, g, dy * width + dx, (p0, p1), masks,
                tuple(m[0] for m in members), tuple(m[5] for m in members),
            )
        )
    return WindowPlan(len(pairs), size, tuple(groups))


def window_gram_blocks(
    maps: Sequence[Tensor], plan: WindowPlan, origin: tuple[int, int] = (0, 0)
) -> Tensor:
    r"""The requested Gram blocks :math:`G_{t t'}` ``(n_blocks, c, c)`` (module docstring).

    Positions are flattened (``p = y W + x`` on maps zero-extended to ``plan.size``), so a
    shift is a constant offset and both operands of the per-position products are contiguous
    slices: ``P[p] = f[p] g[p + offset]^T`` is one batched matrix product, and the window sums
    are one matrix product of the 0/1 window masks with ``P``. Positions where ``x + dx``
    wraps into the next row lie outside every window (mask 0).

    Parameters
    ----------
    maps : sequence of Tensor
        Feature maps ``(c, N, H_i, W_i)``, all with the same ``c``, ``N``, dtype and device.
        The sums are formed in their dtype.
    plan : WindowPlan
        From :func:`plan_window_grams` for these maps.
    origin : (int, int)
        Where each map's first row and column lie in the zero-extended grid of ``plan.size``
        (``(top, left)`` zero padding the windows' coordinates include, placed in the one
        copy that lays the maps out, instead of a padded copy of the maps); ``origin[0] + H_i``
        and ``origin[1] + W_i`` at most ``plan.size``.

    Returns
    -------
    Tensor
        ``(n_blocks, c, c)``; block ``k`` belongs to ``pairs[k]`` of the plan.
    """
    c, n = int(maps[0].shape[0]), int(maps[0].shape[1])
    height, width = plan.size
    top, left = origin
    for m in maps:
        if top < 0 or left < 0 or top + m.shape[2] > height or left + m.shape[3] > width:
            raise ValueError(
                f"a map of {int(m.shape[2])} x {int(m.shape[3])} placed at origin {origin} does "
                f"not fit the plan's {height} x {width} grid; expected a non-negative origin "
                "with origin + map size <= plan.size"
            )
    first, second = [], []
    for m in maps:  # positions outermost: (H W, c, N), and its transpose (H W, N, c)
        # One copy into the zero-extended layout: bmm takes a permuted view slowly, but reads
        # the transposed view of a contiguous tensor as a transposed operand.
        hw = m.new_zeros(height, width, c, n)
        hw[top : top + m.shape[2], left : left + m.shape[3]] = m.permute(2, 3, 0, 1)
        first.append(hw.view(height * width, c, n))
        second.append(first[-1].transpose(1, 2))
    out = maps[0].new_empty(plan.n_blocks, c, c)
    for group in plan.groups:
        p0, p1 = group.span
        f = first[group.f][p0:p1]
        g = second[group.g][p0 + group.offset : p1 + group.offset]
        P = torch.bmm(f, g).reshape(p1 - p0, c * c)  # (positions, c * c)
        sums = (group.masks_as(P) @ P).reshape(-1, c, c)  # (pairs, c, c)
        outputs, flips = group.indices_on(P.device)
        if any(group.transposed):
            sums = torch.where(flips, sums.transpose(1, 2), sums)
        out[outputs] = sums
    return out


def window_cross_blocks(
    maps: Sequence[Tensor],
    targets: Sequence[Tensor],
    windows: Sequence[Window],
    target_of: Sequence[int],
) -> Tensor:
    r"""Cross products of tap windows with target maps, ``(taps, c, j)``.

    .. math::

        X_t[c, i] = \sum_n \sum_{m < J} f_t[c, n, a_t + m] \, T_t[i, n, m]

    for tap ``t`` with window ``(map, a_y, a_x, J_y, J_x)`` and target map
    ``T_t = targets[target_of[t]]`` ``(j, N, J_y, J_x)``. Both are flattened with the map's
    row length ``W`` (the targets zero-extended to it), so the window of tap ``t`` is the
    contiguous slice starting at ``a_y W + a_x`` and ``X_t`` is one matrix product over
    ``(positions, samples)``; positions that wrap into the next row meet zero targets.

    Parameters
    ----------
    maps : sequence of Tensor
        ``(c, N, H_i, W_i)``, as for :func:`window_gram_blocks`.
    targets : sequence of Tensor
        ``(j, N, J_y, J_x)``, in the dtype and on the device of the maps.
    windows : sequence of Window
        Per tap; the window size must be the size of its target map.
    target_of : sequence of int
        Per tap, the index of its target map.

    Returns
    -------
    Tensor
        ``(taps, c, j)``.
    """
    c, n = int(maps[0].shape[0]), int(maps[0].shape[1])
    height = max(int(m.shape[2]) for m in maps) + 1  # one spare row: slices may run past H
    width = max(int(m.shape[3]) for m in maps)
    flat = [  # (c, H W N): a window is a contiguous run of columns
        F.pad(m, (0, width - m.shape[3], 0, height - m.shape[2]))
        .permute(0, 2, 3, 1).reshape(c, height * width * n)
        for m in maps
    ]
    rhs = [  # (J_y W N, j)
        F.pad(t, (0, width - t.shape[3])).permute(2, 3, 1, 0).reshape(-1, t.shape[0])
        for t in targets
    ]
    out = maps[0].new_empty(len(windows), c, int(targets[0].shape[0]))
    for k, ((m, ay, ax, _, _), ti) in enumerate(zip(windows, target_of, strict=True)):
        start = (ay * width + ax) * n
        out[k] = flat[m][:, start : start + rhs[ti].shape[0]] @ rhs[ti]
    return out
