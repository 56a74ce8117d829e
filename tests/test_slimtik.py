"""slimTik against independent references: whole-data Tikhonov solves, brute-force sGCV."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimtrain import SlimTik, SlimTikStatus
from slimtrain.linalg import (
    SlimTikConfig,
    candidate_grid,
    gram_statistics,
    initial_state,
    select_lambda_sgcv,
    sgcv_terms,
    sgcv_values,
    slimtik_update,
)

f64 = torch.float64


def _batches(gen: torch.Generator, p: int, t: int, sizes: list[int], noise: float = 0.1):
    W_true = torch.randn(t, p, generator=gen, dtype=f64)
    out = []
    for n in sizes:
        Z = torch.randn(n, p, generator=gen, dtype=f64) * torch.linspace(0.2, 3.0, p, dtype=f64)
        C = Z @ W_true.T + noise * torch.randn(n, t, generator=gen, dtype=f64)
        out.append((Z, C))
    return out


def _reference_tikhonov(batches, reduction, lambda0, lambda_k, W0):
    """Solve min sum 1/2||Zs W^T - Cs||^2 + L0/2||W - W0||^2 + (Lk - L0)/2 ||W||^2 directly."""
    p = W0.shape[1]
    scaled = []
    for Z, C in batches:
        c = 1.0 / math.sqrt(Z.shape[0]) if reduction == "mean" else 1.0
        scaled.append((Z * c, C * c))
    A = torch.cat([z for z, _ in scaled])
    B = torch.cat([c for _, c in scaled])
    extra = lambda_k - lambda0
    if extra >= 0:
        # Stacked least squares [A; sqrt(L0) I; sqrt(Lk - L0) I] W^T = [B; sqrt(L0) W0^T; 0].
        eye = torch.eye(p, dtype=f64)
        A_st = torch.cat([A, math.sqrt(lambda0) * eye, math.sqrt(extra) * eye])
        B_st = torch.cat([B, math.sqrt(lambda0) * W0.T, torch.zeros_like(W0.T)])
        return torch.linalg.lstsq(A_st, B_st, driver="gelsd").solution.T
    # Normal equations when the increments sum to a negative number.
    lhs = A.T @ A + lambda_k * torch.eye(p, dtype=f64)
    rhs = A.T @ B + lambda0 * W0.T
    return torch.linalg.solve(lhs, rhs).T


@pytest.mark.parametrize("units", ["absolute", "relative"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("p", "t", "sizes"), [(4, 1, [7, 9, 3]), (12, 3, [20, 20, 20, 5]),
                                               (30, 5, [16, 40, 25, 11, 8])])
@pytest.mark.parametrize("schedule", ["positive", "mixed", "below_start", "sgcv"])
def test_full_memory_equals_whole_data_tikhonov(reduction, p, t, sizes, schedule, units):
    gen = torch.Generator().manual_seed(p * 100 + t)
    batches = _batches(gen, p, t, sizes)
    lambda0 = 0.3
    solver = SlimTik(memory_depth=len(sizes), initial_lambda=lambda0, reduction=reduction,
                     lower=1e-6, lambda_units=units)
    W0 = torch.randn(t, p, generator=gen, dtype=f64)
    W = W0.clone()
    lams = {"positive": [0.5, 0.01, 2.0, 0.1, 0.7],
            "mixed": [0.8, -0.5, 0.2, -0.4, 1.0],
            # Lambda_k - Lambda_0 < 0 from step 2 on: the reference's normal-equations branch.
            "below_start": [0.1, -0.3, -0.05, 0.2, -0.1]}.get(schedule)
    expected_sum = 0.0
    for k, (Z, C) in enumerate(batches):
        lam = None if lams is None else lams[k]
        W, info = solver.step(W, Z, C, lam=lam)
        # relative units: Lambda_0 = initial_lambda x the first step's data scale, and each
        # prescribed increment is a multiple of its own step's scale.
        unit = info.scale if units == "relative" else 1.0
        if k == 0:
            abs_lambda0 = expected_sum = lambda0 * unit
        if lam is not None:  # a prescribed increment is clipped at the floor
            expected_sum = max(expected_sum + lam * unit, solver.config.lower * unit)
        ref = _reference_tikhonov(batches[: k + 1], reduction, abs_lambda0, info.sum_lambda, W0)
        torch.testing.assert_close(W, ref, rtol=1e-8, atol=1e-9)
    if lams is not None:
        assert solver.sum_lambda == pytest.approx(expected_sum)


def test_constant_rule_accumulates_initial_lambda():
    gen = torch.Generator().manual_seed(1)
    solver = SlimTik(memory_depth=10, initial_lambda=0.05, lambda_rule="constant",
                     lambda_units="absolute")
    W = torch.zeros(2, 6, dtype=f64)
    batches = _batches(gen, 6, 2, [10] * 5)
    for k, (Z, C) in enumerate(batches):
        W, info = solver.step(W, Z, C)
        assert info.sum_lambda == pytest.approx((k + 2) * 0.05)  # Lambda_0 plus k+1 increments
        assert info.status is SlimTikStatus.CONSTANT
    W0 = torch.zeros(2, 6, dtype=f64)
    ref = _reference_tikhonov(batches, "mean", 0.05, solver.sum_lambda, W0)
    torch.testing.assert_close(W, ref, rtol=1e-9, atol=1e-10)


def test_limited_memory_matches_window_recursion():
    """With r < steps the update uses exactly the last r+1 Grams (checked by explicit solve)."""
    gen = torch.Generator().manual_seed(2)
    p, t, r = 8, 2, 2
    batches = _batches(gen, p, t, [12] * 6)
    solver = SlimTik(memory_depth=r, initial_lambda=0.1, lambda_rule="constant",
                     lambda_units="absolute")
    W = torch.zeros(t, p, dtype=f64)
    Lam = 0.1
    grams: list[torch.Tensor] = []
    for Z, C in batches:
        Zs, Cs = Z / math.sqrt(12), C / math.sqrt(12)
        G = Zs.T @ Zs
        M = G + sum(grams[-r:], torch.zeros(p, p, dtype=f64))
        Lam += 0.1
        H = Zs.T @ (Zs @ W.T - Cs)
        expected = W.T - torch.linalg.solve(M + Lam * torch.eye(p, dtype=f64), H + 0.1 * W.T)
        W, _ = solver.step(W, Z, C)
        torch.testing.assert_close(W, expected.T, rtol=1e-10, atol=1e-12)
        grams.append(G)
    assert len(solver.state.grams) == r


def test_sgcv_values_equal_brute_force():
    gen = torch.Generator().manual_seed(3)
    p, t, n = 10, 3, 25
    batches = _batches(gen, p, t, [30, 30, n], noise=0.5)
    config = SlimTikConfig(memory_depth=2, initial_lambda=0.2, lambda_units="absolute")
    state = initial_state(config)
    W = torch.zeros(t, p, dtype=f64)
    for Z, C in batches[:2]:
        W, state, _ = slimtik_update(W, gram_statistics(Z, C, 30), state, config, lam=0.1)
    Z, C = batches[2]
    Zs, Cs = Z / math.sqrt(n), C / math.sqrt(n)
    G = Zs.T @ Zs
    M = G + sum(state.grams)
    H = Zs.T @ (Zs @ W.T - Cs)
    s, V = torch.linalg.eigh(M)
    r2 = ((Zs @ W.T - Cs) ** 2).sum()
    terms = sgcv_terms(s, V.T @ G @ V, V.T @ H, V.T @ W.T, r2, n)
    Lam = float(state.sum_lambda)
    lams = candidate_grid(Lam, config.lower, config.upper, 30, dtype=f64, device=Z.device)
    assert (lams < 0).any() and (lams > 0).any() and (lams == 0).any()
    gcv, res = sgcv_values(terms, lams, Lam)
    for j, lam in enumerate(lams.tolist()):
        B = M + (Lam + lam) * torch.eye(p, dtype=f64)
        W_lam = W.T - torch.linalg.solve(B, H + lam * W.T)
        residual = ((Zs @ W_lam - Cs) ** 2).sum()
        influence = Zs @ torch.linalg.pinv(B) @ Zs.T
        brute = residual / (t * n - t * torch.trace(influence)) ** 2
        assert float(res[j]) == pytest.approx(float(residual), rel=1e-7, abs=1e-12)
        assert float(gcv[j]) == pytest.approx(float(brute), rel=1e-7)
    # The selected increment is the argmin over the grid, possibly improved by refinement.
    choice = select_lambda_sgcv(terms, Lam, config.lower, config.upper)
    assert bool(choice.finite) and float(choice.gcv) <= float(gcv.min()) * (1 + 1e-12)
    grid = select_lambda_sgcv(terms, Lam, config.lower, config.upper, refine=False)
    assert float(grid.gcv) == pytest.approx(float(gcv.min()))
    assert float(grid.lam) == pytest.approx(float(lams[torch.argmin(gcv)]))
    assert float(grid.residual) == pytest.approx(float(res[torch.argmin(gcv)]))


@pytest.mark.parametrize("depth", [0, 2])
def test_step_info_equals_brute_force_at_every_step(depth):
    """info.gcv and info.rel_residual of the assembled step (memory, shortcut for an empty
    memory, expanded residual) against sGCV formed from the explicit rows and B(lam)."""
    gen = torch.Generator().manual_seed(11 + depth)
    p, t = 7, 2
    batches = _batches(gen, p, t, [20, 16, 24, 20, 9], noise=0.3)
    solver = SlimTik(memory_depth=depth, initial_lambda=0.05)
    W = 0.1 * torch.randn(t, p, generator=gen, dtype=f64)
    grams: list[torch.Tensor] = []
    for Z, C in batches:
        n = Z.shape[0]
        Zs, Cs = Z / math.sqrt(n), C / math.sqrt(n)
        G = Zs.T @ Zs
        M = G + sum(grams[-depth:] if depth else [], torch.zeros(p, p, dtype=f64))
        W_new, info = solver.step(W, Z, C)
        Lam = info.sum_lambda - info.lam  # Lambda before the step (absolute)
        assert info.status is SlimTikStatus.OK or info.status.name.startswith("LAMBDA_AT")
        B = M + (Lam + info.lam) * torch.eye(p, dtype=f64)
        H = Zs.T @ (Zs @ W.T - Cs)
        W_lam = W.T - torch.linalg.solve(B, H + info.lam * W.T)
        torch.testing.assert_close(W_new, W_lam.T, rtol=1e-9, atol=1e-12)
        residual = ((Zs @ W_lam - Cs) ** 2).sum()
        influence = Zs @ torch.linalg.pinv(B) @ Zs.T
        brute = residual / (t * n - t * torch.trace(influence)) ** 2
        assert info.gcv == pytest.approx(float(brute), rel=1e-7)
        assert info.rel_residual == pytest.approx(
            float(torch.sqrt(residual) / torch.linalg.norm(Cs)), rel=1e-7)
        grams.append(G)
        W = W_new


def test_degenerate_case_counts_the_rows_in_memory():
    """(rows in memory incl. this batch) <= p: degenerate, Lambda kept; more rows: sGCV."""
    gen = torch.Generator().manual_seed(12)
    p = 10
    batches = _batches(gen, p, 1, [4] * 4)
    solver = SlimTik(memory_depth=2, initial_lambda=0.01)
    W = torch.zeros(1, p, dtype=f64)
    statuses, lambdas, scales = [], [], []
    for Z, C in batches:
        W, info = solver.step(W, Z, C)
        statuses.append(info.status)
        lambdas.append(info.sum_lambda)
        scales.append(info.scale)
        assert bool(torch.isfinite(W).all())
    # 4, 8 rows <= 10: degenerate; then 12 rows (2 stored batches + this one): sGCV runs.
    assert statuses[:2] == [SlimTikStatus.DEGENERATE] * 2
    assert lambdas[1] == lambdas[0] == pytest.approx(0.01 * scales[0], rel=1e-15)
    assert SlimTikStatus.DEGENERATE not in statuses[2:]


def test_multi_output_equals_separate_outputs_with_same_lam():
    gen = torch.Generator().manual_seed(4)
    p, t = 9, 4
    batches = _batches(gen, p, t, [15, 15, 15, 7])
    multi = SlimTik(memory_depth=2)
    W = torch.zeros(t, p, dtype=f64)
    lams = []
    for Z, C in batches:
        W, info = multi.step(W, Z, C)
        lams.append((info.lam, info.scale))
    for j in range(t):
        single = SlimTik(memory_depth=2)
        w = torch.zeros(1, p, dtype=f64)
        for (Z, C), (lam, scale) in zip(batches, lams, strict=True):
            w, _ = single.step(w, Z, C[:, j : j + 1], lam=lam / scale)  # relative units
        torch.testing.assert_close(w[0], W[j], rtol=1e-10, atol=1e-12)


def test_ragged_last_batch_scaled_by_its_own_size():
    gen = torch.Generator().manual_seed(5)
    batches = _batches(gen, 5, 1, [40, 3])
    solver = SlimTik(memory_depth=1, initial_lambda=1.0, lambda_rule="constant")
    W = torch.zeros(1, 5, dtype=f64)
    for Z, C in batches:
        W, _ = solver.step(W, Z, C)
    # The short batch's Gram is stored scaled by 1/3, not 1/40.
    Z, _ = batches[1]
    torch.testing.assert_close(solver.state.grams[-1], Z.T @ Z / 3)


def test_float32_in_float32_out_and_float64_work():
    gen = torch.Generator().manual_seed(6)
    Z, C = _batches(gen, 6, 2, [50])[0]
    solver32 = SlimTik(memory_depth=0)
    W32, info32 = solver32.step(torch.zeros(2, 6), Z.float(), C.float())
    solver64 = SlimTik(memory_depth=0)
    W64, info64 = solver64.step(torch.zeros(2, 6, dtype=f64), Z, C)
    assert W32.dtype == torch.float32
    assert solver32.state.grams == ()
    torch.testing.assert_close(W32.double(), W64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_returned_weights_are_ordinary_tensors(dtype):
    """The solve runs under torch.inference_mode; what the user gets back (weights, state
    dict) must still work in place and with autograd, like any tensor."""
    gen = torch.Generator().manual_seed(7)
    solver = SlimTik(memory_depth=2)
    W = torch.zeros(2, 6, dtype=dtype)
    for Z, C in _batches(gen, 6, 2, [30, 30, 30]):
        W, _ = solver.step(W, Z.to(dtype), C.to(dtype))
    assert not W.is_inference()
    expected = W.detach().clone() + 1.0
    W.add_(1.0)
    torch.testing.assert_close(W, expected)
    W.requires_grad_(True)
    (3.0 * W).sum().backward()
    assert W.grad is not None and bool((W.grad == 3.0).all())
    grams = solver.state_dict()["grams"]
    assert len(grams) == 2 and not any(g.is_inference() for g in grams)
    grams[0].mul_(2.0)  # the state dict's tensors are the caller's to change


def test_degenerate_batch_keeps_lambda_and_says_so():
    gen = torch.Generator().manual_seed(7)
    Z, C = _batches(gen, 20, 1, [10])[0]
    solver = SlimTik(memory_depth=0, initial_lambda=1e-3)
    _, info = solver.step(torch.zeros(1, 20, dtype=f64), Z, C)
    assert info.status is SlimTikStatus.DEGENERATE
    assert info.lam == 0.0 and info.sum_lambda == pytest.approx(1e-3 * info.scale, rel=1e-15)
    assert "memory_depth" in info.status.value


def test_pure_noise_hits_upper_bound_status():
    gen = torch.Generator().manual_seed(8)
    Z = torch.randn(200, 3, generator=gen, dtype=f64)
    C = torch.randn(200, 1, generator=gen, dtype=f64) * 5
    solver = SlimTik(memory_depth=0, upper=1e-3)
    _, info = solver.step(torch.ones(1, 3, dtype=f64) * 10, Z, C)
    assert info.status is SlimTikStatus.LAMBDA_AT_UPPER
    assert info.lam == pytest.approx(1e-3 * info.scale)
    assert "upper" in info.status.value


def test_noise_free_data_drive_lambda_to_lower_silently():
    """A floor that does not limit the fit is healthy: Lambda at lower, status OK."""
    gen = torch.Generator().manual_seed(9)
    batches = _batches(gen, 4, 1, [50, 50], noise=0.0)
    solver = SlimTik(memory_depth=1, initial_lambda=1.0)
    W = torch.zeros(1, 4, dtype=f64)
    for Z, C in batches:
        W, info = solver.step(W, Z, C)
    assert info.status is SlimTikStatus.OK
    assert solver.sum_lambda == pytest.approx(1e-7 * info.scale)
    assert info.rel_residual < 1e-6


@pytest.mark.parametrize("units", ["relative", "absolute"])
def test_a_floor_that_limits_the_fit_says_so(units):
    """One feature column 1e-4 times smaller than the others carries half the signal: the
    floor (1e-7 x the mean eigenvalue, or 1e-7 absolute) swamps its eigenvalue (~1e-8) and the
    fit is poor; LAMBDA_AT_LOWER says so, and a lower floor fixes it."""
    gen = torch.Generator().manual_seed(14)
    p = 4
    column_scale = torch.tensor([1.0, 1.0, 1.0, 1e-4], dtype=f64)
    w_true = torch.tensor([[1.0, 1.0, 1.0, 1e4]], dtype=f64)

    def run(lower):
        solver = SlimTik(memory_depth=2, lower=lower, lambda_units=units)
        W = torch.zeros(1, p, dtype=f64)
        for _ in range(4):
            Z = torch.randn(50, p, generator=gen, dtype=f64) * column_scale
            C = Z @ w_true.T + 1e-3 * torch.randn(50, 1, generator=gen, dtype=f64)
            W, info = solver.step(W, Z, C)
        return info

    bound = run(1e-7)
    assert bound.status is SlimTikStatus.LAMBDA_AT_LOWER and "lower" in bound.status.value
    assert bound.rel_residual > 0.1
    freed = run(1e-16)
    assert freed.status is SlimTikStatus.OK and freed.rel_residual < 1e-2


# ----------------------------------------------------------------------------- bad input

def _snapshot(solver: SlimTik):
    sd = solver.state_dict()
    return sd["sum_lambda"], sd["step"], [g.clone() for g in sd["grams"]], list(sd["rows"])


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda W, Z, C: (W, Z.index_put((torch.tensor([0]), torch.tensor([0])),
                                         torch.tensor(float("nan"), dtype=f64)), C), ValueError),
        (lambda W, Z, C: (W, Z, C.index_put((torch.tensor([1]), torch.tensor([0])),
                                            torch.tensor(float("inf"), dtype=f64))), ValueError),
        (lambda W, Z, C: (W, Z[:, :-1], C), ValueError),
        (lambda W, Z, C: (W, Z, C[:-1]), ValueError),
        (lambda W, Z, C: (W, Z, C[:, :1]), ValueError),
        (lambda W, Z, C: (W, Z.float(), C), TypeError),
        (lambda W, Z, C: (W, Z.long(), C.long()), TypeError),
        (lambda W, Z, C: (W, Z[0], C), ValueError),
        (lambda W, Z, C: (W, Z.numpy(), C), TypeError),
        (lambda W, Z, C: (W.fill_(float("nan")), Z, C), ValueError),
    ],
)
def test_bad_input_raises_and_leaves_state_untouched(mutate, error):
    gen = torch.Generator().manual_seed(10)
    batches = _batches(gen, 5, 2, [20, 20, 20, 20])
    solver, clean = SlimTik(memory_depth=2), SlimTik(memory_depth=2)
    W = torch.zeros(2, 5, dtype=f64)
    Wc = W.clone()
    for Z, C in batches[:2]:
        W, _ = solver.step(W, Z, C)
        Wc, _ = clean.step(Wc, Z, C)
    before = _snapshot(solver)
    Z, C = batches[2]
    with pytest.raises(error) as excinfo:
        solver.step(*mutate(W.clone(), Z.clone(), C.clone()))
    message = str(excinfo.value)
    assert message.split()[0].strip(",") in {"W", "Z", "C", "W,"}  # names the culprit first
    after = _snapshot(solver)
    assert before[:2] == after[:2] and before[3] == after[3]
    assert all(torch.equal(a, b) for a, b in zip(before[2], after[2], strict=True))
    for Z, C in batches[2:]:
        W, i1 = solver.step(W, Z, C)
        Wc, i2 = clean.step(Wc, Z, C)
        assert torch.equal(W, Wc) and i1 == i2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"memory_depth": -1}, ValueError),
        ({"memory_depth": 1.5}, TypeError),
        ({"lower": 1.0, "upper": 1.0}, ValueError),
        ({"lower": 0.0}, ValueError),
        ({"upper": float("inf")}, ValueError),
        ({"initial_lambda": -1.0}, ValueError),
        ({"lambda_rule": "gcv"}, ValueError),
        ({"reduction": "max"}, ValueError),
        ({"n_candidates": 0}, ValueError),
    ],
)
def test_bad_configuration(kwargs, error):
    with pytest.raises(error, match="found"):
        SlimTik(**kwargs)


# ----------------------------------------------------------------------------- robustness

@st.composite
def _nasty_batches(draw):
    p = draw(st.integers(1, 12))
    t = draw(st.integers(1, 3))
    n = draw(st.integers(1, 30))
    kind = draw(st.sampled_from(["rank_deficient", "zeros", "duplicated", "badly_scaled", "plain"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, p))
    if kind == "rank_deficient":
        k = max(1, p // 3)
        Z = rng.standard_normal((n, k)) @ rng.standard_normal((k, p))
    elif kind == "zeros":
        Z = np.zeros((n, p))
    elif kind == "duplicated":
        Z[:, -1] = Z[:, 0]
    elif kind == "badly_scaled":
        Z = Z * np.logspace(-8, 8, p)
    C = rng.standard_normal((n, t)) * draw(st.sampled_from([0.0, 1e-6, 1.0, 1e6]))
    steps = draw(st.integers(1, 4))
    depth = draw(st.integers(0, 3))
    return torch.from_numpy(Z), torch.from_numpy(C), steps, depth


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_nasty_batches())
def test_never_nan_and_lambda_within_bounds(case):
    Z, C, steps, depth = case
    solver = SlimTik(memory_depth=depth, initial_lambda=1e-10)
    W = torch.zeros(C.shape[1], Z.shape[1], dtype=f64)
    hi = 0.0
    for k in range(steps):
        W, info = solver.step(W, Z, C)
        assert torch.isfinite(W).all()
        assert not math.isnan(info.gcv) and math.isfinite(info.rel_residual)
        assert math.isfinite(info.lam) and info.scale > 0
        hi += (solver.config.initial_lambda if k == 0 else 0.0) * info.scale
        hi += solver.config.upper * info.scale
        lo = solver.config.lower * info.scale  # relative units: bounds times the data scale
        assert lo * (1 - 1e-9) <= solver.sum_lambda <= hi * (1 + 1e-9)


# ----------------------------------------------------------------------------- persistence

def test_state_dict_round_trip_is_bit_identical():
    gen = torch.Generator().manual_seed(11)
    batches = _batches(gen, 7, 3, [25] * 6)
    a = SlimTik(memory_depth=3)
    W = torch.zeros(3, 7, dtype=f64)
    for Z, C in batches[:3]:
        W, _ = a.step(W, Z, C)
    buffer = io.BytesIO()
    torch.save({"solver": a.state_dict(), "W": W}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    b = SlimTik(memory_depth=1, upper=5.0)  # settings are restored from the state dict
    b.load_state_dict(loaded["solver"])
    assert b.config == a.config
    Wb = loaded["W"]
    for Z, C in batches[3:]:
        W, ia = a.step(W, Z, C)
        Wb, ib = b.step(Wb, Z, C)
        assert torch.equal(W, Wb) and ia == ib


def test_load_state_dict_rejects_garbage_without_changing_state():
    a = SlimTik(memory_depth=2)
    before = a.state_dict()
    with pytest.raises(ValueError, match="lacks keys"):
        a.load_state_dict({"grams": []})
    bad = dict(before, grams=[torch.eye(2)] * 3, rows=[1, 2, 3])
    with pytest.raises(ValueError, match="memory_depth"):
        a.load_state_dict(bad)
    assert a.state_dict() == before


def test_repr_and_reset():
    s = SlimTik(memory_depth=2)
    s.step(torch.zeros(1, 2, dtype=f64), torch.randn(10, 2, dtype=f64),
           torch.randn(10, 1, dtype=f64))
    assert "step=1" in repr(s) and "memory_depth=2" in repr(s)
    s.reset()
    assert s.n_steps == 0 and s.sum_lambda == 1e-10 and s.state.grams == ()


def _stepped_solver(memory_depth: int = 2, steps: int = 3, seed: int = 12,
                    lambda_units: str = "absolute") -> SlimTik:
    gen = torch.Generator().manual_seed(seed)
    solver = SlimTik(memory_depth=memory_depth, lambda_units=lambda_units)
    W = torch.zeros(2, 5, dtype=f64)
    for Z, C in _batches(gen, 5, 2, [20] * steps):
        W, _ = solver.step(W, Z, C)
    return solver


def _spoil(sd: dict, key: str, value) -> dict:
    out = dict(sd, config=dict(sd["config"]))
    if key.startswith("config."):
        out["config"][key.removeprefix("config.")] = value
    else:
        out[key] = value
    return out


_G = torch.eye(5, dtype=f64)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("sum_lambda", float("nan"), "'sum_lambda' must be finite"),
        ("sum_lambda", float("inf"), "'sum_lambda' must be finite"),
        ("sum_lambda", "0.1", "'sum_lambda' must be a real number"),
        ("sum_lambda", True, "'sum_lambda' must be a real number"),
        ("sum_lambda", 1e-9, "below lower"),  # lower is 1e-7; three steps were taken
        ("step", -1, "'step' must be >= 0, found -1"),
        ("step", 2.0, "'step' must be an integer, found 2.0"),
        ("step", 1, "<= step"),  # two Grams cannot come from one step
        ("rows", [20, -1], r"'rows\[1\]' must be >= 0"),
        ("rows", [20.0, 20], r"'rows\[0\]' must be an integer"),
        ("rows", [20], "equal counts"),
        ("rows", 20, "must be a list"),
        ("grams", [_G, _G.float()], "float64 square"),
        ("grams", [_G, torch.ones(5, dtype=f64)], "float64 square"),
        ("grams", [_G, torch.ones(5, 4, dtype=f64)], "float64 square"),
        ("grams", [_G, torch.eye(4, dtype=f64)], "one shape"),
        ("grams", [_G, _G * float("nan")], "non-finite"),
        ("grams", [_G, [[1.0]]], "float64 tensor"),
        ("grams", _G, "must be a list"),
        ("config.memory_depth", 1, "memory_depth=1"),  # two Grams do not fit a depth of 1
        ("config.memory_depth", -1, "config' is invalid"),
        ("config.lower", 1.0, "below lower"),  # Lambda of the state is below the new lower
        ("config.momentum", 0.9, "unknown keys"),
        ("config", [("memory_depth", 2)], "must be a dict"),
    ],
)
def test_load_state_dict_rejects_each_inconsistency_without_changing_state(key, value, match):
    source = _stepped_solver()
    sd = source.state_dict()
    target = _stepped_solver(memory_depth=3, steps=1, seed=13)
    config_before, before = target.config, _snapshot(target)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(_spoil(sd, key, value))
    after = _snapshot(target)
    assert target.config == config_before
    assert before[:2] == after[:2] and before[3] == after[3]
    assert all(torch.equal(a, b) for a, b in zip(before[2], after[2], strict=True))
    target.load_state_dict(sd)  # the unspoiled dict loads
    assert target.config == source.config and _snapshot(target)[:2] == _snapshot(source)[:2]


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_load_state_dict_relative_units_needs_positive_lambda(value):
    source = _stepped_solver(lambda_units="relative")
    sd = source.state_dict()
    target = _stepped_solver(lambda_units="relative", seed=13)
    before = _snapshot(target)
    with pytest.raises(ValueError, match="Lambda > 0"):
        target.load_state_dict(dict(sd, sum_lambda=value))
    assert _snapshot(target)[:2] == before[:2]
    target.load_state_dict(dict(sd, sum_lambda=1e-300))  # the floor is relative: any Lambda > 0


def test_fresh_solver_state_round_trips_below_lower():
    # Before the first step Lambda is initial_lambda (1e-10), below lower (1e-7): still valid.
    fresh = SlimTik(lambda_units="absolute")
    other = _stepped_solver()
    other.load_state_dict(fresh.state_dict())
    assert other.n_steps == 0 and other.sum_lambda == 1e-10 and other.state.grams == ()
    with pytest.raises(ValueError, match="below lower"):
        other.load_state_dict(dict(fresh.state_dict(), sum_lambda=1e-9))


def test_loaded_grams_do_not_alias_the_state_dict():
    source = _stepped_solver()
    sd = source.state_dict()
    target = SlimTik()
    target.load_state_dict(sd)
    sd["grams"][0].fill_(0.0)
    assert not torch.equal(target.state.grams[0], sd["grams"][0])


def test_a_clipped_increment_says_so():
    gen = torch.Generator().manual_seed(13)
    (Z, C), (Z2, C2) = _batches(gen, 4, 1, [20, 20])
    # SPEC defaults: initial_lambda 1e-10 < lower 1e-7, so the first constant step is clipped.
    solver = SlimTik(lambda_rule="constant", memory_depth=0)
    W, info = solver.step(torch.zeros(1, 4, dtype=f64), Z, C)
    assert info.status is SlimTikStatus.CLIPPED and "lower" in info.status.value
    assert info.sum_lambda == solver.config.lower * info.scale
    first = info
    W, info = solver.step(W, Z, C)  # now Lambda + initial_lambda >= lower (same scale)
    assert info.status is SlimTikStatus.CONSTANT
    assert info.sum_lambda == pytest.approx(first.sum_lambda + 1e-10 * info.scale, rel=1e-12)
    prescribed = SlimTik(initial_lambda=0.5)
    _, info = prescribed.step(torch.zeros(1, 4, dtype=f64), Z, C, lam=-2.0)
    assert info.status is SlimTikStatus.CLIPPED
    assert info.sum_lambda == pytest.approx(prescribed.config.lower * info.scale, rel=1e-9)
    _, info = prescribed.step(torch.zeros(1, 4, dtype=f64), Z, C, lam=0.1)
    assert info.status is SlimTikStatus.OK
