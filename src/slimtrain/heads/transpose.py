r"""``nn.ConvTranspose2d`` heads: the equivalent convolution and its phase decomposition.

The transposed convolution
--------------------------
For ``nn.ConvTranspose2d`` with stride ``s``, padding ``q``, dilation ``d``, output padding
``o`` and weight ``w`` of shape ``(c_in, c_out, kh, kw)``, along one axis

.. math::

    y[n, j, u] = b_j + \sum_{c, k} x[n, c, (u + q - d k) / s] \, w[c, j, k],

summing over the taps ``k`` for which ``(u + q - d k) / s`` is an integer in ``[0, H_in)``;
``H_out = (H_in - 1) s - 2 q + d (kh - 1) + o + 1``. This is the ordinary convolution (a
cross-correlation, as ``nn.Conv2d`` computes it) of the stride-dilated input ``x_s``
(``s - 1`` zeros inserted between neighbouring pixels), padded by ``d (kh - 1) - q`` before and
``d (kh - 1) - q + o`` after (negative padding crops), with the flipped, channel-swapped kernel
``w'[j, c, a] = w[c, j, kh - 1 - a]``. The design rows are therefore those of that ``Conv2d``,
``Z = unfold(pad(x_s))`` with dilation ``d``, and ``W = w'.reshape(c_out, -1)`` [| bias]:
column ``c * kh * kw + a * kw + a'`` of ``W`` holds ``w[c, :, kh - 1 - a, kw - 1 - a']``.

Phase decomposition (the fast path). Output position ``u = r + s m`` (phase ``r = u mod s``)
only sees the taps ``k`` with ``(r + q - d k) mod s = 0``, reading input pixel
``m + (r + q - d k) / s``. Every tap belongs to exactly one phase, so in two dimensions the
phase ``(ry, rx)`` has a small dense design of the ``(c_in, taps of the phase)`` columns, at
most ``c_in * ceil(kh / s_h) * ceil(kw / s_w)`` wide, built by strided slicing of the
(un-dilated) input; its rows are the output pixels of that phase. Rows of different phases
share no tap, so ``Z^T Z`` is, up to a permutation of columns, block diagonal with one block
per phase (plus the ones column), and the per-phase Gram and cross products are written into
their blocks. This costs ``1 / (s_h s_w)^2`` of the dense ``p x p`` Gram of the zero-inserted
rows and never materialises them.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from slimtrain.heads.base import DEFAULT_MAX_BLOCK_ELEMENTS, check_accumulate_dtype
from slimtrain.heads.conv import Conv2dBase, check_pair
from slimtrain.heads.conv_statistics import (
    ShiftPlan,
    check_method,
    chunked_products,
    finish_conv_stats,
    new_stats,
    sample_chunks,
    scatter_blocks,
    targets_with_ones,
)
from slimtrain.linalg.correlation import Window, plan_window_grams, window_gram_blocks
from slimtrain.linalg.stats import GramStats
from slimtrain.linalg.structured import GramStructure


def _use_correlation(method: str, product_elements: int, max_elements: int) -> bool:
    """Whether to form ``Z^T Z`` from shift correlations (see the ``method`` option)."""
    if method == "auto":
        return product_elements <= max_elements
    return method == "correlation"


@dataclass(frozen=True)
class _Phase:
    """One output phase ``(ry, rx)`` of a transposed convolution (fast path plan)."""

    phase: tuple[int, int]  # (ry, rx): first output row / column of the phase
    size: tuple[int, int]  # (Jy, Jx): output positions of the phase per axis
    starts: tuple[tuple[int, int], ...]  # per tap: window start in the padded input
    columns: tuple[int, ...]  # per tap: ky' * kw + kx' in W's (flipped) layout


@dataclass(frozen=True)
class _TransposePlan:
    pad: tuple[int, int, int, int]  # F.pad of the un-dilated input: (left, right, top, bottom)
    stride: tuple[int, int]
    phases: tuple[_Phase, ...]


def _axis_phases(
    n_in: int, n_out: int, kernel: int, stride: int, padding: int, dilation: int
) -> tuple[list[tuple[int, int, list[tuple[int, int]]]], int, int]:
    """Phases of one axis: ``[(r, J, [(k, offset), ...])]`` and the padding the windows need.

    Output ``u = r + s m`` (``m < J``) reads input ``m + offset`` through tap ``k`` when
    ``(r + q - d k) mod s = 0``, with ``offset = (r + q - d k) / s``.
    """
    phases = []
    lo = hi = 0
    for r in range(min(stride, n_out)):
        n_pos = len(range(r, n_out, stride))
        taps = [
            (k, (r + padding - dilation * k) // stride)
            for k in range(kernel)
            if (r + padding - dilation * k) % stride == 0
        ]
        for _, offset in taps:
            lo = max(lo, -offset)
            hi = max(hi, offset + n_pos - n_in)
        phases.append((r, n_pos, taps))
    return phases, lo, hi


@functools.lru_cache(maxsize=128)
def _transpose_plan(
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> _TransposePlan:
    """Phase plan of a transposed convolution; pure in its (hashable) geometry."""
    ys, top, bottom = _axis_phases(
        in_size[0], out_size[0], kernel[0], stride[0], padding[0], dilation[0]
    )
    xs, left, right = _axis_phases(
        in_size[1], out_size[1], kernel[1], stride[1], padding[1], dilation[1]
    )
    kh, kw = kernel
    phases = []
    for (ry, jy, taps_y), (rx, jx, taps_x) in itertools.product(ys, xs):
        if not taps_y or not taps_x:
            continue  # rows of this phase see no weight (only the bias)
        starts, columns = [], []
        for (ky, oy), (kx, ox) in itertools.product(taps_y, taps_x):
            starts.append((oy + top, ox + left))
            columns.append((kh - 1 - ky) * kw + (kw - 1 - kx))
        phases.append(_Phase((ry, rx), (jy, jx), tuple(starts), tuple(columns)))
    return _TransposePlan((left, right, top, bottom), stride, tuple(phases))


class ConvTranspose2dAdapter(Conv2dBase[nn.ConvTranspose2d]):
    r"""``nn.ConvTranspose2d``: rows of the equivalent convolution of the zero-inserted input.

    With weight ``w`` ``(c_in, c_out, kh, kw)``, ``W = w.flip(2, 3).transpose(0, 1)
    .reshape(c_out, -1)`` [| bias]: column ``c * kh * kw + a * kw + a'`` holds
    ``w[c, :, kh - 1 - a, kw - 1 - a']``. ``Z`` ``(n_samples * H_out * W_out, p)`` is the
    ``unfold`` (dilation ``d``) of the stride-dilated features padded by ``d (k - 1) - q``
    before and ``d (k - 1) - q + output_padding`` after, per axis; see the module docstring for
    the mapping and the phase decomposition that :meth:`statistics` uses.
    """

    head_type = nn.ConvTranspose2d

    def _check_config(self, head: nn.ConvTranspose2d) -> None:
        """Raise unless ``head`` is a supported ``nn.ConvTranspose2d``."""
        super()._check_config(head)
        stride = check_pair(head.stride, "stride", head)
        dilation = check_pair(head.dilation, "dilation", head)
        output_padding = check_pair(head.output_padding, "output_padding", head)
        check_pair(head.padding, "padding", head)
        for s, d, o in zip(stride, dilation, output_padding, strict=True):
            if not 0 <= o < max(s, d):
                raise ValueError(
                    f"nn.ConvTranspose2d output_padding={head.output_padding} must be smaller "
                    f"than stride or dilation (stride={head.stride}, dilation={head.dilation})"
                )

    def _params(self, head: nn.ConvTranspose2d) -> tuple[tuple[int, int], ...]:
        return (
            (int(head.weight.shape[2]), int(head.weight.shape[3])),
            check_pair(head.stride, "stride", head),
            check_pair(head.padding, "padding", head),
            check_pair(head.dilation, "dilation", head),
            check_pair(head.output_padding, "output_padding", head),
        )

    def _output_shape(self, head: nn.ConvTranspose2d, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(n_samples, c_out, H_out, W_out)``, ``H_out = (H-1) s - 2 q + d (k-1) + o + 1``.

        ``output_size`` given to ``forward`` is not supported: the head's own
        ``output_padding`` fixes the size.
        """
        n, _, h, w = self._check_features(head, shape)
        kernel, stride, padding, dilation, out_pad = self._params(head)
        out = tuple(
            (size - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1)
            + out_pad[i] + 1
            for i, size in enumerate((h, w))
        )
        if out[0] < 1 or out[1] < 1:
            raise ValueError(
                f"features of spatial size {(h, w)} give an empty output {out} for the "
                f"nn.ConvTranspose2d head (padding {padding} is too large)"
            )
        return (n, int(head.out_channels), out[0], out[1])

    def _weight_to_matrix(self, head: nn.ConvTranspose2d, weight: Tensor) -> Tensor:
        return weight.flip(2, 3).transpose(0, 1).reshape(weight.shape[1], -1)

    def _matrix_to_weight(self, head: nn.ConvTranspose2d, matrix: Tensor) -> Tensor:
        c_in, c_out, kh, kw = head.weight.shape
        return matrix.reshape(c_out, c_in, kh, kw).transpose(0, 1).flip(2, 3)

    def design(self, head: nn.Module, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Explicit rows from the zero-inserted features (reference path; ``s^2`` times larger
        than needed, see :meth:`statistics`)."""
        hd, features, targets, _ = self._prepare(head, features, targets)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = self._params(hd)
        n, c, h, w = features.shape
        dilated = features.new_zeros(n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
        dilated[:, :, ::sh, ::sw] = features
        top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
        padded = F.pad(dilated, (left, left + ow, top, top + oh))  # negative entries crop
        patches = F.unfold(padded, (kh, kw), dilation=(dh, dw))  # (N, c_in * kh * kw, L)
        return self._with_ones(hd, self._rows_from_patches(patches)), self._target_rows(targets)

    def statistics(
        self,
        head: nn.Module,
        features: Tensor,
        targets: Tensor,
        dtype: torch.dtype = torch.float64,
        *,
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
        method: str = "auto",
    ) -> GramStats:
        """Gram statistics by the phase decomposition (module docstring).

        ``Z^T Z``: the taps of output phase ``(ry, rx)`` read stride-1 windows of the
        un-dilated, padded features, so the phase's block is formed from shift correlations of
        the features (:mod:`slimtrain.linalg.correlation`; the shifts are shared by all phases,
        ``method="correlation"``) or from the gathered taps ``U U^T`` (``method="gather"``).
        Blocks of different phases do not overlap; nothing is summed across phases except the
        ones column. ``Z^T [C | 1]``: the transposed convolution is the adjoint of the
        convolution ``conv2d(., w, stride, padding, dilation)``, so the cross products are the
        native weight gradient ``torch.nn.grad.conv2d_weight`` with ``[C | 1]`` as the input
        and the features (zero-extended to that convolution's output size) as the output
        gradient, rearranged to ``W``'s flipped layout. It unfolds the targets, which have few
        channels, on the input grid: one pass over the features.
        """
        check_accumulate_dtype(dtype)
        check_method(method)
        hd, features, targets, (n, t, ho, wo) = self._prepare(head, features, targets)
        kernel, stride, padding, dilation, _ = self._params(hd)
        c_in, h, w = int(features.shape[1]), int(features.shape[2]), int(features.shape[3])
        plan = _transpose_plan((h, w), (ho, wo), kernel, stride, padding, dilation)
        x = features.to(dtype)
        c_cn = targets.to(dtype).transpose(0, 1)  # (t, N, H_out, W_out)
        kk = kernel[0] * kernel[1]
        n_cols = c_in * kk
        biased = self._bias(hd) is not None
        ztz, ztc = new_stats(x, n_cols + biased, t)
        shift = _transpose_shift_plan(plan, (h, w))
        if _use_correlation(method, shift.plan.largest_span * c_in * c_in, max_block_elements):
            rhs = targets_with_ones(targets.to(dtype), biased, dim=1)  # (N, t [+ 1], Ho, Wo)
            # the convolution adjoint to the head maps H_out to >= H_in; zero-extend x to it
            conv_out = [
                (size + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                for i, size in enumerate((ho, wo))
            ]
            extend = (0, conv_out[1] - w, 0, conv_out[0] - h)
            x_ext = F.pad(x, extend) if any(extend) else x
            x_cn = x.transpose(0, 1)  # (c_in, N, H, W)
            left, _, top, _ = plan.pad  # non-negative (the windows' padding)
            per_sample = max(rhs.shape[1] * kk * conv_out[0] * conv_out[1],
                             c_in * shift.plan.size[0] * shift.plan.size[1])
            for chunk in sample_chunks(n, per_sample, max_block_elements):
                # (c_in, n, H, W), padded by (top, left) where window_gram_blocks lays it out
                blocks = window_gram_blocks([x_cn[:, chunk]], shift.plan, (top, left))
                scatter_blocks(ztz, blocks, shift.columns, kk, c_in)
                cross = conv2d_weight(
                    rhs[chunk], (c_in, rhs.shape[1], *kernel), x_ext[chunk], stride, padding,
                    dilation,
                )  # (c_in, t [+ 1], kh, kw) in the head's weight layout
                rows = cross.flip(2, 3).transpose(0, 1).reshape(cross.shape[1], -1).T
                ztc[:n_cols] += rows[:, :t]
                if biased:
                    ztz[:n_cols, -1] += rows[:, t]
        else:
            x_cn = F.pad(x.transpose(0, 1), plan.pad)  # (c_in, N, Hp, Wp)
            channel_offsets = torch.arange(0, n_cols, kk, device=x_cn.device)
            for phase in plan.phases:
                (ry, rx), (jy, jx) = phase.phase, phase.size
                taps = torch.tensor(phase.columns, device=x_cn.device)
                idx = (channel_offsets[:, None] + taps[None, :]).reshape(-1)  # (c_in * taps,)
                c_phase = c_cn[:, :, ry :: stride[0], rx :: stride[1]]  # (t, N, Jy, Jx)
                gram, cross = chunked_products(
                    x_cn, c_phase, phase.starts, (1, 1), (jy, jx), max_block_elements
                )
                ztz[idx[:, None], idx[None, :]] = gram
                ztc[idx] = cross[:, :t]
                if biased:
                    ztz[idx, -1] = cross[:, t]
        stats = finish_conv_stats(ztz, ztc, c_cn, biased, n, n * ho * wo)
        return stats._replace(structure=_transpose_structure(plan, c_in, kk, biased))


@functools.lru_cache(maxsize=128)
def _transpose_shift_plan(plan: _TransposePlan, in_size: tuple[int, int]) -> ShiftPlan:
    """The taps of every phase as windows of the padded input; blocks within phases only."""
    left, right, top, bottom = plan.pad
    size = (in_size[0] + top + bottom, in_size[1] + left + right)
    windows: list[Window] = []
    target_of: list[int] = []
    columns: list[tuple[int, int]] = []
    pairs: list[tuple[int, int]] = []
    for index, phase in enumerate(plan.phases):
        first = len(windows)
        windows.extend((0, ay, ax, *phase.size) for ay, ax in phase.starts)
        target_of.extend([index] * len(phase.starts))
        taps = range(first, len(windows))
        pairs.extend(itertools.product(taps, taps))
        columns.extend(itertools.product(phase.columns, phase.columns))
    blocks = plan_window_grams(tuple(windows), tuple(pairs), size)
    taps_columns = tuple(col for phase in plan.phases for col in phase.columns)
    return ShiftPlan(
        ((0, 0),), tuple(windows), taps_columns, tuple(target_of), blocks, tuple(columns)
    )


@functools.lru_cache(maxsize=128)
def _transpose_structure(
    plan: _TransposePlan, c_in: int, kk: int, biased: bool
) -> GramStructure | None:
    """The block structure of a transposed convolution's Gram: one group per output phase.

    A row of phase ``(ry, rx)`` touches only that phase's taps (of every input channel), so
    ``Z^T Z`` is zero between phases except in the ones column. Taps that reach no output
    form one more (all-zero) group. ``None`` when there are fewer than two groups (stride 1).
    """
    groups = []
    seen: set[int] = set()
    for phase in plan.phases:
        cols = tuple(sorted(c * kk + col for c in range(c_in) for col in phase.columns))
        groups.append(cols)
        seen.update(cols)
    rest = tuple(j for j in range(c_in * kk) if j not in seen)
    if rest:
        groups.append(rest)
    return GramStructure(tuple(groups), biased) if len(groups) >= 2 else None
