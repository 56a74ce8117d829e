"""CDR simulator against exact discrete solutions and conserved quantities; the data set, its
cache and its sanity figures."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from slimtrain.problems.cdr import (
    CDRConfig,
    _obs_step_weights,
    cdr_operator,
    default_cache_dir,
    make_cdr_dataset,
    mode_indices,
    rate_modes,
    sample_cdr_parameters,
    sensor_matrix,
    simulate_cdr,
    simulate_cdr_fields,
    source_term,
)

QUIET: dict[str, Any] = {"source_amplitude": 0.0, "velocity": (0.0, 0.0)}


def _grid(config: CDRConfig) -> tuple[np.ndarray, np.ndarray]:
    xc = config.cell_centers()
    x1, x2 = np.meshgrid(xc, xc)  # axis 0 along x2, axis 1 along x1
    return x1, x2


def _mass(fields: np.ndarray, config: CDRConfig) -> np.ndarray:
    return fields.sum(axis=(-2, -1)) / config.grid_size**2


# --------------------------------------------------------------------------------------------
# building blocks


def test_modes_count_order_and_values() -> None:
    modes = mode_indices(9)
    assert len(modes) == 55 == CDRConfig().n_params
    assert len(set(modes)) == 55 and all(a + b <= 9 and a >= 0 and b >= 0 for a, b in modes)
    assert modes[:6] == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    config = CDRConfig(grid_size=8)
    phi = rate_modes(config)
    x1, x2 = _grid(config)
    np.testing.assert_allclose(phi[:, 4], (np.cos(np.pi * x1) * np.cos(np.pi * x2)).ravel())
    np.testing.assert_allclose(phi[:, 0], 1.0)


def _reference_operator(n: int, D: float, v: tuple[float, float]) -> np.ndarray:
    """Dense finite-volume operator written cell by cell (independent of the vectorised one)."""
    h = 1.0 / n
    A = np.zeros((n * n, n * n))
    for j in range(n):
        for i in range(n):
            me = j * n + i
            for di, dj, vn in ((1, 0, v[0]), (-1, 0, -v[0]), (0, 1, v[1]), (0, -1, -v[1])):
                ii, jj = i + di, j + dj
                if not (0 <= ii < n and 0 <= jj < n):
                    continue  # boundary face: no flux
                nb = jj * n + ii
                # outward flux per unit area: -D (u_nb - u_me)/h^2 + (vn+ u_me + vn- u_nb)/h
                A[me, me] -= D / h**2 + max(vn, 0.0) / h
                A[me, nb] += D / h**2 - min(vn, 0.0) / h
    return A


@pytest.mark.parametrize("velocity", [(0.4, 0.2), (-0.3, 0.5), (0.0, 0.0)])
def test_operator_matches_cell_by_cell_reference(velocity: tuple[float, float]) -> None:
    config = CDRConfig(grid_size=5, diffusion=0.03, velocity=velocity)
    A = cdr_operator(config).toarray()
    np.testing.assert_allclose(A, _reference_operator(5, 0.03, velocity), rtol=1e-13, atol=1e-12)
    # conservation: every column sums to zero (diffusion and upwind convection, closed walls)
    np.testing.assert_allclose(A.sum(axis=0), 0.0, atol=1e-10)


def test_operator_without_convection_is_symmetric_with_zero_row_sums() -> None:
    A = cdr_operator(CDRConfig(velocity=(0.0, 0.0))).toarray()
    np.testing.assert_allclose(A, A.T, atol=0)
    np.testing.assert_allclose(A.sum(axis=1), 0.0, atol=1e-9)
    # interior diagonal: -4 D / h^2
    assert A[16 * 32 + 16, 16 * 32 + 16] == pytest.approx(-4 * 0.01 * 32**2)


def test_sensor_readout() -> None:
    config = CDRConfig()
    P = sensor_matrix(config)
    assert P.shape == (9, 1024)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    # default: the containing cell, half-open cells -> 0.25 = 8 h reads cell 8
    assert P[0, 8 * 32 + 8] == 1.0
    assert P[1, 8 * 32 + 16] == 1.0  # sensor 1 is (x1, x2) = (0.5, 0.25): x1 fastest
    assert P[8, 24 * 32 + 24] == 1.0
    Pb = sensor_matrix(CDRConfig(sensor_readout="bilinear"))
    for cell in (7 * 32 + 7, 7 * 32 + 8, 8 * 32 + 7, 8 * 32 + 8):
        assert Pb[0, cell] == pytest.approx(0.25)
    # bilinear is exact for a field linear in x1 and x2
    x1, x2 = _grid(CDRConfig(sensor_readout="bilinear"))
    field = (2 * x1 - 3 * x2 + 1).ravel()
    s = np.array([0.25, 0.5, 0.75])
    expected = (2 * s[None, :] - 3 * s[:, None] + 1).ravel()
    np.testing.assert_allclose(Pb @ field, expected, atol=1e-12)


def test_observation_time_weights() -> None:
    w = _obs_step_weights(CDRConfig())
    assert w.shape == (8, 51)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w @ (np.arange(51) * 0.02), np.arange(1, 9) / 8)  # t_m = m/8
    assert w[3, 25] == 1.0 and w[7, 50] == 1.0  # t = 0.5 and 1 fall on steps


# --------------------------------------------------------------------------------------------
# exact discrete solutions and conserved quantities


def test_constant_state_stays_constant_without_source_reaction_convection() -> None:
    config = CDRConfig(**QUIET)
    y = np.zeros((2, 55))
    fields = simulate_cdr_fields(y, config, initial_state=np.full((32, 32), 0.3))
    np.testing.assert_allclose(fields, 0.3, rtol=0, atol=1e-13)


def test_cosine_mode_decays_at_the_discrete_and_continuous_rate() -> None:
    """cos(a pi x1) cos(b pi x2) at the centres is an eigenvector of the Neumann FV Laplacian."""
    config = CDRConfig(**QUIET)
    a, b, D, h, dt = 2, 1, 0.01, 1 / 32, 0.02
    x1, x2 = _grid(config)
    u0 = np.cos(a * np.pi * x1) * np.cos(b * np.pi * x2)
    fields = simulate_cdr_fields(np.zeros((1, 55)), config, initial_state=u0)[0]
    mu = 4 / h**2 * (math.sin(a * math.pi * h / 2) ** 2 + math.sin(b * math.pi * h / 2) ** 2)
    g = 1.0 / (1.0 + dt * D * mu)  # implicit Euler amplification per step
    for m in range(8):
        s = (m + 1) * 50 / 8
        lo, theta = int(s), s - int(s)
        amp = (1 - theta) * g**lo + theta * g ** (lo + 1)
        np.testing.assert_allclose(fields[m], amp * u0, rtol=0, atol=1e-13)
        # and close to the continuous decay exp(-D pi^2 (a^2 + b^2) t)
        t = (m + 1) / 8
        assert amp == pytest.approx(math.exp(-D * math.pi**2 * (a * a + b * b) * t), rel=5e-3)


@pytest.mark.parametrize("velocity", [(0.0, 0.0), (0.4, 0.2)])
def test_mass_grows_by_the_source_integral(velocity: tuple[float, float]) -> None:
    config = CDRConfig(velocity=velocity)
    fields = simulate_cdr_fields(np.zeros((1, 55)), config)[0]
    per_time = source_term(config).sum() / 32**2  # discrete integral of f
    assert per_time == pytest.approx(5 * 2 * math.pi * 0.05**2, rel=1e-3)  # continuous integral
    np.testing.assert_allclose(_mass(fields, config), per_time * np.arange(1, 9) / 8, rtol=1e-12)


def test_convection_diffusion_conserve_mass() -> None:
    config = CDRConfig(source_amplitude=0.0, velocity=(0.7, -0.5), diffusion=0.005)
    x1, x2 = _grid(config)
    u0 = np.exp(-((x1 - 0.5) ** 2 + (x2 - 0.6) ** 2) / 0.02)
    fields = simulate_cdr_fields(np.zeros((1, 55)), config, initial_state=u0)[0]
    np.testing.assert_allclose(_mass(fields, config), _mass(u0, config), rtol=1e-12)
    assert fields.min() >= -1e-14  # upwind + implicit Euler: an M-matrix keeps u >= 0
    assert not np.allclose(fields[-1], u0, atol=1e-2)  # it did move


def test_uniform_logistic_reaction_follows_the_explicit_euler_map() -> None:
    config = CDRConfig(**QUIET)
    y = np.zeros((2, 55))
    y[0, 0], y[1, 0] = 2.5, -1.5  # constant rate k
    fields = simulate_cdr_fields(y, config, initial_state=np.full((32, 32), 0.2))
    w = _obs_step_weights(config)
    for row, k in enumerate((2.5, -1.5)):
        u = [0.2]
        for _ in range(50):
            u.append(u[-1] + 0.02 * k * u[-1] * (1 - u[-1]))
        expected = w @ np.array(u)
        np.testing.assert_allclose(fields[row, :, 5, 7], expected, rtol=1e-12)
        corner = np.broadcast_to(fields[row, :, :1, :1], (8, 32, 32))
        np.testing.assert_allclose(fields[row], corner, rtol=1e-12)  # stays uniform


def test_observations_are_the_sensor_readout_of_the_fields() -> None:
    config = CDRConfig()
    y = sample_cdr_parameters(3, seed=7)
    c = simulate_cdr(y, config)
    fields = simulate_cdr_fields(y, config)
    P = sensor_matrix(config)
    ref = np.einsum("sc,ntc->nts", P, fields.reshape(3, 8, -1)).reshape(3, 72)
    np.testing.assert_allclose(c, ref, rtol=1e-12, atol=1e-15)


def test_samples_are_independent_of_the_batch() -> None:
    y = sample_cdr_parameters(6, seed=1)
    together = simulate_cdr(y)
    alone = np.concatenate([simulate_cdr(y[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-15)


def test_parameter_distribution() -> None:
    y = sample_cdr_parameters(4000, seed=0)
    assert y.shape == (4000, 55)
    bounds = 1 / np.sqrt(np.arange(1, 56))
    bounds[0] *= 3
    assert np.all(np.abs(y) <= bounds)
    np.testing.assert_allclose(np.abs(y).max(axis=0) / bounds, 1.0, atol=5e-3)
    # a prefix does not depend on how many are drawn
    np.testing.assert_array_equal(sample_cdr_parameters(5, seed=0), y[:5])


# --------------------------------------------------------------------------------------------
# the data set and its cache


def test_dataset_splits_cache_and_sanity_figures(tmp_path: Path) -> None:
    data = make_cdr_dataset(cache_dir=tmp_path)
    assert not data.from_cache and data.cache_file is not None and data.cache_file.is_file()
    assert data.cache_file.parent == tmp_path and data.cache_file.suffix == ".npz"
    sizes = [len(d) for d in (data.train, data.val, data.test)]
    assert sizes == [400, 200, 200]
    x, c = data.train.tensors
    assert x.shape == (400, 55) and c.shape == (400, 72)
    assert x.dtype == torch.float32 and c.dtype == torch.float32
    assert np.isfinite(data.observations).all() and data.observations.min() >= 0.0
    expected_test = torch.from_numpy(data.observations[600:]).float()
    torch.testing.assert_close(data.test.tensors[1], expected_test)

    again = make_cdr_dataset(cache_dir=tmp_path)
    assert again.from_cache and again.cache_file == data.cache_file
    np.testing.assert_array_equal(again.parameters, data.parameters)
    np.testing.assert_array_equal(again.observations, data.observations)
    for a, b in zip((data.train, data.val, data.test), (again.train, again.val, again.test),
                    strict=True):
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    # the cache holds what a fresh simulation gives
    np.testing.assert_array_equal(simulate_cdr(data.parameters[:4]), data.observations[:4])

    # sanity figures (module docstring): affine least squares in y, and the constant mean
    y, obs = data.parameters, data.observations
    design = np.hstack([y, np.ones((800, 1))])
    coef, *_ = np.linalg.lstsq(design[:400], obs[:400], rcond=None)

    def rel(pred: np.ndarray, target: np.ndarray) -> float:
        err = np.linalg.norm(pred - target, axis=1) / np.linalg.norm(target, axis=1)
        return float(np.mean(err))

    linear = rel(design[400:600] @ coef, obs[400:600])
    constant = rel(np.broadcast_to(obs[:400].mean(axis=0), (200, 72)), obs[400:600])
    assert linear == pytest.approx(0.0865, abs=2e-3)
    assert constant == pytest.approx(0.370, abs=3e-3)


def test_cache_key_changes_with_every_setting(tmp_path: Path) -> None:
    base = make_cdr_dataset(n_samples=6, split=(4, 1, 1), cache_dir=tmp_path)
    names = {base.cache_file}
    for kwargs in (
        {"seed": 1},
        {"n_samples": 7, "split": (5, 1, 1)},
        {"config": CDRConfig(diffusion=0.02)},
        {"config": CDRConfig(sensor_readout="bilinear")},
        {"config": CDRConfig(n_steps=40)},
    ):
        kw: dict[str, Any] = {"n_samples": 6, "split": (4, 1, 1), **kwargs}
        d = make_cdr_dataset(cache_dir=tmp_path, **kw)
        assert not d.from_cache
        names.add(d.cache_file)
    assert len(names) == 6
    # a different split reuses the same simulation
    other = make_cdr_dataset(n_samples=6, split=(2, 2, 2), cache_dir=tmp_path)
    assert other.from_cache and other.cache_file == base.cache_file
    assert len(other.train) == 2


def test_default_cache_dir_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLIMTRAIN_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    d = make_cdr_dataset(n_samples=3, split=(1, 1, 1))
    assert d.cache_file is not None and d.cache_file.parent == tmp_path / "env"
    monkeypatch.delenv("SLIMTRAIN_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "slimtrain"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_is_regenerated(tmp_path: Path, caplog, damage: str) -> None:
    first = make_cdr_dataset(n_samples=4, split=(2, 1, 1), cache_dir=tmp_path)
    assert first.cache_file is not None
    raw = first.cache_file.read_bytes()
    first.cache_file.write_bytes(b"garbage" if damage == "garbage" else raw[: len(raw) // 2])
    with caplog.at_level(logging.WARNING, logger="slimtrain.problems.cdr"):
        second = make_cdr_dataset(n_samples=4, split=(2, 1, 1), cache_dir=tmp_path)
    assert not second.from_cache and "unreadable" in caplog.text
    np.testing.assert_array_equal(second.observations, first.observations)
    assert make_cdr_dataset(n_samples=4, split=(2, 1, 1), cache_dir=tmp_path).from_cache
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_file.name]  # no temp files left


def test_determinism_by_seed_without_cache(tmp_path: Path) -> None:
    a = make_cdr_dataset(n_samples=5, split=(3, 1, 1), seed=2, use_cache=False)
    b = make_cdr_dataset(n_samples=5, split=(3, 1, 1), seed=2, use_cache=False)
    c = make_cdr_dataset(n_samples=5, split=(3, 1, 1), seed=3, use_cache=False)
    assert a.cache_file is None and not a.from_cache
    np.testing.assert_array_equal(a.observations, b.observations)
    assert not np.array_equal(a.parameters, c.parameters)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"grid_size": 1}, ValueError),
        ({"grid_size": 2.5}, TypeError),
        ({"grid_size": True}, TypeError),
        ({"diffusion": -0.1}, ValueError),
        ({"diffusion": float("nan")}, ValueError),
        ({"velocity": (1.0,)}, ValueError),
        ({"velocity": (1.0, float("inf"))}, ValueError),
        ({"source_center": (0.3, 1.5)}, ValueError),
        ({"source_width": 0.0}, ValueError),
        ({"max_degree": -1}, ValueError),
        ({"constant_mode_scale": 0.0}, ValueError),
        ({"final_time": 0.0}, ValueError),
        ({"n_steps": 0}, ValueError),
        ({"sensors": ()}, ValueError),
        ({"sensors": (0.5, -0.1)}, ValueError),
        ({"n_obs_times": 0}, ValueError),
        ({"sensor_readout": "nearest"}, ValueError),
        ({"velocity": "ab"}, TypeError),
    ],
)
def test_bad_config(kwargs: dict, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        CDRConfig(**kwargs)


def test_bad_simulation_and_dataset_input() -> None:
    with pytest.raises(ValueError, match=r"\(n_samples, 55\)"):
        simulate_cdr(np.zeros((2, 54)))
    with pytest.raises(ValueError, match="finite"):
        simulate_cdr(np.full((1, 55), np.nan))
    with pytest.raises(TypeError):
        simulate_cdr([[0.0] * 55])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial_state"):
        simulate_cdr(np.zeros((1, 55)), initial_state=np.zeros((31, 31)))
    with pytest.raises(ValueError, match="sums to 790"):
        make_cdr_dataset(split=(400, 200, 190), use_cache=False)
    with pytest.raises(ValueError, match="three sizes"):
        make_cdr_dataset(split=(400, 400), use_cache=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="train split"):
        make_cdr_dataset(n_samples=2, split=(0, 1, 1), use_cache=False)
    with pytest.raises(TypeError, match="CDRConfig"):
        make_cdr_dataset(config={"grid_size": 8}, use_cache=False)  # type: ignore[arg-type]
