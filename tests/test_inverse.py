"""The deblurring problem: blur matrix against the direct formula, noise level, minibatches,
and slimTik on the streamed rows against the whole-data Tikhonov solution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import slimtrain
from slimtrain.problems.inverse import blur_matrix, make_deblur_problem, true_signal


def test_blur_matrix_matches_direct_formula() -> None:
    n, sigma = 40, 0.05
    A = blur_matrix(n, sigma)
    h = 1.0 / n
    for i in (0, 7, 39):
        for j in (0, 3, 20, 39):
            ti, tj = (i + 0.5) * h, (j + 0.5) * h
            gauss = math.exp(-((ti - tj) ** 2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
            ref = h * gauss
            assert A[i, j] == pytest.approx(ref, rel=1e-14)
    np.testing.assert_array_equal(A, A.T)  # symmetric kernel
    # Toeplitz: constant along diagonals
    for k in range(n):
        d = np.diagonal(A, k)
        np.testing.assert_allclose(d, d[0], rtol=1e-13)


def test_blur_rows_sum_to_one_inside_and_half_at_ends() -> None:
    prob = make_deblur_problem(n=256, sigma=0.02)
    rows = prob.A.sum(dim=1).numpy()
    # Away from the ends the midpoint rule integrates the unit Gaussian to machine precision.
    np.testing.assert_allclose(rows[64:192], 1.0, atol=1e-12)
    # At the ends half the kernel is cut off; Euler-Maclaurin: 1/2 + h g(0) / 2.
    h = 1.0 / 256
    end = 0.5 + h / (2 * math.sqrt(2 * math.pi) * 0.02)
    assert rows[0] == pytest.approx(end, abs=1e-6)
    assert rows[-1] == pytest.approx(end, abs=1e-6)


def test_noise_level_is_exact_and_seeded() -> None:
    prob = make_deblur_problem(n=128, noise=0.05, seed=1)
    e = prob.b - prob.b_clean
    assert float(e.norm() / prob.b_clean.norm()) == pytest.approx(0.05, rel=1e-12)
    torch.testing.assert_close(prob.b_clean, prob.A @ prob.x_true, rtol=1e-13, atol=1e-15)
    same = make_deblur_problem(n=128, noise=0.05, seed=1)
    other = make_deblur_problem(n=128, noise=0.05, seed=2)
    assert torch.equal(prob.b, same.b)
    assert not torch.equal(prob.b, other.b)
    clean = make_deblur_problem(n=128, noise=0.0)
    assert torch.equal(clean.b, clean.b_clean)


def test_true_signal_pieces() -> None:
    t = np.array([0.05, 0.2, 0.3, 0.4, 0.49, 0.52, 0.7, 0.9])
    np.testing.assert_allclose(true_signal(t), [0, 0.8, 0, 0.5, 0.95, 0, 1.0, 0], atol=1e-12)


def test_minibatches_cover_every_row_once() -> None:
    prob = make_deblur_problem(n=100)
    seen = []
    for Z, C in prob.minibatches(32, generator=torch.Generator().manual_seed(5)):
        assert Z.shape[1] == 100 and C.shape == (Z.shape[0], 1)
        # recover the row indices: rows of A are distinct
        idx = [int(torch.argmax(z)) for z in Z]  # the diagonal is each row's maximum
        torch.testing.assert_close(Z, prob.A[idx])
        torch.testing.assert_close(C[:, 0], prob.b[idx])
        seen.extend(idx)
    assert sorted(seen) == list(range(100))
    sizes = [Z.shape[0] for Z, _ in prob.minibatches(32, shuffle=False)]
    assert sizes == [32, 32, 32, 4]
    first = next(prob.minibatches(10))[0]
    again = next(prob.minibatches(10))[0]
    assert torch.equal(first, again)  # default order is seeded


def test_tikhonov_solution_matches_normal_equations() -> None:
    prob = make_deblur_problem(n=64, noise=0.02)
    lam = 1e-3
    A, b = prob.A, prob.b
    ref = torch.linalg.solve(A.T @ A + lam * torch.eye(64, dtype=A.dtype), A.T @ b)
    torch.testing.assert_close(prob.tikhonov_solution(lam), ref, rtol=1e-8, atol=1e-10)
    # regularised reconstruction is much better than the noise-amplifying tiny-lambda one
    assert prob.relative_error(prob.tikhonov_solution(1e-3)) < 0.5


def test_slimtik_on_streamed_rows_equals_tikhonov_of_rows_seen() -> None:
    """Integration with the solver (SPEC section 2 invariant, constant lambda, W_0 = 0)."""
    prob = make_deblur_problem(n=64, noise=0.01)
    batches = list(prob.minibatches(16, generator=torch.Generator().manual_seed(0)))
    lam0 = 1e-2
    solver = slimtrain.SlimTik(
        memory_depth=len(batches), initial_lambda=lam0, lambda_rule="constant", reduction="sum",
        lambda_units="absolute",  # Lambda_k = (k + 1) lam0 in the units of the rows
    )
    W = torch.zeros(1, prob.n, dtype=torch.float64)
    rows: list[torch.Tensor] = []
    for k, (Z, C) in enumerate(batches):
        W, info = solver.step(W, Z, C)
        rows.append(Z)
        A_seen = torch.cat(rows)
        b_seen = torch.cat([c for _, c in batches[: k + 1]])[:, 0]
        lam = float(info.sum_lambda)
        assert lam == pytest.approx((k + 2) * lam0)  # initial lambda + one increment per step
        ref = torch.linalg.solve(
            A_seen.T @ A_seen + lam * torch.eye(prob.n, dtype=torch.float64), A_seen.T @ b_seen
        )
        torch.testing.assert_close(W[0], ref, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(W[0], prob.tikhonov_solution(lam), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 1}, {"noise": -0.1}, {"noise": float("nan")}, {"sigma": 0.0}, {"seed": -2}],
)
def test_bad_input(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_deblur_problem(**kwargs)
    with pytest.raises(ValueError):
        next(make_deblur_problem(n=8).minibatches(0))
