"""``nn.Conv2d`` heads (rows are ``im2col`` patches) and the checks both convolutions share.

:class:`Conv2dBase` holds what :class:`Conv2dAdapter` and
:class:`~slimtrain.heads.transpose.ConvTranspose2dAdapter` have in common; it and
:func:`check_pair` are public within :mod:`slimtrain.heads` but not part of its ``__all__``.
"""

from __future__ import annotations

import functools
import itertools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimtrain._validation import check_int
from slimtrain.heads.base import DEFAULT_MAX_BLOCK_ELEMENTS, HeadAdapter, check_accumulate_dtype
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
from slimtrain.linalg.correlation import (
    Window,
    plan_window_grams,
    window_cross_blocks,
    window_gram_blocks,
)
from slimtrain.linalg.stats import GramStats


def check_pair(value: Any, name: str, head: nn.Module) -> tuple[int, int]:
    """``head.<name>`` (an int or two) as two non-negative ints; ``ValueError`` if not."""
    label = f"{type(head).__name__}.{name}"
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{label} must be two ints, found {value!r}")
    return check_int(label, pair[0], minimum=0), check_int(label, pair[1], minimum=0)


def _conv_output_size(size: int, lo: int, hi: int, kernel: int, stride: int, dil: int) -> int:
    return (size + lo + hi - dil * (kernel - 1) - 1) // stride + 1


C2 = TypeVar("C2", nn.Conv2d, nn.ConvTranspose2d)


class Conv2dBase(HeadAdapter[C2]):
    """Shared checks of the two convolution adapters."""

    def _check_config(self, head: C2) -> None:
        """Raise unless ``head`` is a supported 2-d convolution (``groups=1``, zero padding)."""
        name = type(head).__name__
        if head.groups != 1:
            raise ValueError(
                f"{name} heads with groups={head.groups} are not supported; slimTik solves a "
                f"dense W, so use groups=1"
            )
        if head.padding_mode != "zeros":
            raise ValueError(
                f"{name} heads with padding_mode={head.padding_mode!r} are not supported; use "
                f"padding_mode='zeros' (pad the features yourself for other modes)"
            )
        if head.weight.ndim != 4:
            raise ValueError(f"{name}.weight must be 4-d, found shape {tuple(head.weight.shape)}")

    def _num_weight_columns(self, head: C2) -> int:
        w = head.weight
        return int(head.in_channels * w.shape[2] * w.shape[3])

    def _num_outputs(self, head: C2) -> int:
        return int(head.out_channels)

    def _check_features(self, head: C2, shape: tuple[int, ...]) -> tuple[int, ...]:
        name = type(head).__name__
        if len(shape) != 4:
            raise ValueError(
                f"features for {name} must have shape (n_samples, {head.in_channels}, H, W), "
                f"found {shape} ({len(shape)} dims); unbatched inputs need a batch dimension"
            )
        if shape[1] != head.in_channels:
            raise ValueError(
                f"features has {shape[1]} channels but the {name} head expects "
                f"in_channels={head.in_channels}"
            )
        return shape

    @staticmethod
    def _rows_from_patches(patches: Tensor) -> Tensor:
        """``unfold`` output ``(N, P, L)`` -> rows ``(N * L, P)``."""
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    @staticmethod
    def _target_rows(targets: Tensor) -> Tensor:
        """``(N, t, H, W)`` -> rows ``(N * H * W, t)``, ordered ``(n, oy, ox)``."""
        return targets.permute(0, 2, 3, 1).reshape(-1, targets.shape[1])

    def _with_ones(self, head: C2, Z: Tensor) -> Tensor:
        if self._bias(head) is None:
            return Z
        return torch.cat([Z, Z.new_ones(Z.shape[0], 1)], dim=1)


@dataclass(frozen=True)
class _ConvGeometry:
    pad: tuple[int, int, int, int]  # F.pad order: (left, right, top, bottom)
    stride: tuple[int, int]
    dilation: tuple[int, int]
    kernel: tuple[int, int]


