"""EigenPro's pure functions against explicit eigendecompositions, formulas and KernelRidge."""

from __future__ import annotations

import dataclasses
import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.kernel_ridge import KernelRidge
from sklearn.metrics.pairwise import rbf_kernel

from slimtrain.kernels import config, eigenpro, memory, nystrom, preconditioner, setup
from slimtrain.kernels.eigenpro import (
    EigenProConfig,
    EigenProResult,
    EigenProSetup,
    EigenProStatus,
    NystromEigensystem,
    Preconditioner,
    RuntimeOptions,
    auto_subsample_size,
    choose_n_components,
    eigenpro_epoch,
    eigenpro_preconditioner,
    eigenpro_setup,
    eigenpro_solve,
    eigenpro_step_and_batch,
    max_batch_size,
    numerical_component_limit,
    nystrom_eigensystem,
    preconditioned_top_eigenvalue,
    top_eigenpairs,
)
from slimtrain.kernels.functions import kernel_matmul, make_kernel

pytestmark = pytest.mark.usefixtures("few_threads")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


_CONFIG = {f.name for f in dataclasses.fields(EigenProConfig)}
_OPTIONS = {f.name for f in dataclasses.fields(RuntimeOptions)}


def _split(kw: dict[str, object]) -> tuple[EigenProConfig, RuntimeOptions]:
    """Keyword arguments into the statistical config and the engineering options."""
    config = EigenProConfig(**{k: kw.pop(k) for k in list(kw) if k in _CONFIG})  # type: ignore[arg-type]
    options = RuntimeOptions(**{k: kw.pop(k) for k in list(kw) if k in _OPTIONS})  # type: ignore[arg-type]
    return config, options


def _solve(kernel: object, x: object, y: object, **kw: object) -> EigenProResult:
    config, options = _split(kw)
    return eigenpro_solve(kernel, x, y, config, options, **kw)  # type: ignore[arg-type]


def _setup(kernel: object, x: object, **kw: object) -> EigenProSetup:
    config, options = _split(kw)
    return eigenpro_setup(kernel, x, config, options, **kw)  # type: ignore[arg-type]


def _data(n: int = 300, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, d))
    y = np.stack([np.sin(3 * x[:, 0]) + x[:, 1] ** 2, np.cos(2 * x.sum(1))], axis=1)
    return torch.tensor(x), torch.tensor(y)


# --------------------------------------------------------------------------- eigensystem


