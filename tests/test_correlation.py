"""Shift-correlation Gram and cross blocks against explicitly sliced windows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from slimtrain.linalg.correlation import (
    Window,
    plan_window_grams,
    window_cross_blocks,
    window_gram_blocks,
)


def _window(maps: list[Tensor], w: Window) -> Tensor:
    m, ay, ax, jy, jx = w
    return maps[m][:, :, ay : ay + jy, ax : ax + jx]


@st.composite
def _problems(draw: st.DrawFn) -> tuple[list[Tensor], tuple[Window, ...], list[Tensor], int]:
    """Maps of different sizes, taps with windows of one of two sizes, targets per size."""
    c, n = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n_maps = draw(st.integers(1, 3))
    sizes = [(draw(st.integers(2, 6)), draw(st.integers(2, 6))) for _ in range(n_maps)]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    maps = [torch.randn(c, n, h, w, generator=gen, dtype=torch.float64) for h, w in sizes]
    shapes = [(draw(st.integers(1, 2)), draw(st.integers(1, 2))) for _ in range(2)]
    windows = []
    for _ in range(draw(st.integers(1, 6))):
        m = draw(st.integers(0, len(maps) - 1))
        jy, jx = shapes[draw(st.integers(0, 1))]
        h, w = sizes[m]
        windows.append((m, draw(st.integers(0, h - jy)), draw(st.integers(0, w - jx)), jy, jx))
    j = draw(st.integers(1, 2))
    targets = [torch.randn(j, n, jy, jx, generator=gen, dtype=torch.float64) for jy, jx in shapes]
    return maps, tuple(windows), targets, j


@settings(max_examples=60, deadline=None)
@given(_problems())
def test_window_blocks_equal_products_of_sliced_windows(
    problem: tuple[list[Tensor], tuple[Window, ...], list[Tensor], int],
) -> None:
    maps, windows, targets, _ = problem
    pairs = tuple(
        (t, u) for t in range(len(windows)) for u in range(len(windows))
        if windows[t][3:] == windows[u][3:]
    )
    size = (max(m.shape[2] for m in maps), max(m.shape[3] for m in maps))
    blocks = window_gram_blocks(maps, plan_window_grams(windows, pairs, size))
    for k, (t, u) in enumerate(pairs):
        ref = torch.einsum("cnyx,dnyx->cd", _window(maps, windows[t]), _window(maps, windows[u]))
        torch.testing.assert_close(blocks[k], ref, rtol=1e-12, atol=1e-12)
    target_of = [[tuple(t.shape[2:]) for t in targets].index(w[3:]) for w in windows]
    cross = window_cross_blocks(maps, targets, windows, target_of)
    for k, w in enumerate(windows):
        ref = torch.einsum("cnyx,jnyx->cj", _window(maps, w), targets[target_of[k]])
        torch.testing.assert_close(cross[k], ref, rtol=1e-12, atol=1e-12)


def test_pairs_of_one_shift_share_one_group_and_mirrored_pairs_are_transposed() -> None:
    """Taps at (0, 0), (0, 1), (1, 0), (1, 1) of one map: 16 pairs, 9 shifts, 5 up to sign."""
    windows = tuple((0, ay, ax, 3, 3) for ay in range(2) for ax in range(2))
    pairs = tuple((t, u) for t in range(4) for u in range(4))
    plan = plan_window_grams(windows, pairs, (4, 4))
    assert len(plan.groups) == 5
    maps = [torch.randn(2, 3, 4, 4, dtype=torch.float64)]
    blocks = window_gram_blocks(maps, plan)
    for k, (t, u) in enumerate(pairs):
        torch.testing.assert_close(blocks[k], blocks[pairs.index((u, t))].T, rtol=0, atol=0)


def test_windows_of_different_sizes_cannot_pair() -> None:
    with pytest.raises(ValueError, match="different sizes"):
        plan_window_grams(((0, 0, 0, 2, 2), (0, 0, 0, 1, 2)), ((0, 1),), (3, 3))


@settings(max_examples=40, deadline=None)
@given(_problems(), st.integers(0, 2), st.integers(0, 2))
def test_origin_places_maps_as_zero_padding_would(
    problem: tuple[list[Tensor], tuple[Window, ...], list[Tensor], int], top: int, left: int
) -> None:
    """Windows over maps placed at ``origin`` equal products of windows of the padded maps."""
    maps, windows, _, _ = problem
    padded = [torch.nn.functional.pad(m, (left, 0, top, 0)) for m in maps]
    # shift every window onto the padded maps' coordinates, some into the padding
    moved = tuple((m, ay + top // 2, ax + left // 2, jy, jx) for m, ay, ax, jy, jx in windows)
    pairs = tuple(
        (t, u) for t in range(len(moved)) for u in range(len(moved))
        if moved[t][3:] == moved[u][3:]
    )
    size = (max(m.shape[2] for m in padded) + 1, max(m.shape[3] for m in padded))
    blocks = window_gram_blocks(maps, plan_window_grams(moved, pairs, size), (top, left))
    for k, (t, u) in enumerate(pairs):
        ref = torch.einsum("cnyx,dnyx->cd", _window(padded, moved[t]), _window(padded, moved[u]))
        torch.testing.assert_close(blocks[k], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("origin", [(-1, 0), (0, -1), (2, 0), (0, 2)])
def test_origin_outside_the_grid_is_refused(origin: tuple[int, int]) -> None:
    plan = plan_window_grams(((0, 0, 0, 2, 2),), ((0, 0),), (4, 5))
    with pytest.raises(ValueError, match="does not fit the plan's 4 x 5 grid"):
        window_gram_blocks([torch.randn(1, 1, 3, 4, dtype=torch.float64)], plan, origin)
