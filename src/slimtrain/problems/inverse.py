r"""A streaming linear inverse problem for slimTik: 1-D Gaussian deblurring.

Unknown: a signal :math:`x` on :math:`[0, 1]` sampled at the ``n`` cell centres
:math:`t_i = (i + 1/2) / n`. Data: the blurred signal at the same points plus noise,

.. math::

    b = A x_{\mathrm{true}} + e, \qquad
    A_{ij} = \frac{h}{\sqrt{2 \pi}\, \sigma} \exp\!\left(-\frac{(t_i - t_j)^2}{2 \sigma^2}\right),
    \quad h = 1/n,

the midpoint rule for the convolution with a Gaussian of standard deviation :math:`\sigma`
(default 0.02) and zero signal outside :math:`[0, 1]`. :math:`A` is symmetric Toeplitz; its rows
sum to 1 (up to quadrature error) away from the ends and to about 1/2 at the ends. The noise is
white Gaussian scaled to the relative level ``noise``:
:math:`\|e\| = \text{noise} \cdot \|A x_{\mathrm{true}}\|` exactly.

The true signal is piecewise smooth: a box, a linear ramp with a jump, and a smooth bump
(:func:`true_signal`).

Streaming form for slimTik: the unknown is a linear layer with weight ``W`` of shape ``(1, n)``
and no bias; a minibatch is a set of rows of the system, features ``Z = A[rows]`` of shape
``(m, n)`` and targets ``C = b[rows, None]`` of shape ``(m, 1)``, so ``Z @ W.T`` predicts ``C``
(:meth:`DeblurProblem.minibatches`). With ``reduction="sum"``, ``W_0 = 0`` and memory covering
all batches, slimTik's iterate is the Tikhonov solution of the rows seen so far with
``lam = Lambda_k``, its cumulative regularisation (:meth:`DeblurProblem.tikhonov_solution`;
the tests check this).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from slimtrain._validation import check_int, check_real

__all__ = ["DeblurProblem", "blur_matrix", "make_deblur_problem", "true_signal"]

logger = logging.getLogger(__name__)


def _grid(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


def blur_matrix(n: int, sigma: float = 0.02) -> np.ndarray:
    """The Gaussian blur matrix ``A`` (see the module docstring), shape ``(n, n)``, float64."""
    t = _grid(n)
    d = t[:, None] - t[None, :]
    return np.exp(-(d**2) / (2.0 * sigma**2)) / (math.sqrt(2.0 * math.pi) * sigma * n)


def true_signal(t: np.ndarray) -> np.ndarray:
    """The piecewise-smooth test signal on ``[0, 1]``.

    - ``0.8`` on ``[0.10, 0.25)`` (a box);
    - ``(t - 0.3) / 0.2`` on ``[0.30, 0.50)`` (a ramp from 0 to 1 that then drops to 0);
    - ``sin(pi (t - 0.55) / 0.3)^2`` on ``[0.55, 0.85)`` (a smooth bump of height 1);
    - 0 elsewhere.
    """
    t = np.asarray(t, dtype=np.float64)
    x = np.zeros_like(t)
    x = np.where((t >= 0.10) & (t < 0.25), 0.8, x)
    x = np.where((t >= 0.30) & (t < 0.50), (t - 0.30) / 0.20, x)
    return np.where((t >= 0.55) & (t < 0.85), np.sin(np.pi * (t - 0.55) / 0.30) ** 2, x)


@dataclass(frozen=True, eq=False)
class DeblurProblem:
    """A 1-D deblurring problem ``b = A x_true + e`` (float64 tensors).

    Attributes
    ----------
    A : torch.Tensor
        Blur matrix, ``(n, n)``.
    x_true : torch.Tensor
        True signal, ``(n,)``.
    b : torch.Tensor
        Noisy data, ``(n,)``.
    b_clean : torch.Tensor
        ``A @ x_true``, ``(n,)``.
    t : torch.Tensor
        Grid points, ``(n,)``.
    sigma : float
        Standard deviation of the blur kernel.
    noise : float
        Relative noise level ``||b - b_clean|| / ||b_clean||``.
    """

    A: Tensor
    x_true: Tensor
    b: Tensor
    b_clean: Tensor
    t: Tensor
    sigma: float
    noise: float

    @property
    def n(self) -> int:
        """Number of unknowns (= number of rows)."""
        return int(self.A.shape[1])

    def minibatches(
        self, batch_size: int, *, shuffle: bool = True, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the rows of the system in minibatches.

        Parameters
        ----------
        batch_size : int
            Rows per batch (the last batch may be shorter).
        shuffle : bool
            Visit the rows in a random order drawn from ``generator`` (default), else in order.
        generator : torch.Generator, optional
            Source of the order; a generator seeded with 0 if omitted (deterministic).

        Yields
        ------
        Z : torch.Tensor
            ``A[rows]``, shape ``(m, n)``.
        C : torch.Tensor
            ``b[rows, None]``, shape ``(m, 1)``.
        """
        check_int("batch_size", batch_size, minimum=1)
        if shuffle:
            gen = torch.Generator().manual_seed(0) if generator is None else generator
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        for start in range(0, self.n, batch_size):
            rows = order[start : start + batch_size]
            yield self.A[rows], self.b[rows, None]

    def tikhonov_solution(self, lam: float, rows: Tensor | None = None) -> Tensor:
        """``argmin_x ||A[rows] x - b[rows]||^2 + lam ||x||^2`` (all rows by default).

        Solved by least squares on the stacked system ``[A; sqrt(lam) I] x = [b; 0]``.
        """
        if not (isinstance(lam, int | float) and math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a finite number >= 0, found {lam!r}")
        A = self.A if rows is None else self.A[rows]
        b = self.b if rows is None else self.b[rows]
        eye = math.sqrt(lam) * torch.eye(self.n, dtype=A.dtype)
        stacked = torch.cat([A, eye], dim=0)
        rhs = torch.cat([b, torch.zeros(self.n, dtype=b.dtype)])[:, None]
        return torch.linalg.lstsq(stacked, rhs).solution[:, 0]

    def relative_error(self, x: Tensor) -> float:
        """``||x - x_true|| / ||x_true||`` (``x`` of shape ``(n,)`` or ``(1, n)``)."""
        x = x.reshape(-1).to(self.x_true.dtype)
        err = torch.linalg.vector_norm(x - self.x_true)
        return float(err / torch.linalg.vector_norm(self.x_true))


def make_deblur_problem(
    n: int = 256, noise: float = 0.01, sigma: float = 0.02, seed: int = 0
) -> DeblurProblem:
    """Build the 1-D deblurring problem.

    Parameters
    ----------
    n : int
        Number of unknowns and of measurements (at least 2), default 256.
    noise : float
        Relative noise level ``||e|| / ||A x_true||`` (``>= 0``), default 1 %.
    sigma : float
        Standard deviation of the Gaussian blur (``> 0``), default 0.02 (about 5 cells at
        ``n = 256``).
    seed : int
        Seed of ``numpy.random.default_rng`` for the noise.

    Returns
    -------
    DeblurProblem

    Examples
    --------
    >>> prob = make_deblur_problem(n=64, noise=0.05)
    >>> Z, C = next(prob.minibatches(16))
    >>> tuple(Z.shape), tuple(C.shape)
    ((16, 64), (16, 1))
    """
    check_int("n", n, minimum=2)
    check_real("noise", noise, minimum=0.0)
    check_real("sigma", sigma, minimum=0.0, strict_minimum=True)
    check_int("seed", seed, minimum=0)
    t = _grid(n)
    A = blur_matrix(n, sigma)
    x_true = true_signal(t)
    b_clean = A @ x_true
    eps = np.random.default_rng(seed).standard_normal(n)
    e = noise * np.linalg.norm(b_clean) / np.linalg.norm(eps) * eps
    return DeblurProblem(
        A=torch.from_numpy(A),
        x_true=torch.from_numpy(x_true),
        b=torch.from_numpy(b_clean + e),
        b_clean=torch.from_numpy(b_clean),
        t=torch.from_numpy(t),
        sigma=float(sigma),
        noise=float(noise),
    )
