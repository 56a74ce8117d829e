r"""Convection-diffusion-reaction (CDR) surrogate data: parameters ``y`` in R^55 -> sensor
readings ``c`` in R^72.

The equation
------------
On the unit square :math:`\Omega = (0, 1)^2`, for :math:`t \in (0, T]`,

.. math::

    u_t = \nabla \cdot (D \nabla u) - v \cdot \nabla u + f(x) + k(x; y)\, u (1 - u),
    \qquad u(x, 0) = 0,

with no flux through the boundary, :math:`(D \nabla u - v u) \cdot n = 0` on
:math:`\partial\Omega` (homogeneous Neumann for the diffusion, closed walls for the convection;
the domain is closed, so the only changes of the total mass :math:`\int_\Omega u` come from the
source and the reaction). The coefficients (defaults of :class:`CDRConfig`):

- diffusion :math:`D = 0.01`; constant velocity :math:`v = (0.4, 0.2)`;
- source :math:`f(x) = 5 \exp(-|x - (0.3, 0.3)|^2 / (2 \cdot 0.05^2))` (amplitude 5, width
  0.05 as the standard deviation of the bump);
- logistic reaction with the spatially varying rate
  :math:`k(x; y) = \sum_{j=1}^{55} y_j \phi_j(x)` over the 55 cosine modes
  :math:`\phi_j(x) = \cos(a \pi x_1) \cos(b \pi x_2)` with :math:`a, b \ge 0`, :math:`a + b \le 9`,
  ordered by total degree :math:`a + b` and, within a degree, by decreasing :math:`a`:
  :math:`\phi_1 = 1`, :math:`\phi_2 = \cos(\pi x_1)`, :math:`\phi_3 = \cos(\pi x_2)`,
  :math:`\phi_4 = \cos(2\pi x_1)`, ... (see :func:`mode_indices`);
- the parameters :math:`y_j = \xi_j / \sqrt{j}`, :math:`\xi_j \sim U[-1, 1]` independent, and
  the constant mode three times larger, :math:`y_1 = 3 \xi_1` (:func:`sample_cdr_parameters`).

Discretisation
--------------
Finite volumes on a uniform grid of 32 x 32 cells (width :math:`h = 1/32`); the unknowns are cell
averages at the centres :math:`((i + 1/2) h, (j + 1/2) h)`, flattened with ``x`` fastest
(index ``j * 32 + i``). Diffusion uses the two-point flux :math:`D (u_R - u_L) / h` across each
interior face; convection the first-order upwind flux :math:`v_n u_{\mathrm{upwind}}`; boundary
faces carry no flux. The resulting matrix :math:`A` (diffusion + convection) has zero column
sums, so it conserves mass exactly. Time stepping is IMEX Euler with :math:`T = 1` and 50 steps
(:math:`\Delta t = 0.02`): diffusion and convection implicit, source and reaction explicit,

.. math::

    (I - \Delta t A)\, u^{n+1} = u^n + \Delta t \,\bigl(f + k \odot u^n \odot (1 - u^n)\bigr).

:math:`I - \Delta t A` is the same for every sample and step: it is factorised once
(``scipy.sparse.linalg.splu``) and every step solves for all samples at once (a multi-column
right-hand side).

Observations
------------
:math:`u` at the 3 x 3 sensors :math:`\{0.25, 0.5, 0.75\}^2` at the 8 evenly spaced times
:math:`t_m = m T / 8`, :math:`m = 1, \dots, 8` -> 72 values.

- Sensors: a sensor reads the cell that contains it, cells taken half-open
  :math:`[i h, (i + 1) h)`. The sensors lie on cell faces (0.25 = 8 h), so sensor
  (0.25, 0.25) reads cell (8, 8), centred at (0.2656, 0.2656), half a cell downstream.
  ``CDRConfig(sensor_readout="bilinear")`` interpolates the four surrounding centres instead.
- Times: :math:`t_m / \Delta t = 6.25 m` falls between steps; the reading is the linear
  interpolation in time of the two neighbouring steps (exact at :math:`t = 0.5, 1`).
- Ordering: ``c[:, 9 * m + s]`` for time ``m = 0..7`` and sensor ``s = 3 * b + a`` at
  :math:`(x_1, x_2)` = ``(sensors[a], sensors[b])`` (:math:`x_1` fastest).

Data set
--------
:func:`make_cdr_dataset` draws 800 parameter vectors from ``numpy.random.default_rng(seed)``,
simulates them (about 2 s on one core) and splits them in order into 400 train / 200
validation / 200 test samples. The simulation is cached on disk (``np.savez``) under a key that
hashes every setting, so a second call only reads the file. Sanity figures on the default data
(seed 0), mean relative error :math:`\|\hat c - c\| / \|c\|` on the validation split: a
least-squares affine model in ``y`` fitted on the train split 8.7 %, the constant training mean
37.0 % (with bilinear sensors: 10.7 % and 46.2 %). The map is nonlinear but learnable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import TensorDataset

from slimtrain._validation import check_int, check_real

__all__ = [
    "CDRConfig",
    "CDRData",
    "cdr_operator",
    "default_cache_dir",
    "make_cdr_dataset",
    "mode_indices",
    "rate_modes",
    "sample_cdr_parameters",
    "sensor_matrix",
    "simulate_cdr",
    "simulate_cdr_fields",
    "source_term",
]

logger = logging.getLogger(__name__)

#: Bumped whenever the simulator's output for the same settings changes; part of the cache key.
CACHE_FORMAT_VERSION = 1


def _as_int(name: str, value: object, minimum: int) -> int:
    return check_int(name, value, minimum=minimum)


def _as_float(
    name: str, value: object, *, minimum: float | None = None, strict: bool = False
) -> float:
    return check_real(name, value, minimum=minimum, strict_minimum=strict)


def _as_float_tuple(
    name: str, value: object, length: int | None, lo: float | None = None, hi: float | None = None
) -> tuple[float, ...]:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of numbers, found {type(value).__name__}")
    items = tuple(_as_float(f"{name}[{i}]", v) for i, v in enumerate(value))
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, found {len(items)}: {items}")
    if not items:
        raise ValueError(f"{name} must not be empty")
    for i, v in enumerate(items):
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ValueError(f"{name}[{i}] must lie in [{lo}, {hi}], found {v}")
    return items


@dataclass(frozen=True)
class CDRConfig:
    """Every setting of the CDR simulator (validated; see the module docstring for the model).

    Parameters
    ----------
    grid_size : int
        Cells per direction (the grid is ``grid_size x grid_size``), at least 2.
    diffusion : float
        Diffusion coefficient ``D >= 0``.
    velocity : tuple of 2 floats
        Constant convection velocity ``v``.
    source_center : tuple of 2 floats
        Centre of the Gaussian source bump, in ``[0, 1]^2``.
    source_amplitude : float
        Peak value of the source (0 switches it off).
    source_width : float
        Standard deviation of the source bump, ``> 0``.
    max_degree : int
        Largest total degree ``a + b`` of the cosine modes of the rate; the number of
        parameters is ``(max_degree + 1) (max_degree + 2) / 2`` (55 for 9).
    constant_mode_scale : float
        Factor on the range of the constant mode's parameter ``y_1``, ``> 0``.
    final_time : float
        Final time ``T > 0``.
    n_steps : int
        Number of time steps, at least 1.
    sensors : tuple of floats
        Sensor coordinates per direction, in ``[0, 1]``; the sensors are their tensor grid.
    n_obs_times : int
        Number of evenly spaced observation times ``m T / n_obs_times``, ``m = 1..n_obs_times``.
    sensor_readout : {"cell", "bilinear"}
        How a sensor reads the grid: the value of the cell containing it (default, the
        prototype's choice) or bilinear interpolation of the surrounding cell centres.
    """

    grid_size: int = 32
    diffusion: float = 0.01
    velocity: tuple[float, float] = (0.4, 0.2)
    source_center: tuple[float, float] = (0.3, 0.3)
    source_amplitude: float = 5.0
    source_width: float = 0.05
    max_degree: int = 9
    constant_mode_scale: float = 3.0
    final_time: float = 1.0
    n_steps: int = 50
    sensors: tuple[float, ...] = (0.25, 0.5, 0.75)
    n_obs_times: int = 8
    sensor_readout: str = "cell"

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put("grid_size", _as_int("grid_size", self.grid_size, 2))
        put("diffusion", _as_float("diffusion", self.diffusion, minimum=0.0))
        put("velocity", _as_float_tuple("velocity", self.velocity, 2))
        put("source_center", _as_float_tuple("source_center", self.source_center, 2, 0.0, 1.0))
        put("source_amplitude", _as_float("source_amplitude", self.source_amplitude))
        put("source_width", _as_float("source_width", self.source_width, minimum=0.0, strict=True))
        put("max_degree", _as_int("max_degree", self.max_degree, 0))
        put(
            "constant_mode_scale",
            _as_float("constant_mode_scale", self.constant_mode_scale, minimum=0.0, strict=True),
        )
        put("final_time", _as_float("final_time", self.final_time, minimum=0.0, strict=True))
        put("n_steps", _as_int("n_steps", self.n_steps, 1))
        put("sensors", _as_float_tuple("sensors", self.sensors, None, 0.0, 1.0))
        put("n_obs_times", _as_int("n_obs_times", self.n_obs_times, 1))
        if self.sensor_readout not in ("cell", "bilinear"):
            raise ValueError(
                f"sensor_readout must be 'cell' or 'bilinear', found {self.sensor_readout!r}"
            )

    @property
    def n_params(self) -> int:
        """Number of parameters ``y`` (cosine modes of total degree ``<= max_degree``)."""
        return (self.max_degree + 1) * (self.max_degree + 2) // 2

    @property
    def n_sensors(self) -> int:
        """Number of sensors, ``len(sensors) ** 2``."""
        return len(self.sensors) ** 2

    @property
    def n_outputs(self) -> int:
        """Number of observations per sample, ``n_obs_times * n_sensors``."""
        return self.n_obs_times * self.n_sensors

    @property
    def dt(self) -> float:
        """Time step ``final_time / n_steps``."""
        return self.final_time / self.n_steps

    @property
    def obs_times(self) -> np.ndarray:
        """The observation times ``m T / n_obs_times``, shape ``(n_obs_times,)``."""
        return self.final_time * np.arange(1, self.n_obs_times + 1) / self.n_obs_times

    def cell_centers(self) -> np.ndarray:
        """Cell centres per direction, ``(i + 1/2) h``, shape ``(grid_size,)``."""
        return (np.arange(self.grid_size) + 0.5) / self.grid_size


def mode_indices(max_degree: int = 9) -> list[tuple[int, int]]:
    """The ``(a, b)`` of the cosine modes ``cos(a pi x1) cos(b pi x2)``, in parameter order.

    Ordered by total degree ``a + b`` and, within a degree, by decreasing ``a``.

    Examples
    --------
    >>> mode_indices(2)
    [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    """
    degree = _as_int("max_degree", max_degree, 0)
    return [(s - b, b) for s in range(degree + 1) for b in range(s + 1)]


def rate_modes(config: CDRConfig) -> np.ndarray:
    """The cosine modes at the cell centres, shape ``(grid_size**2, n_params)``.

    Row ``j * grid_size + i`` is the cell at ``(x_i, x_j)``; column ``m`` is mode ``m + 1``.
    """
    xc = config.cell_centers()
    x1 = np.tile(xc, config.grid_size)  # x fastest
    x2 = np.repeat(xc, config.grid_size)
    modes = mode_indices(config.max_degree)
    return np.stack([np.cos(a * np.pi * x1) * np.cos(b * np.pi * x2) for a, b in modes], axis=1)


def source_term(config: CDRConfig) -> np.ndarray:
    """The source ``f`` at the cell centres, shape ``(grid_size**2,)``."""
    xc = config.cell_centers()
    x1 = np.tile(xc, config.grid_size)
    x2 = np.repeat(xc, config.grid_size)
    c1, c2 = config.source_center
    r2 = (x1 - c1) ** 2 + (x2 - c2) ** 2
    return config.source_amplitude * np.exp(-r2 / (2.0 * config.source_width**2))


def cdr_operator(config: CDRConfig) -> sp.csc_matrix:
    """The finite-volume matrix ``A`` of diffusion plus upwind convection, ``du/dt = A u``.

    Shape ``(grid_size**2, grid_size**2)``. Boundary faces carry no flux, so every column sums
    to zero (mass is conserved) and, without convection, ``A`` is symmetric with zero row sums.
    """
    n = config.grid_size
    h = 1.0 / n
    diff = config.diffusion / h**2
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    idx = np.arange(n * n).reshape(n, n)  # idx[j, i], x index i fastest
    for vel, left, right in (
        (config.velocity[0], idx[:, :-1].ravel(), idx[:, 1:].ravel()),  # faces normal to x1
        (config.velocity[1], idx[:-1, :].ravel(), idx[1:, :].ravel()),  # faces normal to x2
    ):
        vp, vm = max(vel, 0.0) / h, min(vel, 0.0) / h
        ones = np.ones(left.size)
        # Flux from left to right per unit area: F = D (uL - uR)/h^2 + (vp uL + vm uR).
        # dL/dt -= F, dR/dt += F.
        for r, c, v in (
            (left, left, -(diff + vp)),
            (left, right, diff - vm),
            (right, left, diff + vp),
            (right, right, -(diff - vm)),
        ):
            rows.append(r)
            cols.append(c)
            vals.append(v * ones)
    A = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n * n, n * n)
    )
    return A.tocsc()


def sensor_matrix(config: CDRConfig) -> np.ndarray:
    """Read-out from the cell values to the sensors, shape ``(n_sensors, grid_size**2)``.

    Sensor ``s = a + len(sensors) * b`` sits at ``(sensors[a], sensors[b])``. With
    ``sensor_readout="cell"`` it reads the cell that contains it, cells taken half-open,
    ``[i h, (i + 1) h)`` (a sensor on a face reads the cell above / to the right of it; 1.0
    reads the last cell). With ``"bilinear"`` it interpolates the four surrounding cell centres
    (constant extrapolation within half a cell of the boundary).
    """
    n = config.grid_size

    def weights(s: float) -> np.ndarray:
        w = np.zeros(n)
        if config.sensor_readout == "cell":
            w[min(int(math.floor(s * n)), n - 1)] = 1.0
            return w
        q = min(max(s * n - 0.5, 0.0), n - 1.0)  # position in cell-centre index units
        i0 = min(int(math.floor(q)), n - 2)
        w[i0] = 1.0 - (q - i0)
        w[i0 + 1] = q - i0
        return w

    w1d = [weights(s) for s in config.sensors]
    return np.stack([np.outer(wb, wa).ravel() for wb in w1d for wa in w1d], axis=0)


def _obs_step_weights(config: CDRConfig) -> np.ndarray:
    """Weights ``(n_obs_times, n_steps + 1)`` reading time ``t_m`` from the steps around it."""
    weights = np.zeros((config.n_obs_times, config.n_steps + 1))
    for m in range(1, config.n_obs_times + 1):
        lo, rem = divmod(m * config.n_steps, config.n_obs_times)  # t_m / dt = lo + rem / n_obs
        theta = rem / config.n_obs_times
        weights[m - 1, lo] += 1.0 - theta
        if rem:
            weights[m - 1, lo + 1] += theta
    return weights


def sample_cdr_parameters(
    n_samples: int, seed: int | np.random.Generator = 0, config: CDRConfig | None = None
) -> np.ndarray:
    """Draw parameters ``y_j = xi_j / sqrt(j)``, ``xi_j ~ U[-1, 1]``, ``y_1`` scaled further.

    Parameters
    ----------
    n_samples : int
        Number of parameter vectors.
    seed : int or numpy.random.Generator
        Seed of ``numpy.random.default_rng`` (or a generator to draw from).
    config : CDRConfig, optional
        Gives ``n_params`` and ``constant_mode_scale`` (default settings if omitted).

    Returns
    -------
    numpy.ndarray
        Shape ``(n_samples, n_params)``, float64. Row ``i`` depends only on the seed and ``i``,
        not on ``n_samples``.
    """
    config = CDRConfig() if config is None else config
    n_samples = _as_int("n_samples", n_samples, 0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(np.arange(1, config.n_params + 1))
    scale[0] *= config.constant_mode_scale
    return rng.uniform(-1.0, 1.0, size=(n_samples, config.n_params)) * scale


def _check_parameters(y: object, config: CDRConfig) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if not isinstance(y, np.ndarray):
        raise TypeError(f"y must be a numpy array of shape (n, {config.n_params}), "
                        f"found {type(y).__name__}")
    if y.ndim != 2 or y.shape[1] != config.n_params:
        raise ValueError(
            f"y must have shape (n_samples, {config.n_params}) for max_degree="
            f"{config.max_degree}, found {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.floating) and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"y must hold real numbers, found dtype {y.dtype}")
    y = np.asarray(y, dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"y must be finite, found {int((~np.isfinite(y)).sum())} NaN/Inf values")
    return y


def _integrate(
    y: np.ndarray,
    config: CDRConfig,
    initial_state: np.ndarray | None,
    readout: np.ndarray | None,
) -> np.ndarray:
    """Run the IMEX scheme; return ``readout @ u`` (or ``u``) at the observation times.

    ``readout`` is ``(r, grid**2)`` (``None``: the identity, ``r = grid**2``); the result has
    shape ``(n_obs_times, r, n_samples)``.
    """
    n_cells = config.grid_size**2
    n_samples = y.shape[0]
    dt = config.dt
    # One sparse LU of the implicit operator, reused for every sample and step.
    lu = spla.splu(sp.identity(n_cells, format="csc") - dt * cdr_operator(config))
    # States are (cells, samples) in Fortran order: each sample's column is contiguous, which
    # is the layout SuperLU's multi-column solve works on (no copy per step).
    dt_rate = np.asfortranarray(dt * (rate_modes(config) @ y.T))  # (cells, samples)
    dt_source = (dt * source_term(config))[:, None]  # (cells, 1)
    obs_weights = _obs_step_weights(config)
    n_read = n_cells if readout is None else readout.shape[0]
    out = np.zeros((config.n_obs_times, n_read, n_samples))

    u = np.zeros((n_cells, n_samples), order="F")
    if initial_state is not None:
        u[:] = np.broadcast_to(initial_state.reshape(-1, n_cells), (n_samples, n_cells)).T

    def record(step: int, state: np.ndarray) -> None:
        w = obs_weights[:, step]
        if np.any(w):
            read = state if readout is None else readout @ state  # (r, samples)
            for m in np.flatnonzero(w):
                out[m] += w[m] * read

    record(0, u)
    rhs = np.empty_like(u)
    # SuperLU's solve calls BLAS on small supernodes: threads only add overhead, and spinning
    # OpenBLAS threads slowed the loop tenfold on a shared 2-core machine (2 s -> 30 s).
    with threadpool_limits(limits=1, user_api="blas"):
        for step in range(1, config.n_steps + 1):
            # rhs = u + dt f + dt k u (1 - u), in place (the step is memory bound).
            np.subtract(1.0, u, out=rhs)
            rhs *= u
            rhs *= dt_rate
            rhs += u
            rhs += dt_source
            u = lu.solve(rhs)
            record(step, u)
    if not np.isfinite(out).all():
        raise FloatingPointError(
            "the CDR simulation produced NaN/Inf: the explicit reaction is unstable for these "
            "parameters; reduce the parameter range or increase n_steps"
        )
    return out


def _check_initial_state(initial_state: object, config: CDRConfig, n: int) -> np.ndarray | None:
    if initial_state is None:
        return None
    u0 = np.asarray(initial_state, dtype=np.float64)
    g = config.grid_size
    if u0.shape not in ((g, g), (n, g, g)):
        raise ValueError(
            f"initial_state must have shape ({g}, {g}) or ({n}, {g}, {g}), found {u0.shape}"
        )
    if not np.isfinite(u0).all():
        raise ValueError("initial_state must be finite")
    return u0


def simulate_cdr(
    y: np.ndarray, config: CDRConfig | None = None, *, initial_state: np.ndarray | None = None
) -> np.ndarray:
    """Simulate the CDR equation for each parameter vector; return the sensor readings.

    Parameters
    ----------
    y : numpy.ndarray
        Parameters, shape ``(n_samples, n_params)`` (``n_params = 55`` by default).
    config : CDRConfig, optional
        Simulator settings (defaults if omitted).
    initial_state : numpy.ndarray, optional
        ``u(., 0)`` on the grid, shape ``(grid, grid)`` or ``(n_samples, grid, grid)`` with
        ``x2`` along axis 0; zero if omitted (the data set's setting).

    Returns
    -------
    numpy.ndarray
        Shape ``(n_samples, n_obs_times * n_sensors)`` (72 by default), float64, ordered
        ``c[:, n_sensors * m + s]`` (time ``m`` major, sensor ``s`` minor).

    Examples
    --------
    >>> c = simulate_cdr(sample_cdr_parameters(3, seed=0))
    >>> c.shape
    (3, 72)
    """
    config = CDRConfig() if config is None else config
    y = _check_parameters(y, config)
    u0 = _check_initial_state(initial_state, config, y.shape[0])
    obs = _integrate(y, config, u0, sensor_matrix(config))  # (times, sensors, samples)
    return np.ascontiguousarray(obs.transpose(2, 0, 1).reshape(y.shape[0], -1))


def simulate_cdr_fields(
    y: np.ndarray, config: CDRConfig | None = None, *, initial_state: np.ndarray | None = None
) -> np.ndarray:
    """Like :func:`simulate_cdr` but return the whole field at the observation times.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_samples, n_obs_times, grid, grid)``, float64, axis 2 along ``x2`` and axis 3
        along ``x1``.
    """
    config = CDRConfig() if config is None else config
    y = _check_parameters(y, config)
    u0 = _check_initial_state(initial_state, config, y.shape[0])
    g = config.grid_size
    obs = _integrate(y, config, u0, None)  # (times, cells, samples)
    return np.ascontiguousarray(obs.transpose(2, 0, 1).reshape(y.shape[0], -1, g, g))


def default_cache_dir() -> Path:
    """``$SLIMTRAIN_CACHE`` if set, else ``~/.cache/slimtrain``."""
    env = os.environ.get("SLIMTRAIN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slimtrain"


def _cache_key(config: CDRConfig, n_samples: int, seed: int) -> str:
    payload = {
        "problem": "cdr",
        "version": CACHE_FORMAT_VERSION,
        "config": asdict(config),
        "n_samples": n_samples,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class CDRData:
    """The CDR data set, split in order into train / validation / test.

    Attributes
    ----------
    train, val, test : torch.utils.data.TensorDataset
        Each yields ``(x, c)``: parameters ``x`` of shape ``(n_params,)`` and observations
        ``c`` of shape ``(n_outputs,)``, float32 (55 and 72 by default).
    parameters : numpy.ndarray
        All parameters, ``(n_samples, n_params)`` float64 (train rows first, then val, test).
    observations : numpy.ndarray
        All observations, ``(n_samples, n_outputs)`` float64.
    config : CDRConfig
        The simulator settings.
    seed : int
        Seed of the parameter draw.
    cache_file : pathlib.Path or None
        The cache file read or written (``None`` with ``use_cache=False``).
    from_cache : bool
        Whether the simulation was read from the cache.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    parameters: np.ndarray = field(repr=False)
    observations: np.ndarray = field(repr=False)
    config: CDRConfig
    seed: int
    cache_file: Path | None
    from_cache: bool


def _read_cache(path: Path, n_samples: int, config: CDRConfig) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        y, c = np.array(f["parameters"]), np.array(f["observations"])
    if y.shape != (n_samples, config.n_params) or c.shape != (n_samples, config.n_outputs):
        raise ValueError(f"cache file {path} holds shapes {y.shape}, {c.shape}")
    if not (np.isfinite(y).all() and np.isfinite(c).all()):
        raise ValueError(f"cache file {path} holds non-finite values")
    return y, c


def _write_cache(path: Path, y: np.ndarray, c: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, parameters=y, observations=c)
        os.replace(tmp, path)  # atomic: readers never see a half-written file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_cdr_dataset(
    n_samples: int = 800,
    split: tuple[int, int, int] = (400, 200, 200),
    seed: int = 0,
    config: CDRConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    use_cache: bool = True,
) -> CDRData:
    """Generate (or read from the cache) the CDR data set and split it.

    Parameters
    ----------
    n_samples : int
        Number of samples, default 800.
    split : tuple of 3 ints
        Sizes of the train, validation and test splits, taken in order; they must sum to
        ``n_samples`` and the train split must not be empty. Default ``(400, 200, 200)``.
    seed : int
        Seed of the parameter draw (:func:`sample_cdr_parameters`).
    config : CDRConfig, optional
        Simulator settings (defaults if omitted).
    cache_dir : path, optional
        Folder of the cache; default :func:`default_cache_dir` (``$SLIMTRAIN_CACHE`` or
        ``~/.cache/slimtrain``). The file is ``cdr-<sha256 of all settings>.npz``.
    use_cache : bool
        Read and write the cache (default). With ``False`` always simulate, write nothing.

    Returns
    -------
    CDRData
        ``.train``, ``.val``, ``.test`` TensorDatasets of float32 ``(x, c)`` pairs.

    Raises
    ------
    ValueError, TypeError
        For a bad size, split or seed. An unreadable or inconsistent cache file is logged and
        regenerated.
    """
    config = CDRConfig() if config is None else config
    if not isinstance(config, CDRConfig):
        raise TypeError(f"config must be a CDRConfig, found {type(config).__name__}")
    n_samples = _as_int("n_samples", n_samples, 1)
    seed = _as_int("seed", seed, 0)
    if isinstance(split, str | bytes) or not hasattr(split, "__len__") or len(split) != 3:
        raise ValueError(f"split must be three sizes (train, val, test), found {split!r}")
    sizes = tuple(_as_int(f"split[{i}]", s, 0) for i, s in enumerate(split))
    if sum(sizes) != n_samples:
        raise ValueError(f"split {sizes} sums to {sum(sizes)} but n_samples is {n_samples}")
    if sizes[0] < 1:
        raise ValueError(f"the train split must not be empty, found split {sizes}")

    cache_file: Path | None = None
    from_cache = False
    y = c = None
    if use_cache:
        root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        cache_file = root / f"cdr-{_cache_key(config, n_samples, seed)}.npz"
        if cache_file.is_file():
            try:
                y, c = _read_cache(cache_file, n_samples, config)
                from_cache = True
                logger.info("CDR data read from cache %s", cache_file)
            except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:
                logger.warning("ignoring unreadable CDR cache %s (%s); regenerating", cache_file,
                               err)
    if y is None or c is None:
        start = time.perf_counter()
        y = sample_cdr_parameters(n_samples, seed, config)
        c = simulate_cdr(y, config)
        logger.info("simulated %d CDR samples in %.2f s", n_samples, time.perf_counter() - start)
        if cache_file is not None:
            _write_cache(cache_file, y, c)

    x_t = torch.from_numpy(y.astype(np.float32))
    c_t = torch.from_numpy(c.astype(np.float32))
    bounds = np.cumsum((0, *sizes))
    parts = [
        TensorDataset(x_t[a:b], c_t[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return CDRData(
        train=parts[0],
        val=parts[1],
        test=parts[2],
        parameters=y,
        observations=c,
        config=config,
        seed=seed,
        cache_file=cache_file,
        from_cache=from_cache,
    )
