"""The block-arrow slimTik step against the dense one, and the structure of transposed convs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimtrain.linalg.slimtik as slimtik_module
from slimtrain import SlimTik
from slimtrain.heads import head_adapter
from slimtrain.linalg.slimtik import SlimTikConfig, initial_state, slimtik_update
from slimtrain.linalg.stats import GramStats, gram_statistics
from slimtrain.linalg.structured import GramStructure, fits_structure


def _groups(sizes: list[int], interleave: bool) -> tuple[tuple[int, ...], ...]:
    """Column groups of the given sizes, contiguous or dealt out round-robin."""
    p = sum(sizes)
    if not interleave:
        out, start = [], 0
        for size in sizes:
            out.append(tuple(range(start, start + size)))
            start += size
        return tuple(out)
    columns: list[list[int]] = [[] for _ in sizes]
    g = 0
    for j in range(p):
        while len(columns[g % len(sizes)]) >= sizes[g % len(sizes)]:
            g += 1
        columns[g % len(sizes)].append(j)
        g += 1
    return tuple(tuple(c) for c in columns)


def _batch(structure: GramStructure, rows: int, t: int, gen: torch.Generator,
           empty_group: bool = False, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that each touch one group (and the bias): a block-arrow Gram by construction."""
    p = structure.p
    n_groups = len(structure.groups) - int(empty_group)  # the last group gets no rows
    Z = torch.zeros(rows, p, dtype=torch.float64)
    which = torch.randint(n_groups, (rows,), generator=gen)
    for i in range(rows):
        cols = torch.tensor(structure.groups[int(which[i])])
        Z[i, cols] = scale * torch.randn(len(cols), generator=gen, dtype=torch.float64)
    if structure.bias:
        Z[:, -1] = 1.0
    C = torch.randn(rows, t, generator=gen, dtype=torch.float64)
    return Z, C


def _run(structure: GramStructure | None, batches, config: SlimTikConfig, W0: torch.Tensor):
    state, W, out = initial_state(config), W0, []
    for Z, C in batches:
        stats = gram_statistics(Z, C)._replace(structure=structure)
        W, state, record = slimtik_update(W, stats, state, config)
        out.append((W, record.to_info()))
    return out


def _forbid_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dense eigendecomposition ran where the block path should")

    monkeypatch.setattr(slimtik_module, "_dense_step", fail)


CASES = [
    # (group sizes, interleaved, bias, t)
    ([16, 16, 16, 16], True, True, 1),
    ([20, 30, 14], False, True, 1),
    ([16, 16, 16, 16], True, False, 3),
    ([5, 9, 2, 12], False, False, 1),
]