class Conv2dAdapter(Conv2dBase[nn.Conv2d]):
    r"""``nn.Conv2d``: the rows are the ``im2col`` patches of the features.

    ``Z = unfold(features)`` rearranged to ``(n_samples * L, c_in * kh * kw)`` [| 1] with
    ``L = H_out * W_out`` and columns ordered ``(c_in, ky, kx)``; ``C`` = targets
    ``(n_samples, c_out, H_out, W_out)`` rearranged to ``(n_samples * L, c_out)``;
    ``W = weight.reshape(c_out, -1)`` [| bias]. ``padding="valid"`` and ``padding="same"``
    (extra padding on the bottom/right, as PyTorch does) are supported.
    """

    head_type = nn.Conv2d

    def _geometry(self, head: nn.Conv2d) -> _ConvGeometry:
        kh, kw = int(head.weight.shape[2]), int(head.weight.shape[3])
        stride = check_pair(head.stride, "stride", head)
        dilation = check_pair(head.dilation, "dilation", head)
        if isinstance(head.padding, str):
            if head.padding == "valid":
                pad = (0, 0, 0, 0)
            elif head.padding == "same":
                th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
                pad = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
            else:
                raise ValueError(
                    f"nn.Conv2d padding={head.padding!r} is not supported; use 'valid', 'same' "
                    f"or integers"
                )
        else:
            ph, pw = check_pair(head.padding, "padding", head)
            pad = (pw, pw, ph, ph)
        return _ConvGeometry(pad, stride, dilation, (kh, kw))

    def _output_shape(self, head: nn.Conv2d, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(n_samples, c_out, H_out, W_out)`` by the usual convolution arithmetic."""
        n, _, h, w = self._check_features(head, shape)
        g = self._geometry(head)
        ho = _conv_output_size(h, g.pad[2], g.pad[3], g.kernel[0], g.stride[0], g.dilation[0])
        wo = _conv_output_size(w, g.pad[0], g.pad[1], g.kernel[1], g.stride[1], g.dilation[1])
        if ho < 1 or wo < 1:
            raise ValueError(
                f"features of spatial size {(h, w)} are smaller than the dilated kernel of the "
                f"nn.Conv2d head (output would be {(ho, wo)})"
            )
        return (n, int(head.out_channels), ho, wo)

    def _weight_to_matrix(self, head: nn.Conv2d, weight: Tensor) -> Tensor:
        return weight.reshape(weight.shape[0], -1)

    def _matrix_to_weight(self, head: nn.Conv2d, matrix: Tensor) -> Tensor:
        return matrix.reshape(head.weight.shape)

    def design(self, head: nn.Module, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``Z`` ``(N * L, c_in * kh * kw [+ 1])`` by ``F.unfold``, ``C`` ``(N * L, c_out)``."""
        h, features, targets, _ = self._prepare(head, features, targets)
        g = self._geometry(h)
        patches = F.unfold(
            F.pad(features, g.pad), g.kernel, dilation=g.dilation, stride=g.stride
        )  # (N, c_in * kh * kw, L)
        return self._with_ones(h, self._rows_from_patches(patches)), self._target_rows(targets)

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
        """Gram statistics from shift correlations (or gathered patches), in chunks of samples.

        ``Z^T Z``: with stride ``s``, tap ``(ky, kx)`` reads the polyphase component
        ``(ky d_y mod s_y, kx d_x mod s_x)`` of the padded features at offset
        ``(ky d_y // s_y, kx d_x // s_x)`` with stride 1, so its block with every other tap is
        a window sum of one shift correlation of two components
        (:mod:`slimtrain.linalg.correlation`, ``method="correlation"``), or the product of the
        gathered taps (``method="gather"``). ``Z^T [C | 1]``: per tap one matrix product of its
        window with the targets (:func:`~slimtrain.linalg.correlation.window_cross_blocks`;
        ``torch.nn.grad.conv2d_weight`` computes the same but is slower in float64 on CPU).
        See :class:`HeadAdapter`.
        """
        check_accumulate_dtype(dtype)
        check_method(method)
        h, features, targets, (n, t, ho, wo) = self._prepare(head, features, targets)
        g = self._geometry(h)
        (kh, kw), (dh, dw) = g.kernel, g.dilation
        n_cols = self._num_weight_columns(h)
        c_in = int(features.shape[1])
        biased = self._bias(h) is not None
        x = F.pad(features.to(dtype), g.pad)  # (N, c_in, Hp, Wp)
        c_cn = targets.to(dtype).transpose(0, 1)  # (t, N, H_out, W_out)
        ztz, ztc = new_stats(x, n_cols + biased, t)
        # "auto" keeps the gathered taps for Conv2d: with stride 1 the shifts save ~5x the
        # flops but their per-position products (c x N by N x c) run ~3x slower per flop on
        # CPU than the one large product of the gathered taps (benchmarks/head_statistics.py
        # --conv); the transposed convolution shares its shifts across phases and gains.
        if method == "correlation":
            shift = _conv_shift_plan(
                (int(x.shape[2]), int(x.shape[3])), g.kernel, g.stride, g.dilation, (ho, wo)
            )
            rhs = targets_with_ones(c_cn, biased, dim=0)  # (t [+ 1], N, H_out, W_out)
            x_cn = x.transpose(0, 1)  # (c_in, N, Hp, Wp)
            per_sample = c_in * int(x.shape[2]) * int(x.shape[3])
            for chunk in sample_chunks(n, per_sample, max_block_elements):
                maps = [x_cn[:, chunk, ry :: g.stride[0], rx :: g.stride[1]]
                        for ry, rx in shift.components]
                _correlation_statistics(ztz, ztc, maps, [rhs[:, chunk]], shift, kh * kw)
        else:
            starts = [(ky * dh, kx * dw) for ky in range(kh) for kx in range(kw)]
            gram, cross_rows = chunked_products(
                x.transpose(0, 1), c_cn, starts, g.stride, (ho, wo), max_block_elements
            )
            ztz[:n_cols, :n_cols] = gram
            ztc[:n_cols] = cross_rows[:, :t]
            if biased:
                ztz[:n_cols, -1] = cross_rows[:, t]
        return finish_conv_stats(ztz, ztc, c_cn, biased, n, n * ho * wo)


def _correlation_statistics(
    ztz: Tensor,
    ztc: Tensor,
    maps: Sequence[Tensor],
    targets: Sequence[Tensor],
    shift: ShiftPlan,
    kk: int,
) -> None:
    """Add the shift-correlation statistics of a chunk of samples to ``Z^T Z`` and ``Z^T C``.

    ``maps`` ``(c, N, H, W)`` and ``targets`` ``(t [+ 1], N, J_y, J_x)`` (the last channel ones
    when the head has a bias): the weight block and ones column of ``ztz``, the weight rows of
    ``ztc``.
    """
    c = int(maps[0].shape[0])
    t = int(ztc.shape[1])
    scatter_blocks(ztz, window_gram_blocks(maps, shift.plan), shift.columns, kk, c)
    cross = window_cross_blocks(maps, targets, shift.windows, shift.target_of)  # (taps, c, j)
    rows = (torch.tensor(shift.taps, device=ztz.device)[:, None]
            + kk * torch.arange(c, device=ztz.device)[None, :])  # (taps, c)
    ztc.index_put_((rows,), cross[..., :t], accumulate=True)
    if cross.shape[2] > t:
        last = torch.full_like(rows, ztz.shape[1] - 1)
        ztz.index_put_((rows, last), cross[..., t], accumulate=True)


@functools.lru_cache(maxsize=128)
def _conv_shift_plan(
    padded: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
) -> ShiftPlan:
    """Conv2d taps as stride-1 windows of the polyphase components of the padded input."""
    size = (-(-padded[0] // stride[0]), -(-padded[1] // stride[1]))  # component (0, 0)
    components: list[tuple[int, int]] = []
    windows: list[Window] = []
    for ky, kx in itertools.product(range(kernel[0]), range(kernel[1])):
        by, ry = divmod(ky * dilation[0], stride[0])
        bx, rx = divmod(kx * dilation[1], stride[1])
        if (ry, rx) not in components:
            components.append((ry, rx))
        windows.append((components.index((ry, rx)), by, bx, *out_size))
    taps = tuple(range(len(windows)))
    pairs = tuple(itertools.product(taps, taps))
    blocks = plan_window_grams(tuple(windows), pairs, size)
    return ShiftPlan(tuple(components), tuple(windows), taps, (0,) * len(taps), blocks, pairs)