@pytest.mark.parametrize("method", ["eigh", "randomized"])
def test_top_eigenpairs_match_numpy(method: str) -> None:
    x, _ = _data(600, 3)
    gram = rbf_kernel(x.numpy(), gamma=2.0) / 600
    ref_values, ref_vectors = np.linalg.eigh(gram)
    ref_values, ref_vectors = ref_values[::-1], ref_vectors[:, ::-1]
    k = 40
    values, vectors = top_eigenpairs(torch.tensor(gram), k, method=method, generator=_gen())
    assert values.dtype == torch.float64 and vectors.shape == (600, k)
    tol = 1e-10 if method == "eigh" else 1e-6
    np.testing.assert_allclose(values[: k // 2].numpy(), ref_values[: k // 2], rtol=tol)
    np.testing.assert_allclose(values.numpy(), ref_values[:k], rtol=1e-2 if tol > 1e-8 else tol)
    # leading eigenvectors agree up to sign
    overlap = np.abs(np.sum(vectors[:, :10].numpy() * ref_vectors[:, :10], axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(k), atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["eigh", "randomized"])
def test_nystrom_eigensystem_is_that_of_the_normalised_subsample_gram(
    dtype: torch.dtype, method: str
) -> None:
    x, _ = _data(700, 2)
    eig = nystrom_eigensystem(make_kernel("gaussian", 0.4), x.to(dtype), 30, method=method,
                              generator=_gen())
    ref = np.linalg.eigvalsh(rbf_kernel(x.numpy(), gamma=1 / 0.32) / 700)[::-1]
    assert eig.eigenvalues.dtype == eig.eigenvectors.dtype == torch.float64
    tol = 1e-10 if dtype == torch.float64 else 1e-5  # float32 Gram: rounding of its entries
    np.testing.assert_allclose(eig.eigenvalues[:10].numpy(), ref[:10], rtol=tol)
    np.testing.assert_allclose(eig.eigenvalues.numpy(), ref[:30], rtol=max(tol, 1e-2))


# --------------------------------------------------------------------------- preconditioner


def _preconditioned_operator(
    gram: np.ndarray, pre: Preconditioner, ridge: float
) -> np.ndarray:
    """(1/s)(K + rI)(I - E D E^T K) when every point is in the subsample (n = s)."""
    s = gram.shape[0]
    e = pre.eigenvectors.double().numpy()
    d = pre.scale.double().numpy()
    return (gram + ridge * np.eye(s)) @ (np.eye(s) - e @ np.diag(d) @ e.T @ gram) / s


@pytest.mark.parametrize("ridge", [0.0, 0.5])
@pytest.mark.parametrize("q", [1, 5, 20])
def test_preconditioner_top_eigenvalue_against_explicit_eigendecomposition(
    q: int, ridge: float
) -> None:
    x, _ = _data(150, 2, seed=3)
    s = x.shape[0]
    gram = rbf_kernel(x.numpy(), gamma=4.0)
    eig = nystrom_eigensystem(make_kernel("gaussian", math.sqrt(1 / 8)), x, q + 1,
                              method="eigh")
    pre = eigenpro_preconditioner(eig, q, shift=ridge / s, softening=0.95,
                                  dtype=torch.float64)
    op = _preconditioned_operator(gram, pre, ridge)
    spectrum = np.sort(np.linalg.eigvals(op).real)[::-1]
    assert spectrum[0] == pytest.approx(pre.top_eigenvalue, rel=1e-8)
    # the whole spectrum: mu_i^(1-a) mu_q^a for i < q, mu_i beyond (mu = lambda + r/s)
    mu = np.linalg.eigvalsh(gram / s)[::-1] + ridge / s
    expected = np.concatenate([mu[:q] ** 0.05 * mu[q] ** 0.95, mu[q:]])
    np.testing.assert_allclose(spectrum[:40], np.sort(expected)[::-1][:40], rtol=1e-7,
                               atol=1e-12)
    assert pre.top_eigenvalue == pytest.approx(mu[0] ** 0.05 * mu[q] ** 0.95, rel=1e-10)


def test_preconditioned_top_eigenvalue_formula() -> None:
    lam = torch.tensor([0.8, 0.3, 0.05, 0.01], dtype=torch.float64)
    assert preconditioned_top_eigenvalue(lam, 0) == pytest.approx(0.8)
    assert preconditioned_top_eigenvalue(lam, 2, 0.95) == pytest.approx(0.8 / (0.8 / 0.05)**0.95)
    assert preconditioned_top_eigenvalue(lam, 3, 0.5) == pytest.approx(math.sqrt(0.8 * 0.01))
    with pytest.raises(ValueError, match="n_components=4 needs at least 5 eigenvalues"):
        preconditioned_top_eigenvalue(lam, 4)


def test_choose_n_components_is_the_smallest_q_reaching_the_target() -> None:
    lam = torch.tensor(np.geomspace(0.5, 1e-6, 60))
    for target in (1, 3, 50, 800, 10**5, 10**9):
        q = choose_n_components(lam, 1.0, target)
        brute = next(
            (j for j in range(60) if 1.0 / preconditioned_top_eigenvalue(lam, j) >= target), 59
        )
        assert q == brute
    assert choose_n_components(lam, 1.0, 10**9, max_components=7) == 7


# --------------------------------------------------------------------------- parameter rule


@pytest.mark.parametrize(
    ("beta", "lt1", "m_max"),
    [(1.0, 1e-3, 10**6), (1.0, 1e-3, 200), (2.5, 0.1, 7), (1.0, 0.5, 1000), (3.0, 3e-5, 10**5)],
)
def test_step_and_batch_follow_the_formula(beta: float, lt1: float, m_max: int) -> None:
    m_star = beta / lt1
    m_expected = min(math.floor(m_star) + 1, m_max)
    if m_expected < m_star:
        eta_expected = 0.99 * m_expected / beta
    else:
        eta_expected = 0.99 * 2 * m_expected / (beta + (m_expected - 1) * lt1)
    m, eta = eigenpro_step_and_batch(beta, lt1, m_max)
    assert m == m_expected
    assert eta == pytest.approx(eta_expected, rel=1e-14)


def test_step_for_a_fixed_batch_and_bad_arguments() -> None:
    m, eta = eigenpro_step_and_batch(1.0, 0.01, 10**6, batch_size=40)
    assert (m, eta) == (40, pytest.approx(0.99 * 40))
    m, eta = eigenpro_step_and_batch(1.0, 0.01, 10**6, batch_size=400)
    assert eta == pytest.approx(0.99 * 800 / (1 + 399 * 0.01))
    with pytest.raises(ValueError, match="beta must be positive"):
        eigenpro_step_and_batch(0.0, 0.1, 10)
    with pytest.raises(ValueError, match="top_eigenvalue must be finite"):
        eigenpro_step_and_batch(1.0, float("nan"), 10)
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        eigenpro_step_and_batch(1.0, 0.1, 0)


def test_max_batch_size_from_memory() -> None:
    n, d, ell, b = 5000, 10, 2, 4
    data = b * n * (d + 3 * ell)
    assert max_batch_size(data + 123 * b * n, n, d, ell, b) == 123
    assert max_batch_size(1e15, n, d, ell, b) == n
    with pytest.raises(ValueError, match="cannot hold the data"):
        max_batch_size(data, n, d, ell, b)


def test_auto_subsample_size() -> None:
    assert auto_subsample_size(10) == 10
    assert auto_subsample_size(99_999) == 2000
    assert auto_subsample_size(100_000) == 12000
    assert auto_subsample_size(10**6, memory_bytes=24 * 1000**2) == 1000


def test_setup_reports_values_consistent_with_the_rule() -> None:
    x, _ = _data(3000, 4)
    k = make_kernel("gaussian", 0.3)
    reserved = 8 * 2000**2 + 4 * 2000 * 161  # subsample Gram (float64) and eigenvectors
    memory = 4 * 3000 * (4 + 3 * 2) + reserved + 4 * 3000 * 250
    setup = _setup(k, x.float(), n_outputs=2, memory_bytes=memory, generator=_gen(),
                           subsample_size=2000)
    p = setup.parameters
    assert p.subsample_size == 2000 and setup.subsample_index.unique().numel() == 2000
    assert p.regime == "sgd" and p.max_batch_size == 250
    assert p.critical_batch_size == pytest.approx(p.beta / p.preconditioned_top_eigenvalue)
    assert (p.batch_size, p.step_size) == eigenpro_step_and_batch(
        p.beta, p.preconditioned_top_eigenvalue, p.max_batch_size
    )
    assert p.n_components == choose_n_components(
        nystrom_eigensystem(k, x.float()[setup.subsample_index], 161).eigenvalues,
        p.beta, p.max_batch_size,
    )


def test_setup_full_batch_regime_on_a_small_problem() -> None:
    """All points in the subsample and in one batch: q is still the SPEC's smallest q with
    m*(q) >= m_max = n (not the precision limit), with full-batch steps of 0.99 / lt1."""
    x, _ = _data(300, 2)
    setup = _setup(make_kernel("gaussian", 1.0), x, n_outputs=1, memory_bytes=1e9,
                   generator=_gen())
    p = setup.parameters
    eig = nystrom_eigensystem(make_kernel("gaussian", 1.0), x, 161)  # s = n: all points
    assert p.regime == "full-batch" and p.batch_size == 300
    q = p.n_components
    assert q == choose_n_components(eig.eigenvalues, 1.0, 300) < numerical_component_limit(
        eig.eigenvalues, torch.float64)
    assert 1.0 / preconditioned_top_eigenvalue(eig.eigenvalues, q) >= 300
    assert 1.0 / preconditioned_top_eigenvalue(eig.eigenvalues, q - 1) < 300
    assert p.step_size == pytest.approx(0.99 / p.preconditioned_top_eigenvalue)
    assert p.critical_batch_size >= 300
    assert setup.status is EigenProStatus.OK


def test_small_data_float32_and_float64_agree() -> None:
    """Issue 12: 200 noisy points, bandwidth 1, subsample = all points. q used to run to the
    precision limit (29 in float32, 100 in float64), so float64 jumped to the near-interpolant
    in one epoch (test accuracy 0.795 against 0.89); the rule now picks the same q in both."""
    from sklearn.datasets import make_moons

    xs, labels = make_moons(400, noise=0.3, random_state=0)
    onehot = np.eye(2)[labels]
    k = make_kernel("gaussian", 1.0)
    results = {}
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor(xs[:200], dtype=dtype)
        res = _solve(k, x, torch.tensor(onehot[:200], dtype=dtype), n_epochs=10,
                     memory_bytes=1e9, generator=_gen())
        pred = kernel_matmul(k, torch.tensor(xs[200:]), x.double(), res.weights.double())
        results[dtype] = (res, float((pred.argmax(1).numpy() == labels[200:]).mean()))
    (r32, acc32), (r64, acc64) = results[torch.float32], results[torch.float64]
    assert r32.parameters.n_components == r64.parameters.n_components
    assert r32.parameters.regime == r64.parameters.regime == "full-batch"
    assert acc32 == acc64 and acc64 > 0.85
    np.testing.assert_allclose(r32.weights.double().numpy(), r64.weights.numpy(),
                               rtol=0, atol=1e-3 * float(r64.weights.abs().max()))


def test_setup_rejects_too_many_components() -> None:
    x, _ = _data(50, 2)
    with pytest.raises(ValueError, match="n_components=60 needs a subsample of at least 61"):
        _setup(make_kernel("gaussian"), x, n_outputs=1, memory_bytes=1e9,
                       generator=_gen(), n_components=60)


# --------------------------------------------------------------------------- iteration


def test_full_batch_epoch_is_the_explicit_update() -> None:
    x, y = _data(80, 2)
    k = make_kernel("cauchy", 0.5)
    gram = k(x, x).numpy()
    eig = nystrom_eigensystem(k, x[:30], 6, method="eigh")  # subsample = first 30 rows
    pre = eigenpro_preconditioner(eig, 5, dtype=torch.float64)
    w0 = torch.tensor(np.random.default_rng(1).standard_normal((80, 2)))
    eta, ridge = 3.0, 0.1
    got, mse = eigenpro_epoch(k, x, y, w0, pre, batch_size=80, step_size=eta,
                              generator=_gen(), ridge=ridge, tile_elements=37)
    w = w0.numpy()
    g = gram @ w + ridge * w - y.numpy()
    expected = w - eta / 80 * g
    e, d = pre.eigenvectors.numpy(), pre.scale.numpy()
    expected[:30] += eta / 80 * (e @ np.diag(d) @ e.T @ gram[:30] @ g)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-11, atol=1e-11)
    assert mse == pytest.approx(np.mean((gram @ w - y.numpy()) ** 2), rel=1e-12)
    assert torch.equal(w0, torch.tensor(w))  # the input is not modified


def _krr_dual(x: torch.Tensor, y: torch.Tensor, gamma: float, alpha: float) -> np.ndarray:
    return KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma).fit(x.numpy(), y.numpy()).dual_coef_


def test_ridge_solution_converges_to_kernel_ridge() -> None:
    x, y = _data(250, 2, seed=5)
    sigma, ridge = 0.5, 0.05
    # q = 15 (the most 120 Nystrom points support): the convergence to the ridge solution is
    # under test here, not the rule's q (which flattens fewer directions: slower, same limit)
    res = _solve(make_kernel("gaussian", sigma), x, y, n_epochs=60, memory_bytes=1e9,
                 generator=_gen(), ridge=ridge, subsample_size=120, n_components=15)
    dual = _krr_dual(x, y, 1 / (2 * sigma**2), ridge)
    np.testing.assert_allclose(res.weights.numpy(), dual, rtol=0,
                               atol=1e-6 * np.abs(dual).max())


def test_interpolation_limit_approaches_the_exact_interpolant() -> None:
    x, y = _data(200, 2, seed=6)
    xt, _ = _data(100, 2, seed=7)
    k = make_kernel("laplacian", 1.0)  # condition number ~3e5
    gram = k(x, x).numpy()
    exact = k(xt, x).numpy() @ np.linalg.solve(gram, y.numpy())
    scale = np.abs(exact).max()

    def error(epochs: int, **options: int) -> float:
        res = _solve(k, x, y, n_epochs=epochs, memory_bytes=1e9, generator=_gen(),
                             **options)  # type: ignore[arg-type]
        return float(np.abs(kernel_matmul(k, xt, x, res.weights).numpy() - exact).max())

    # sampled batches (SGD regime): the error shrinks steadily as the epochs grow
    sgd = [error(e, subsample_size=100, batch_size=50) for e in (2, 10, 50, 250)]
    assert all(a > 2 * b for a, b in zip(sgd, sgd[1:], strict=False))
    assert sgd[-1] < 1e-3 * scale
    # all points in the subsample and one batch (full-batch regime), with as many components
    # as float64 resolves (160 asked, lowered to the precision limit): much faster
    full = [error(e, n_components=160) for e in (2, 10, 50)]
    assert full[0] > 10 * full[1] > 100 * full[2]
    assert full[-1] < 1e-5 * scale


def test_same_seed_same_result_and_different_seed_different_subsample() -> None:
    x, y = _data(400, 3)
    k = make_kernel("gaussian", 0.5)

    def run(seed: int) -> eigenpro.EigenProResult:
        return _solve(k, x.float(), y.float(), n_epochs=3, memory_bytes=2e6,
                              generator=_gen(seed), subsample_size=100)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.weights, b.weights)
    assert a.parameters.batch_size == b.parameters.batch_size < 400
    assert not torch.equal(a.weights, c.weights)