@pytest.mark.parametrize("sizes, interleave, bias, t", CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_block_path_equals_dense_path(monkeypatch, sizes, interleave, bias, t, reduction):
    structure = GramStructure(_groups(sizes, interleave), bias)
    config = SlimTikConfig(memory_depth=2, n_candidates=8, reduction=reduction)
    gen = torch.Generator().manual_seed(0)
    batches = [_batch(structure, rows, t, gen) for rows in (80, 80, 50, 80, 80, 33)]
    W0 = 0.1 * torch.randn(t, structure.p, generator=gen, dtype=torch.float64)
    dense = _run(None, batches, config, W0)
    _forbid_dense(monkeypatch)
    block = _run(structure, batches, config, W0)
    for (Wd, infod), (Wb, infob) in zip(dense, block, strict=True):
        torch.testing.assert_close(Wb, Wd, rtol=1e-8, atol=1e-10 * float(Wd.abs().max()))
        assert infob.status == infod.status
        assert infob.lam == pytest.approx(infod.lam, rel=1e-8, abs=1e-12)
        assert infob.sum_lambda == pytest.approx(infod.sum_lambda, rel=1e-8)
        assert infob.rel_residual == pytest.approx(infod.rel_residual, rel=1e-7, abs=1e-12)
        if infod.status.name != "DEGENERATE":
            assert infob.gcv == pytest.approx(infod.gcv, rel=1e-7)


def test_block_path_matches_whole_data_tikhonov():
    """Independent reference: with memory over every batch, W_k solves the stacked system."""
    structure = GramStructure(_groups([16, 16, 16, 16], True), True)
    config = SlimTikConfig(memory_depth=10, n_candidates=8, lambda_rule="constant",
                           initial_lambda=1e-2)
    gen = torch.Generator().manual_seed(3)
    batches = [_batch(structure, 40, 2, gen) for _ in range(4)]
    W0 = torch.zeros(2, structure.p, dtype=torch.float64)
    W, info = _run(structure, batches, config, W0)[-1]
    Zs = torch.cat([Z / Z.shape[0] ** 0.5 for Z, _ in batches])
    Cs = torch.cat([C / C.shape[0] ** 0.5 for Z, C in batches])
    lam = info.sum_lambda
    A = torch.cat([Zs, lam**0.5 * torch.eye(structure.p, dtype=torch.float64)])
    B = torch.cat([Cs, torch.zeros(structure.p, 2, dtype=torch.float64)])
    reference = torch.linalg.lstsq(A, B).solution.T
    torch.testing.assert_close(W, reference, rtol=1e-9, atol=1e-11)


def test_wrong_structure_falls_back_to_dense(monkeypatch):
    structure = GramStructure(_groups([16, 16, 16, 16], True), True)
    gen = torch.Generator().manual_seed(1)
    Z, C = _batch(structure, 80, 1, gen)
    Z[0] = torch.randn(structure.p, generator=gen, dtype=torch.float64)  # couples the groups
    config = SlimTikConfig(memory_depth=0, n_candidates=8)
    stats = gram_statistics(Z, C)
    assert not fits_structure(stats.ztz, structure)
    W0 = torch.zeros(1, structure.p, dtype=torch.float64)
    dense = slimtik_update(W0, stats, initial_state(config), config)
    claimed = slimtik_update(W0, stats._replace(structure=structure), initial_state(config),
                             config)
    assert torch.equal(dense[0], claimed[0]) and dense[2].to_info() == claimed[2].to_info()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 20), min_size=2, max_size=5),
    bias=st.booleans(),
    rows=st.integers(1, 120),
    scale=st.sampled_from([1e-8, 1.0, 1e6]),
    empty=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_block_path_is_finite_and_agrees(sizes, bias, rows, scale, empty, seed):
    """Rank-deficient, empty and badly scaled blocks: never NaN, and the same step as dense."""
    structure = GramStructure(_groups(sizes, seed % 2 == 0), bias)
    gen = torch.Generator().manual_seed(seed)
    config = SlimTikConfig(memory_depth=1, n_candidates=4)
    batches = [_batch(structure, rows, 1, gen, empty_group=empty, scale=scale) for _ in range(3)]
    W0 = torch.zeros(1, structure.p, dtype=torch.float64)
    dense = _run(None, batches, config, W0)
    block = _run(structure, batches, config, W0)
    gram_norm = max(float(torch.linalg.matrix_norm(Z.T @ Z, ord=2)) / Z.shape[0]
                    for Z, _ in batches)
    drift = 0.0  # the paths' increments' differences so far, relative to Lambda
    W_max, steps = 0.0, 0
    for (Wd, infod), (Wb, infob) in zip(dense, block, strict=True):
        assert bool(torch.isfinite(Wb).all())
        # sGCV's refinement on the two paths can land apart by rounding where its minimum is
        # interior (relative units); dW/dlam is at most about |W| / Lambda, and a difference
        # carries over to the later steps' W.
        drift += abs(infob.lam - infod.lam) / min(infob.sum_lambda, infod.sum_lambda)
        steps += 1
        # Relative units: the bounds are multiples of the data scale of each step.
        top = max(i.scale for _, i in block) * (config.initial_lambda + 3 * config.upper)
        assert config.lower * infob.scale * (1 - 1e-9) <= infob.sum_lambda <= top * (1 + 1e-9)
        # Both paths solve the same (often singular) system; where sGCV picks the same
        # increment the weights agree to the conditioning of M + Lambda I.
        # Tolerance: rounding amplified by the condition number of M + Lambda I (M holds at most
        # two batches' Grams, each scaled by 1 / rows).
        if infob.lam == pytest.approx(infod.lam, rel=1e-6, abs=1e-12):
            cond = 1.0 + 2.0 * gram_norm / infod.sum_lambda
            # The update W - (M + Lambda I)^{-1}(H + lam W) cancels terms as large as the
            # previous W (a degenerate step at scale 1e-8 interpolates with |W| ~ 1e8, the next
            # one at `upper` shrinks it 1e4-fold), and each step's rounding carries over to the
            # next, so the tolerance is relative to the largest W so far, per step taken.
            size = max(float(Wd.abs().max()), W_max) + 1.0
            assert float((Wb - Wd).abs().max()) <= (1e-13 * steps * cond + 2.0 * drift) * size
        W_max = max(W_max, float(Wd.abs().max()))


TRANSPOSE_HEADS = [
    dict(in_channels=3, out_channels=1, kernel_size=4, stride=2, padding=1),
    dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(in_channels=2, out_channels=1, kernel_size=5, stride=3, padding=2, bias=False),
    dict(in_channels=2, out_channels=1, kernel_size=3, stride=(2, 1), padding=1),
    dict(in_channels=2, out_channels=1, kernel_size=3, stride=2, dilation=3, padding=2),
]


@pytest.mark.parametrize("config", TRANSPOSE_HEADS)
def test_transposed_conv_structure_matches_its_design_matrix(config):
    torch.manual_seed(0)
    head = nn.ConvTranspose2d(**config).double()
    adapter = head_adapter(head)
    features = torch.randn(6, config["in_channels"], 7, 6, dtype=torch.float64)
    targets = head(features).detach() + 0.1 * torch.randn_like(head(features))
    stats = adapter.statistics(head, features, targets)
    Z, C = adapter.design(head, features, targets)
    dense = gram_statistics(Z, C, n_samples=features.shape[0])
    assert stats.structure is not None
    # The claimed zeros are zeros of the Gram of the independently built rows.
    assert fits_structure(dense.ztz, stats.structure)
    solver_a, solver_b = SlimTik(memory_depth=2), SlimTik(memory_depth=2)
    W = adapter.get_weight(head, dtype=torch.float64)
    for _ in range(3):
        Wa, info_a = solver_a.step_statistics(W, stats)
        Wb, info_b = solver_b.step_statistics(W, dense)
        torch.testing.assert_close(Wa, Wb, rtol=1e-8, atol=1e-10)
        assert info_a.sum_lambda == pytest.approx(info_b.sum_lambda, rel=1e-8)
        W = Wa


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 2)])
def test_single_phase_has_no_structure(stride, dilation):
    # stride 1, or a dilation sharing the stride's factor: every tap lies in one phase.
    head = nn.ConvTranspose2d(2, 1, 3, stride=stride, dilation=dilation, padding=1).double()
    features = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    stats = head_adapter(head).statistics(head, features, head(features).detach())
    assert stats.structure is None


def test_sum_of_statistics_keeps_equal_structures():
    structure = GramStructure(((0, 1), (2,)), True)
    z = torch.zeros(4, 4, dtype=torch.float64)
    a = GramStats(z, z[:, :1], z.sum(), 1, 1, structure)
    assert (a + a).structure == structure
    assert (a + a._replace(structure=None)).structure is None
