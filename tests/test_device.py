"""The solver, the trainer and the kernel estimator on each device, against references.

Every case runs on the CPU here and on CUDA where torch sees a GPU (``benchmarks/gpu_check.sh``
runs them with ``-k cuda``); without one the CUDA cases are skipped, nothing else is. The
references are computed on the CPU by other code: whole-data Tikhonov solves of the explicit
rows (``torch.linalg.solve``), scikit-learn's ``KernelRidge``, and for the trainer the same
float64 run on the CPU.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge
from torch import Tensor, nn

from slimtrain import SeparableModel, SlimTik, SlimTrain
from slimtrain.heads import head_adapter
from slimtrain.kernels import EigenProRegressor
from slimtrain.problems.networks import autoencoder_network, cdr_network

f64 = torch.float64
_NO_CUDA = not torch.cuda.is_available()
_CUDA = pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA device")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=_CUDA)]
#: (device, ``cpu_eigh_max_size``): on CUDA, 0 decomposes on the device and 64 sends every
#: block (and dense matrices of p <= 64) through the CPU; on the CPU there is one path.
EIGH_ROUTES = [
    pytest.param("cpu", 0, id="cpu"),
    pytest.param("cuda", 0, id="cuda-eigh-on-device", marks=_CUDA),
    pytest.param("cuda", 64, id="cuda-eigh-on-cpu", marks=_CUDA),
]


def _spy_eigh(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Record the device type of every ``torch.linalg.eigh`` input from now on."""
    seen: set[str] = set()
    eigh = torch.linalg.eigh

    def spy(A: Tensor, *args: object, **kwargs: object) -> object:
        seen.add(A.device.type)
        return eigh(A, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", spy)
    return seen


def _tikhonov(rows: list[tuple[Tensor, Tensor, int]], lambda0: float, lambda_k: float,
              W0: Tensor) -> Tensor:
    """``argmin sum_i 1/2 ||Zs_i W^T - Cs_i||^2 + L0/2 ||W - W0||^2 + (Lk - L0)/2 ||W||^2``
    (``reduction="mean"``: each batch scaled by ``1/sqrt(N)``), solved on the CPU from the
    normal equations ``(A^T A + Lk I) W^T = A^T B + L0 W0^T``."""
    A = torch.cat([z / math.sqrt(n) for z, _, n in rows])
    B = torch.cat([c / math.sqrt(n) for _, c, n in rows])
    lhs = A.T @ A + lambda_k * torch.eye(A.shape[1], dtype=f64)
    return torch.linalg.solve(lhs, A.T @ B + lambda0 * W0.T).T


@pytest.mark.parametrize(("device", "cpu_eigh"), EIGH_ROUTES)
def test_dense_solver_on_device_equals_whole_data_tikhonov(
    device: str, cpu_eigh: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    eigh_devices = _spy_eigh(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    p, t, sizes = 12, 3, [20, 30, 25, 15]
    W_true = torch.randn(t, p, generator=gen, dtype=f64)
    solver = SlimTik(memory_depth=len(sizes), initial_lambda=0.3, lower=1e-6,
                     lambda_units="absolute", cpu_eigh_max_size=cpu_eigh)
    W0 = torch.randn(t, p, generator=gen, dtype=f64)
    W, rows = W0.to(device), []
    for n in sizes:
        Z = torch.randn(n, p, generator=gen, dtype=f64) * torch.linspace(0.2, 3.0, p, dtype=f64)
        C = Z @ W_true.T + 0.1 * torch.randn(n, t, generator=gen, dtype=f64)
        W, info = solver.step(W, Z.to(device), C.to(device))  # sGCV chooses every increment
        assert W.device.type == device and W.dtype == f64 and info.status.is_ok
        rows.append((Z, C, n))
        torch.testing.assert_close(W.cpu(), _tikhonov(rows, 0.3, info.sum_lambda, W0),
                                   rtol=1e-8, atol=1e-9)
    assert eigh_devices == {"cpu" if cpu_eigh else device}  # the route asked for was taken


@pytest.mark.parametrize(("device", "cpu_eigh"), EIGH_ROUTES)
def test_block_arrow_head_on_device_equals_tikhonov_of_the_explicit_rows(
    device: str, cpu_eigh: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A strided ConvTranspose2d head with a bias: statistics by shift correlations and the
    block-arrow solve (four 16 x 16 phase blocks and the bias column) on the device."""
    torch.manual_seed(0)
    head = nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1).double()  # stays on the CPU
    adapter = head_adapter(head)
    solver = SlimTik(memory_depth=3, initial_lambda=0.3, lambda_units="absolute",
                     cpu_eigh_max_size=cpu_eigh)
    head_dev = copy.deepcopy(head).to(device)
    W0 = adapter.get_weight(head)
    eigh_devices = _spy_eigh(monkeypatch)
    rows = []
    for _ in range(3):
        x = torch.randn(6, 4, 5, 5, dtype=f64)
        y = torch.randn(6, 1, 10, 10, dtype=f64)
        stats = adapter.statistics(head_dev, x.to(device), y.to(device))
        assert stats.structure is not None  # the block path
        W, info = solver.step_statistics(adapter.get_weight(head_dev), stats)
        assert W.device.type == device
        adapter.set_weight(head_dev, W)
        Z, C = adapter.design(head, x, y)  # the rows do not depend on the weights
        rows.append((Z, C, x.shape[0]))
        torch.testing.assert_close(W.cpu(), _tikhonov(rows, 0.3, info.sum_lambda, W0),
                                   rtol=1e-8, atol=1e-9)
    assert eigh_devices == {"cpu" if cpu_eigh else device}  # the route asked for was taken


def _train(device: str, network: str, steps: int = 3) -> tuple[Tensor, list[float]]:
    """``steps`` slimTrain + Adam steps of a float64 network on ``device``: the head weights
    and the losses. A constant increment of Lambda: sGCV on the device is checked above
    against references, and a nearly flat sGCV curve could let rounding move its choice."""
    torch.manual_seed(0)
    features: nn.Module
    head: nn.Module
    if network == "cdr":
        features, head = cdr_network()
        x, y = torch.rand(32, 55, dtype=f64) * 2 - 1, torch.randn(32, 72, dtype=f64)
    else:
        features, head = autoencoder_network(width=4, image_size=16)
        x = torch.randn(8, 1, 16, 16, dtype=f64)
        y = x
    model = SeparableModel(features, head).double().to(device)
    trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-3),
                        memory_depth=2, lambda_rule="constant", initial_lambda=1e-3)
    losses = [trainer.step(x, y)["loss"] for _ in range(steps)]
    return trainer.adapter.get_weight(model.head).cpu(), losses


@pytest.mark.parametrize("network", ["cdr", "autoencoder"])
@_CUDA
def test_slimtrain_steps_on_cuda_match_the_cpu(network: str) -> None:
    W_cpu, losses_cpu = _train("cpu", network)
    W_gpu, losses_gpu = _train("cuda", network)
    np.testing.assert_allclose(losses_gpu, losses_cpu, rtol=1e-7)
    torch.testing.assert_close(W_gpu, W_cpu, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_eigenpro_on_device_matches_kernel_ridge(device: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(200, 3))
    y = np.sin(2 * x[:, 0]) * x[:, 1] + np.cos(x.sum(1))
    xt = rng.uniform(-1, 1, size=(50, 3))
    sigma, ridge = 0.7, 0.1
    model = EigenProRegressor(kernel="gaussian", bandwidth=sigma, ridge=ridge, n_epochs=200,
                              dtype="float64", device=device, random_state=0).fit(x, y)
    reference = KernelRidge(alpha=ridge, kernel="rbf", gamma=1 / (2 * sigma**2)).fit(x, y)
    np.testing.assert_allclose(model.weights_, reference.dual_coef_, rtol=0,
                               atol=1e-6 * np.abs(reference.dual_coef_).max())
    np.testing.assert_allclose(model.predict(xt), reference.predict(xt), atol=1e-7)