def test_divergence_is_caught_and_the_step_halved(monkeypatch: pytest.MonkeyPatch) -> None:
    def too_large(*args: object, **kwargs: object) -> tuple[int, float]:
        return 20, 100.0  # far beyond the stable step

    monkeypatch.setattr(setup, "eigenpro_step_and_batch", too_large)
    x, y = _data(200, 2)
    res = _solve(make_kernel("gaussian", 0.5), x, y, n_epochs=4, memory_bytes=1e5,
                 generator=_gen(), batch_size=20)
    assert res.status is EigenProStatus.STEP_HALVED
    assert "halved step size" in res.status.value or "half the step size" in res.status.value
    assert [r.epoch for r in res.history] == [1, 2, 3, 4]
    assert res.history[0].status is EigenProStatus.STEP_HALVED
    assert res.history[-1].step_size < 100.0
    assert bool(torch.isfinite(res.weights).all())
    assert res.history[-1].train_mse < float(y.square().mean())


def _poisoned_kernel(after_epoch: int) -> tuple[eigenpro.KernelFunction, object]:
    """A Gaussian kernel that returns NaN once ``after_epoch`` epochs have been recorded."""
    k = make_kernel("gaussian", 0.5)
    poisoned = [False]

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = k(a, b)
        return out * math.nan if poisoned[0] else out

    def callback(record: eigenpro.EpochRecord) -> None:
        if record.epoch == after_epoch:
            poisoned[0] = True

    return kernel, callback


