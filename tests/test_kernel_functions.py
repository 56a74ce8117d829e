"""Kernel functions and blockwise products against scikit-learn, SciPy and direct formulas."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from sklearn.metrics.pairwise import laplacian_kernel, rbf_kernel

from slimtrain.kernels import functions
from slimtrain.kernels.functions import (
    Kernel,
    cauchy,
    gaussian,
    kernel_diagonal,
    kernel_matmul,
    laplacian,
    make_kernel,
    squared_distances,
    tile_shape,
)

TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def _points(n: int, d: int, seed: int, scale: float = 3.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal((n, d))


def _reference(name: str, x: np.ndarray, z: np.ndarray, sigma: float) -> np.ndarray:
    dist = cdist(x, z)  # Euclidean, computed pairwise (no expansion)
    if name == "gaussian":
        return np.exp(-(dist**2) / (2 * sigma**2))
    if name == "laplacian":
        return np.exp(-dist / sigma)
    return 1.0 / (1.0 + dist**2 / sigma**2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["gaussian", "laplacian", "cauchy"])
def test_kernels_match_pairwise_formula(name: str, dtype: torch.dtype) -> None:
    x, z = _points(40, 5, 0), _points(30, 5, 1)
    sigma = 2.5
    got = functions.KERNELS[name](
        torch.tensor(x, dtype=dtype), torch.tensor(z, dtype=dtype), bandwidth=sigma
    )
    assert got.dtype == dtype and got.shape == (40, 30)
    np.testing.assert_allclose(got.double().numpy(), _reference(name, x, z, sigma),
                               rtol=0, atol=TOL[dtype])


def test_gaussian_matches_sklearn_rbf() -> None:
    x, z = _points(50, 7, 2), _points(20, 7, 3)
    sigma = 4.0
    got = gaussian(torch.tensor(x), torch.tensor(z), bandwidth=sigma).numpy()
    np.testing.assert_allclose(got, rbf_kernel(x, z, gamma=1 / (2 * sigma**2)), atol=1e-13)


def test_laplacian_uses_euclidean_not_l1_norm() -> None:
    x, z = _points(10, 4, 4), _points(10, 4, 5)
    ours = laplacian(torch.tensor(x), torch.tensor(z), bandwidth=2.0).numpy()
    sklearn_l1 = laplacian_kernel(x, z, gamma=0.5)
    np.testing.assert_allclose(ours, np.exp(-cdist(x, z) / 2.0), atol=1e-13)
    assert np.abs(ours - sklearn_l1).max() > 1e-2


def test_kernel_of_a_point_with_itself_is_one() -> None:
    x = torch.tensor(_points(25, 3, 6, scale=100.0))  # large norms: cancellation in the GEMM
    for name in ("gaussian", "laplacian", "cauchy"):
        diag = functions.KERNELS[name](x, x, bandwidth=1.0).diagonal()
        # The Laplacian's sqrt turns a cancellation error e into sqrt(e): allow 1e-5.
        np.testing.assert_allclose(diag.numpy(), 1.0, atol=1e-5 if name == "laplacian" else 1e-9)


def test_squared_distances_nonnegative_and_exact() -> None:
    x = torch.tensor(_points(30, 6, 7))
    d2 = squared_distances(x, x)
    assert bool((d2 >= 0).all())
    np.testing.assert_allclose(d2.numpy(), cdist(x.numpy(), x.numpy()) ** 2, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["gaussian", "laplacian", "cauchy"])
@pytest.mark.parametrize("tile", [1, 7, 300, 1 << 20])
def test_blockwise_product_matches_direct(name: str, dtype: torch.dtype, tile: int) -> None:
    x = torch.tensor(_points(37, 4, 8), dtype=dtype)
    z = torch.tensor(_points(53, 4, 9), dtype=dtype)
    w = torch.tensor(np.random.default_rng(10).standard_normal((53, 3)), dtype=dtype)
    k = make_kernel(name, 3.0)
    got = kernel_matmul(k, x, z, w, tile_elements=tile)
    direct = _reference(name, x.double().numpy(), z.double().numpy(), 3.0) @ w.double().numpy()
    np.testing.assert_allclose(got.double().numpy(), direct, rtol=0,
                               atol=50 * TOL[dtype] * np.abs(direct).max())


def test_blockwise_product_with_vector_weights() -> None:
    x = torch.tensor(_points(9, 2, 11))
    w = torch.tensor(np.arange(9.0))
    k = make_kernel("cauchy", 1.5)
    got = kernel_matmul(k, x, x, w, tile_elements=5)
    assert got.shape == (9,)
    np.testing.assert_allclose(got.numpy(), k(x, x).numpy() @ w.numpy(), atol=1e-12)


def test_blockwise_product_never_forms_more_than_a_tile() -> None:
    seen: list[int] = []

    def recording(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append(a.shape[0] * b.shape[0])
        return gaussian(a, b, bandwidth=1.0)

    x = torch.tensor(_points(600, 3, 12))
    w = torch.ones(600, 1, dtype=torch.float64)
    kernel_matmul(recording, x, x, w, tile_elements=4096)
    assert seen and max(seen) <= 4096
    assert sum(seen) == 600 * 600


@settings(max_examples=60, deadline=None)
@given(
    n_rows=st.integers(1, 5000),
    n_cols=st.integers(1, 300_000),
    tile=st.integers(1, 1 << 22),
)
def test_tile_shape_bounds_the_tile_and_ignores_the_row_count(
    n_rows: int, n_cols: int, tile: int
) -> None:
    rows, cols = tile_shape(n_rows, n_cols, tile)
    assert 1 <= rows <= n_rows and 1 <= cols <= n_cols
    assert rows * cols <= max(tile, cols)
    # the column split does not depend on how many rows share the call
    assert tile_shape(1, n_cols, tile)[1] == cols == tile_shape(n_rows + 17, n_cols, tile)[1]


def test_kernel_diagonal_of_callable_is_blockwise_diagonal() -> None:
    x = torch.tensor(_points(700, 3, 13))

    def scaled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (1.0 + (a * a).sum(1, keepdim=True)) * gaussian(a, b, bandwidth=2.0)

    expected = 1.0 + (x * x).sum(1)
    np.testing.assert_allclose(kernel_diagonal(make_kernel(scaled), x).numpy(),
                               expected.numpy(), rtol=1e-12)
    assert bool((kernel_diagonal(make_kernel("gaussian"), x) == 1).all())


def test_callable_kernel_may_return_numpy() -> None:
    k = make_kernel(lambda a, b: rbf_kernel(a.numpy(), b.numpy(), gamma=0.5))
    x = torch.tensor(_points(6, 2, 14))
    out = k(x, x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), gaussian(x, x, bandwidth=1.0).numpy(), atol=1e-13)
    assert isinstance(k, Kernel) and k.bandwidth is None and not k.unit_diagonal


@pytest.mark.parametrize(
    ("kernel", "bandwidth", "error", "match"),
    [
        ("polynomial", 1.0, ValueError, "unknown kernel 'polynomial'.*gaussian"),
        ("gaussian", 0.0, ValueError, "bandwidth must be > 0.0, found 0.0"),
        ("laplacian", -1.0, ValueError, "bandwidth must be > 0.0, found -1.0"),
        ("cauchy", float("nan"), ValueError, "bandwidth must be finite, found nan"),
        ("gaussian", float("inf"), ValueError, "bandwidth must be finite, found inf"),
        ("gaussian", "5", TypeError, "bandwidth must be a real number, found '5'"),
        (3, 1.0, TypeError, "kernel must be one of"),
    ],
)
def test_make_kernel_rejects_bad_input(
    kernel: object, bandwidth: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        make_kernel(kernel, bandwidth)  # type: ignore[arg-type]


def test_kernel_functions_reject_bad_blocks() -> None:
    a, b = torch.zeros(3, 2), torch.zeros(4, 3)
    with pytest.raises(ValueError, match="x has 2 features but z has 3"):
        gaussian(a, b)
    with pytest.raises(ValueError, match="must be 2-D"):
        cauchy(torch.zeros(3), torch.zeros(3))
    with pytest.raises(TypeError, match="must be torch tensors"):
        laplacian(np.zeros((2, 2)), a)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights has 5 rows but z has 3 points"):
        kernel_matmul(make_kernel("gaussian"), a, a[:3], torch.zeros(5, 1))
    bad = make_kernel(lambda x, z: torch.zeros(x.shape[0], 1))
    with pytest.raises(ValueError, match=r"returned shape \(3, 1\).*expected \(3, 3\)"):
        bad(a, a)


def test_doctests() -> None:
    result = doctest.testmod(functions)
    assert result.attempted > 5 and result.failed == 0
