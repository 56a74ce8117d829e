r"""Block-arrow Grams: the slimTik step when ``Z^T Z`` is block diagonal plus a bias column.

The rows of a strided transposed convolution split by output phase, and a phase's rows touch
only that phase's taps (:class:`~slimtrain.heads.ConvTranspose2dAdapter`). So the Gram of
every batch, and the memory Gram ``M``, are block diagonal over the column groups of the
phases, apart from the last row and column when the head has a bias (the ones column touches
every row). For ``ConvTranspose2d(16, 1, 4, stride=2)`` that is four blocks of 64 and one bias
column: in place of one ``eigh`` of the ``257 x 257`` matrix (and two ``O(p^3)`` changes of
basis), one batched ``eigh`` of four ``64 x 64`` blocks, 16 times fewer flops.

With the columns permuted so that the groups are contiguous and the bias is last,
``M = [[A, b], [b^T, c]]`` with ``A = blockdiag(A_g)``. Each block is eigendecomposed,
:math:`A_g = Q_g \operatorname{diag}(a_g) Q_g^\top`, and everything is rotated by
:math:`Q = \operatorname{blockdiag}(Q_g) \oplus 1`. Then
:math:`Q^\top (M + \mu I) Q = \begin{bmatrix} \operatorname{diag}(a + \mu) & \hat b \\
\hat b^\top & c + \mu \end{bmatrix}` is an arrowhead matrix whose inverse is diagonal plus
rank one,

.. math::

    (Q^\top B(\mu) Q)^{-1} = \begin{bmatrix} D & 0 \\ 0 & 0 \end{bmatrix}
        + \frac{1}{\sigma} u u^\top, \qquad
    D = \operatorname{diag}\Bigl(\frac{1}{a + \mu}\Bigr), \quad
    u = \begin{bmatrix} -D \hat b \\ 1 \end{bmatrix}, \quad
    \sigma = c + \mu - \hat b^\top D \hat b \;\ge\; \mu ,

(``sigma`` is the Schur complement of the bias entry of ``B(mu) >= mu I``, hence at least
``mu``; it is clipped there against rounding). For a candidate ``lam`` (``mu = Lambda + lam``)
the increment ``U = (Q^T B Q)^{-1} (H^ + lam W^)`` costs ``O(p t)`` and the sGCV residual
``tr(U^T G^ U) - 2 tr(U^T H^) + ||R||^2`` and trace ``tr(G^ (Q^T B Q)^{-1})`` cost
``O(p^2 t)``, all candidates in one batched expression. Without a bias the rotated memory Gram
is diagonal and the dense eigenbasis formulas of :mod:`slimtrain.linalg.sgcv` apply unchanged.

References
----------
.. [1] E. Newman, J. Chung, M. Chung, L. Ruthotto, "slimTrain -- A Stochastic Approximation
   Method for Training Separable Deep Neural Networks", SIAM J. Sci. Comput. 44(4), 2022.
.. [2] G. H. Golub, C. F. Van Loan, *Matrix Computations*, 4th ed., section 8.4 (arrowhead and
   diagonal-plus-rank-one systems).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from slimtrain.linalg.eigh import CPU_EIGH_MAX_SIZE, symmetric_eigh

__all__ = [
    "GramStructure",
    "ArrowTerms",
    "BlockBasis",
    "arrow_values",
    "block_basis",
    "fits_structure",
    "structure_zeros",
]


class GramStructure(NamedTuple):
    """Which entries of a ``(p, p)`` Gram can be non-zero.

    Attributes
    ----------
    groups : tuple of tuple of int
        Disjoint column groups covering every column except the bias; entries between two
        groups are zero.
    bias : bool
        The last column is a bias column, coupled to every group.
    """

    groups: tuple[tuple[int, ...], ...]
    bias: bool

    @property
    def p(self) -> int:
        """Number of columns."""
        return sum(len(g) for g in self.groups) + int(self.bias)


class _Layout(NamedTuple):
    perm: Tensor  # (p,) permuted column order: groups by size class, then the bias
    classes: tuple[tuple[int, int, int], ...]  # (offset, n_groups, size) per size class
    off_pattern: Tensor  # (p, p) bool: True where the structure says zero (original order)


@functools.lru_cache(maxsize=64)
def _layout(structure: GramStructure, device: str) -> _Layout:
    p = structure.p
    by_size: dict[int, list[tuple[int, ...]]] = {}
    for g in structure.groups:
        by_size.setdefault(len(g), []).append(g)
    order: list[int] = []
    classes = []
    for size in sorted(by_size):
        classes.append((len(order), len(by_size[size]), size))
        for g in by_size[size]:
            order.extend(g)
    if structure.bias:
        order.append(p - 1)
    if sorted(order) != list(range(p)):
        raise ValueError(
            f"a GramStructure's groups (and bias) must partition the {p} columns exactly once"
        )
    allowed = torch.zeros(p, p, dtype=torch.bool)
    for g in structure.groups:
        idx = torch.tensor(g)
        allowed[idx[:, None], idx[None, :]] = True
    if structure.bias:
        allowed[-1, :] = True
        allowed[:, -1] = True
    return _Layout(torch.tensor(order, device=device), tuple(classes),
                   (~allowed).to(device))


def structure_zeros(structure: GramStructure, device: str = "cpu") -> Tensor:
    """``(p, p)`` bool mask of the entries that ``structure`` says are zero (do not modify)."""
    return _layout(structure, device).off_pattern


def fits_structure(M: Tensor, structure: GramStructure) -> bool:
    """True when every entry of ``M`` that ``structure`` says is zero is exactly zero."""
    if structure.p != M.shape[0]:
        return False
    return not bool(M[_layout(structure, str(M.device)).off_pattern].any())


class ArrowTerms(NamedTuple):
    """Per-step quantities of sGCV in the rotated block basis with a bias column.

    Attributes
    ----------
    a : Tensor
        Eigenvalues of the blocks of ``M``, clipped at 0, shape ``(p - 1,)``.
    b : Tensor
        Rotated bias column of ``M``, ``(p - 1,)``.
    c : Tensor
        Bias entry of ``M``, 0-d.
    G, H, W : Tensor
        Rotated ``G`` ``(p, p)``, ``H`` ``(p, t)``, ``W^T`` ``(p, t)``.
    r2 : Tensor
        ``||Zs W^T - Cs||_F^2`` before the update, 0-d.
    rows, t : int
        Rows of the batch system and outputs.
    """

    a: Tensor
    b: Tensor
    c: Tensor
    G: Tensor
    H: Tensor
    W: Tensor
    r2: Tensor
    rows: int
    t: int


def arrow_values(
    terms: ArrowTerms, lams: Tensor, sum_lambda: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """sGCV, post-update squared residual and the rotated increment for candidate ``lams``.

    Parameters
    ----------
    terms : ArrowTerms
    lams : Tensor
        Candidate increments ``(n,)``, ``sum_lambda + lams > 0``.
    sum_lambda : Tensor or float
        ``Lambda`` (0-d tensor or number).

    Returns
    -------
    gcv, residual : Tensor
        ``(n,)`` each; ``gcv`` is ``+inf`` where its denominator vanishes.
    U : Tensor
        ``(n, p, t)``: ``(Q^T B Q)^{-1} (H^ + lam W^)`` in the rotated basis.
    """
    mu = sum_lambda + lams  # (n,)
    D = 1.0 / (terms.a.unsqueeze(0) + mu.unsqueeze(1))  # (n, p-1)
    sigma = torch.maximum(terms.c + mu - (D * terms.b * terms.b).sum(1), mu)  # (n,)
    ones = D.new_ones(D.shape[0], 1)
    u = torch.cat((-D * terms.b, ones), dim=1)  # (n, p)
    d_ext = torch.cat((D, torch.zeros_like(ones)), dim=1)  # (n, p)
    R = terms.H.unsqueeze(0) + lams.view(-1, 1, 1) * terms.W.unsqueeze(0)  # (n, p, t)
    w = (u.unsqueeze(2) * R).sum(1) / sigma.unsqueeze(1)  # (n, t)
    U = d_ext.unsqueeze(2) * R + u.unsqueeze(2) * w.unsqueeze(1)  # (n, p, t)
    n, p, t = U.shape
    # One (p, p) x (p, n t) GEMM; a broadcast matmul would run n small products instead.
    GU = (terms.G @ U.transpose(0, 1).reshape(p, n * t)).reshape(p, n, t).transpose(0, 1)
    quad = (U * GU).sum((1, 2))
    lin = (U * terms.H.unsqueeze(0)).sum((1, 2))
    residual = (quad - 2.0 * lin + terms.r2).clamp_min(0.0)
    gdiag = torch.diagonal(terms.G)
    trace = d_ext @ gdiag + ((u @ terms.G) * u).sum(1) / sigma
    den = terms.t * (terms.rows - trace)
    gcv = torch.where(den > 0, residual / den.clamp_min(1e-300) ** 2, torch.inf)
    return gcv, residual, U


class BlockBasis(NamedTuple):
    """The rotation ``P^T (blockdiag(Q_g) (+) 1)`` of a structured step.

    Attributes
    ----------
    layout : _Layout
    Q : tuple of Tensor
        Eigenvectors of the blocks, one ``(n_groups, size, size)`` tensor per size class.
    a : Tensor
        Eigenvalues of the blocks in permuted order, ``(p - bias,)``, clipped at 0.
    """

    layout: _Layout
    Q: tuple[Tensor, ...]
    a: Tensor

    def rotate(self, X: Tensor) -> Tensor:
        """``Q^T X[perm]`` for ``X`` of shape ``(p, t)``."""
        out = X.index_select(0, self.layout.perm)  # a new tensor, rotated in place by blocks
        for (offset, k, size), Q in zip(self.layout.classes, self.Q, strict=True):
            block = out[offset : offset + k * size].reshape(k, size, -1)
            out[offset : offset + k * size] = (Q.transpose(1, 2) @ block).reshape(k * size, -1)
        return out

    def unrotate(self, Y: Tensor) -> Tensor:
        """Inverse of :meth:`rotate`: ``X`` with ``X[perm] = Q Y``."""
        Xp = Y.clone()
        for (offset, k, size), Q in zip(self.layout.classes, self.Q, strict=True):
            block = Y[offset : offset + k * size].reshape(k, size, -1)
            Xp[offset : offset + k * size] = (Q @ block).reshape(k * size, -1)
        out = torch.empty_like(Xp)
        out[self.layout.perm] = Xp
        return out

    def rotate_gram(self, G: Tensor, bias: bool) -> Tensor:
        """``Q^T G[perm][:, perm] Q`` of a Gram with this structure (off-block entries 0)."""
        perm = self.layout.perm
        blocks: list[Tensor] = []
        for (offset, k, size), Q in zip(self.layout.classes, self.Q, strict=True):
            idx = perm[offset : offset + k * size].view(k, size)
            Gb = G[idx.unsqueeze(2), idx.unsqueeze(1)]  # (k, size, size)
            blocks.extend((Q.transpose(1, 2) @ Gb @ Q).unbind(0))
        Gt = torch.block_diag(*blocks)
        if bias:
            col = self.rotate(G[:, -1:])  # (p, 1): rotated bias column, corner last
            Gt = torch.cat((torch.cat((Gt, col[:-1]), 1), col.T), 0)
        return Gt


def block_basis(
    M: Tensor, structure: GramStructure, cpu_eigh_max_size: int = CPU_EIGH_MAX_SIZE
) -> BlockBasis:
    """Batched ``eigh`` of the diagonal blocks of ``M`` (float64), one call per block size.

    Blocks of size at most ``cpu_eigh_max_size`` are decomposed on the CPU when ``M`` is on
    another device (:func:`slimtrain.linalg.eigh.symmetric_eigh`).
    """
    layout = _layout(structure, str(M.device))
    perm = layout.perm
    Qs, eigs = [], []
    for offset, k, size in layout.classes:
        idx = perm[offset : offset + k * size].view(k, size)
        Mb = M[idx.unsqueeze(2), idx.unsqueeze(1)]
        s, Q = symmetric_eigh(0.5 * (Mb + Mb.transpose(1, 2)), cpu_eigh_max_size)
        Qs.append(Q)
        eigs.append(s.reshape(-1))
    a = torch.cat(eigs).clamp_min(0.0) if eigs else M.new_zeros(0)
    return BlockBasis(layout, tuple(Qs), a)