def test_persistent_divergence_returns_the_last_good_iterate_with_a_status() -> None:
    """Issue 12: giving up is a status, not a RuntimeError, and the weights are the iterate
    before the divergence: exactly those of a clean run of that many epochs."""
    x, y = _data(150, 2)
    kernel, callback = _poisoned_kernel(after_epoch=3)
    res = _solve(kernel, x, y, n_epochs=8, memory_bytes=1e9, generator=_gen(),
                 subsample_size=50, batch_size=30, callback=callback)
    assert res.status is EigenProStatus.DIVERGED
    assert "after 10 step-size halvings" in res.status.value
    # epoch 4 diverges (NaN); the solver rolls back one epoch further (the running MSE shows
    # a bad step one epoch late) and keeps diverging: epochs 1-2 remain
    assert res.best_epoch == 2 and [r.epoch for r in res.history] == [1, 2]
    assert bool(torch.isfinite(res.weights).all())
    clean = _solve(make_kernel("gaussian", 0.5), x, y, n_epochs=2, memory_bytes=1e9,
                   generator=_gen(), subsample_size=50, batch_size=30)
    assert torch.equal(res.weights, clean.weights)


def test_early_stopping_returns_the_best_epoch() -> None:
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(size=(300, 2)))
    noisy = torch.sin(4 * x[:, :1]) + 0.5 * torch.tensor(rng.standard_normal((300, 1)))
    xv = torch.tensor(rng.uniform(size=(200, 2)))
    yv = torch.sin(4 * xv[:, :1])
    k = make_kernel("laplacian", 0.1)  # narrow kernel: overfits the noise as epochs grow
    res = _solve(k, x, noisy, n_epochs=40, memory_bytes=1e9, generator=_gen(),
                         x_val=xv, y_val=yv, early_stopping=True, n_iter_no_change=2,
                         subsample_size=100, batch_size=30)
    val = [r.val_mse for r in res.history]
    assert len(val) < 40
    assert res.best_epoch == 1 + int(np.argmin(val))
    got = float((kernel_matmul(k, xv, x, res.weights) - yv).square().mean())
    assert got == pytest.approx(min(val), rel=1e-10)


def test_solver_rejects_bad_arguments() -> None:
    x, y = _data(20, 2)
    k = make_kernel("gaussian")
    with pytest.raises(ValueError, match=r"same rows; got \(20, 2\) and \(19, 2\)"):
        _solve(k, x, y[:19], n_epochs=1, memory_bytes=1e8, generator=_gen())
    with pytest.raises(ValueError, match="early_stopping needs a validation set"):
        _solve(k, x, y, n_epochs=1, memory_bytes=1e8, generator=_gen(), early_stopping=True)
    with pytest.raises(ValueError, match="n_epochs must be >= 1, found 0"):
        EigenProConfig(n_epochs=0)
    with pytest.raises(TypeError, match="n_epochs must be an integer, found True"):
        EigenProConfig(n_epochs=True)
    with pytest.raises(ValueError, match="subsample_size must be an integer >= 1 or 'auto'"):
        EigenProConfig(subsample_size="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="softening must be <= 1.0, found 1.5"):
        EigenProConfig(softening=1.5)
    with pytest.raises(ValueError, match="memory_bytes must be > 0.0, found 0.0"):
        RuntimeOptions(memory_bytes=0.0)
    with pytest.raises(ValueError, match="eigensolver must be 'auto', 'eigh' or 'randomized'"):
        RuntimeOptions(memory_bytes=1.0, eigensolver="lobpcg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernel returned non-finite values"):
        _solve(lambda a, b: torch.full((a.shape[0], b.shape[0]), math.nan, dtype=a.dtype),
               x, y, n_epochs=1, memory_bytes=1e8, generator=_gen())
    with pytest.raises(ValueError, match="top_eigenvalue must be finite"):
        eigenpro_step_and_batch(1.0, -1.0, 5)
    with pytest.raises(ValueError, match="k must be between 1 and the matrix size 3"):
        top_eigenpairs(torch.eye(3), 4)
    with pytest.raises(ValueError, match="softening must be in"):
        eigenpro_preconditioner(NystromEigensystem(torch.ones(2), torch.eye(2)), 1,
                                softening=1.5)


def test_tiny_budget_and_subsample_give_clear_outcomes() -> None:
    """Issue 12: both used to fail with "k must be between 1 and the matrix size 1; got 2"."""
    x, y = _data(60, 2)
    k = make_kernel("gaussian", 0.5)
    with pytest.raises(ValueError, match="memory budget of .* GiB cannot hold the data .* "
                                         "raise memory_gb or use fewer points"):
        _solve(k, x, y, n_epochs=1, memory_bytes=1e-9 * 2**30, generator=_gen())
    # one subsample point: no direction to flatten, so q = 0 (plain SGD) and the fit runs
    res = _solve(k, x, y, n_epochs=3, memory_bytes=1e8, generator=_gen(), subsample_size=1)
    assert res.parameters.subsample_size == 1 and res.parameters.n_components == 0
    assert res.status is EigenProStatus.OK
    assert res.history[-1].train_mse < float(y.square().mean())


def test_huge_features_name_the_overflow() -> None:
    """Issue 12: features around 1e30 said only "the kernel returned non-finite values"."""
    x, y = _data(60, 2)
    with pytest.raises(ValueError, match=r"largest feature magnitude is 9.97e\+29, so squared "
                                         r"distances .* overflow torch.float32.* rescale the "
                                         r"features"):
        _solve(make_kernel("gaussian", 0.5), (x * 1e30).float(), y.float(), n_epochs=1,
               memory_bytes=1e8, generator=_gen())


def test_lowered_n_components_is_a_status() -> None:
    x, y = _data(200, 2)
    res = _solve(make_kernel("gaussian", 1.0), x.float(), y.float(), n_epochs=2,
                 memory_bytes=1e9, generator=_gen(), n_components=150)
    assert res.parameters.n_components < 150
    assert res.status is EigenProStatus.COMPONENTS_LOWERED
    assert "dtype='float64'" in res.status.value


@pytest.mark.parametrize(
    "module", [config, eigenpro, memory, nystrom, preconditioner, setup]
)
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted >= 2 and result.failed == 0


# --------------------------------------------------------------------------- input checks


def _counting_kernel() -> tuple[eigenpro.KernelFunction, list[int]]:
    calls: list[int] = []
    k = make_kernel("gaussian", 0.5)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return k(a, b)

    return kernel, calls


@pytest.mark.parametrize("name", ["x", "y", "x_val", "y_val"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_solver_rejects_non_finite_data_before_any_work(name: str, bad: float) -> None:
    """NaN/Inf used to run every epoch and end in a misleading 'diverged' RuntimeError."""
    x, y = _data(40, 2)
    xv, yv = _data(10, 2, seed=1)
    data = {"x": x, "y": y, "x_val": xv, "y_val": yv}
    data[name] = data[name].clone()
    data[name][3, 1] = bad
    kernel, calls = _counting_kernel()
    with pytest.raises(ValueError, match=rf"^{name} must be finite, found 1 NaN or Inf value"):
        _solve(kernel, data["x"], data["y"], n_epochs=50, memory_bytes=1e8,
                       generator=_gen(), x_val=data["x_val"], y_val=data["y_val"])
    assert calls == []  # raised at entry: no kernel evaluation, no epoch


def test_solver_rejects_mismatched_dtypes_devices_and_shapes() -> None:
    x, y = _data(40, 2)
    xv, yv = _data(10, 2, seed=1)
    k = make_kernel("gaussian")

    def solve(**kw: object) -> None:
        args: dict[str, object] = {"x": x, "y": y, "x_val": xv, "y_val": yv, **kw}
        _solve(k, args.pop("x"), args.pop("y"), n_epochs=1,  # type: ignore[arg-type]
                       memory_bytes=1e8, generator=_gen(), **args)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match=r"y has dtype torch.float32 but x has torch.float64"):
        solve(y=y.float())
    with pytest.raises(TypeError, match=r"x_val has dtype torch.float32 but x has torch.float64"):
        solve(x_val=xv.float())
    with pytest.raises(TypeError, match=r"y_val has dtype torch.float32 but x has torch.float64"):
        solve(y_val=yv.float())
    with pytest.raises(TypeError, match="y must have a floating-point dtype, found torch.int64"):
        solve(y=y.long())
    with pytest.raises(TypeError, match="x must be a torch.Tensor, found ndarray"):
        solve(x=x.numpy())
    with pytest.raises(TypeError, match="x_val must be a torch.Tensor, found list"):
        solve(x_val=xv.tolist())
    # the meta device stands in for a second device (no GPU needed)
    with pytest.raises(ValueError, match="y is on meta but x is on cpu"):
        solve(y=torch.empty_like(y, device="meta"))
    with pytest.raises(ValueError, match="y_val is on meta but x is on cpu"):
        solve(y_val=torch.empty_like(yv, device="meta"))
    with pytest.raises(ValueError, match=r"x_val must be \(n_val, 2\): 2 features like x; "
                                         r"found shape \(10, 3\)"):
        solve(x_val=torch.cat([xv, xv[:, :1]], dim=1))
    with pytest.raises(ValueError, match=r"y_val must be \(n_val, 2\): 2 output\(s\) like y; "
                                         r"found shape \(10,\)"):
        solve(y_val=yv[:, 0])
    with pytest.raises(ValueError, match="x_val has 10 rows but y_val has 9"):
        solve(y_val=yv[:9])
    with pytest.raises(ValueError, match="give both x_val and y_val, or neither"):
        solve(y_val=None)


def test_setup_rejects_bad_points() -> None:
    x, _ = _data(40, 2)
    k = make_kernel("gaussian")

    def setup(points: object) -> None:
        _setup(k, points, n_outputs=1, memory_bytes=1e8,  # type: ignore[arg-type]
                       generator=_gen())

    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="x must be finite, found 1 NaN or Inf value"):
        setup(bad)
    with pytest.raises(ValueError, match=r"x must be \(n_samples, n_features\), found shape "
                                         r"\(40,\)"):
        setup(x[:, 0])
    with pytest.raises(TypeError, match="x must have a floating-point dtype, found torch.int64"):
        setup(x.long())
    with pytest.raises(TypeError, match="x must be a torch.Tensor, found ndarray"):
        setup(x.numpy())


# --------------------------------------------------------------------------- properties


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 60),
    d=st.integers(2, 4),
    log_bandwidth=st.floats(-1.5, 1.5),
    name=st.sampled_from(["gaussian", "laplacian", "cauchy"]),
    seed=st.integers(0, 2**16),
)
def test_solver_property_finite_decreasing_and_dtype_independent_rule(
    n: int, d: int, log_bandwidth: float, name: str, seed: int
) -> None:
    """On any small problem with a positive definite kernel: finite weights, status OK, a
    training MSE below the zero predictor's, and the same q in float32 and float64 whenever
    float32 resolves it (the rule does not depend on the working precision), unless the
    critical batch size meets the target within rounding."""
    x, y = _data(n, d, seed=seed)
    k = make_kernel(name, 10.0**log_bandwidth)
    res = {}
    for dtype in (torch.float32, torch.float64):
        res[dtype] = _solve(k, x.to(dtype), y.to(dtype), n_epochs=3, memory_bytes=1e8,
                            generator=_gen(seed))
    r32, r64 = res[torch.float32], res[torch.float64]
    for r in (r32, r64):
        assert bool(torch.isfinite(r.weights).all())
        assert r.status is EigenProStatus.OK
        assert r.parameters.n_components < r.parameters.subsample_size
        assert r.history[-1].train_mse <= float(y.square().mean()) * (1 + 1e-6)
    eig = nystrom_eigensystem(k, x, min(n, 161))
    q32_limit = numerical_component_limit(eig.eigenvalues, torch.float32)
    q32, q64 = r32.parameters.n_components, r64.parameters.n_components
    if q64 < q32_limit and q32 != q64:
        # only where m*(q) lies on the target within rounding (beta = 1 for these kernels)
        critical = 1.0 / preconditioned_top_eigenvalue(eig.eigenvalues, min(q32, q64))
        assert abs(q32 - q64) == 1
        assert critical == pytest.approx(r64.parameters.max_batch_size, rel=1e-3)
