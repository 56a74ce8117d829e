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
``tr(U^T G^ U) - 2 tr(U^T H^) + ||R||^2`` and trace ``tr(G^ (Q^T B Q)^{-1})`` cost one
product with the rotated batch Gram, which keeps the block-arrow form of ``M`` (the rows of a
batch have the same structure): ``O(p^2 t / n_groups)``, all candidates in one batched
expression (one ``bmm`` per block size). Without a bias the rotated memory Gram
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
from collections.abc import Sequence
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
    "arrow_increment",
    "arrow_terms",
    "fits_structure",
    "gcv_ratio",
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
    blocks: tuple[Tensor, ...]  # per class: flat indices into a (p, p) Gram of its blocks
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
    perm = torch.tensor(order)
    blocks = []
    for offset, k, size in classes:
        idx = perm[offset : offset + k * size].view(k, size)
        blocks.append((idx.unsqueeze(2) * p + idx.unsqueeze(1)).reshape(-1).to(device))
    return _Layout(perm.to(device), tuple(classes), tuple(blocks), (~allowed).to(device))


def structure_zeros(structure: GramStructure, device: str = "cpu") -> Tensor:
    """``(p, p)`` bool mask of the entries that ``structure`` says are zero (do not modify)."""
    return _layout(structure, device).off_pattern


def fits_structure(M: Tensor, structure: GramStructure) -> bool:
    """True when every entry of ``M`` that ``structure`` says is zero is exactly zero.

    Counts instead of masking: the non-zeros of ``M`` are those of its blocks plus those of
    the bias row and column (the corner once) exactly when nothing else is non-zero.
    """
    if structure.p != M.shape[0]:
        return False
    layout = _layout(structure, str(M.device))
    inside = sum(
        (torch.count_nonzero(M.reshape(-1).take(flat)) for flat in layout.blocks),
        torch.zeros((), dtype=torch.int64, device=M.device),
    )
    if structure.bias:
        inside = inside + torch.count_nonzero(M[-1]) + torch.count_nonzero(M[:-1, -1])
    return bool(torch.count_nonzero(M) == inside)


def _blocks(M: Tensor, layout: _Layout) -> list[Tensor]:
    """The diagonal blocks of ``M``, one ``(n_groups, size, size)`` tensor per size class."""
    flat = M.reshape(-1)
    return [
        flat.take(idx).view(k, size, size)
        for idx, (_, k, size) in zip(layout.blocks, layout.classes, strict=True)
    ]


class ArrowTerms(NamedTuple):
    """Per-step quantities of sGCV in the rotated block basis with a bias column.

    The rotated batch Gram is ``[[blockdiag(G_blocks), g], [g^T, g_c]]``; it is kept in that
    form so that every product with it costs ``O(sum_g size_g^2)`` instead of ``O(p^2)``.
    Build it with :func:`arrow_terms`, which also stores the shapes and multiples that
    :func:`arrow_values` broadcasts with (each candidate batch then takes about 50 tensor
    operations, whatever ``p``).

    Attributes
    ----------
    a : Tensor
        Eigenvalues of the blocks of ``M``, clipped at 0, shape ``(p - 1, 1)``.
    b : Tensor
        Rotated bias column of ``M`` without its corner, ``(p - 1, 1)``.
    c : Tensor
        Bias entry of ``M``, 0-d.
    G_blocks : tuple of Tensor
        Rotated diagonal blocks of ``G``, one ``(n_groups, size, size)`` tensor per size class
        (in the order of the rotated columns).
    g2 : Tensor
        Twice the rotated bias column of ``G`` without its corner, ``(p - 1, 1)``.
    g_c : Tensor
        Bias entry of ``G``, 0-d.
    g_diag : Tensor
        Diagonal of ``blockdiag(G_blocks)``, ``(p - 1,)``.
    H, W : Tensor
        Rotated ``H`` and ``W^T``, shape ``(p, 1, t)``, the bias row last.
    H2 : Tensor
        Twice the rotated ``H``, ``(p, 1, t)``.
    r2 : Tensor
        ``||Zs W^T - Cs||_F^2`` before the update, 0-d.
    rows, t : int
        Rows of the batch system and outputs.
    """

    a: Tensor
    b: Tensor
    c: Tensor
    G_blocks: tuple[Tensor, ...]
    g2: Tensor
    g_c: Tensor
    g_diag: Tensor
    H: Tensor
    W: Tensor
    H2: Tensor
    r2: Tensor
    rows: int
    t: int

    def block_product(self, X: Tensor) -> Tensor:
        """``blockdiag(G_blocks) @ X`` for ``X`` of shape ``(p - 1, m)`` (contiguous)."""
        out, offset = [], 0
        for B in self.G_blocks:
            k, size = B.shape[0], B.shape[1]
            part = X[offset : offset + k * size]
            out.append(torch.bmm(B, part.reshape(k, size, -1)).view(part.shape))
            offset += k * size
        return out[0] if len(out) == 1 else torch.cat(out)


def arrow_terms(
    a: Tensor, b: Tensor, c: Tensor, G_blocks: Sequence[Tensor], g: Tensor, g_c: Tensor,
    H: Tensor, W: Tensor, r2: Tensor, rows: int,
) -> ArrowTerms:
    """:class:`ArrowTerms` from the rotated quantities of a step.

    Parameters
    ----------
    a, b : Tensor
        Block eigenvalues and rotated bias column of ``M`` (no corner), ``(p - 1,)`` each.
    c : Tensor
        Bias entry of ``M``, 0-d.
    G_blocks : sequence of Tensor
        Rotated diagonal blocks of ``G`` per size class, ``(n_groups, size, size)``.
    g : Tensor
        Rotated bias column of ``G`` without its corner, ``(p - 1,)``.
    g_c : Tensor
        Bias entry of ``G``, 0-d.
    H, W : Tensor
        Rotated ``H`` and ``W^T``, ``(p, t)``.
    r2 : Tensor
        Squared residual before the update, 0-d.
    rows : int
        Rows of the batch system.
    """
    blocks = tuple(G_blocks)
    g_diag = torch.cat([torch.diagonal(B, dim1=1, dim2=2).reshape(-1) for B in blocks])
    H3 = H.unsqueeze(1)
    return ArrowTerms(a.unsqueeze(1), b.unsqueeze(1), c, blocks, 2.0 * g.unsqueeze(1), g_c,
                      g_diag, H3, W.unsqueeze(1), 2.0 * H3, r2, int(rows), int(H.shape[1]))


def arrow_values(
    terms: ArrowTerms, lams: Tensor, sum_lambda: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    r"""sGCV, post-update squared residual and the rotated increment for candidate ``lams``.

    With ``mu = Lambda + lam``, ``D = diag(1 / (a + mu))`` and ``u = [-D b; 1]``, the increment
    is ``U = [D R_A; 0] + u w`` with ``R = H^ + lam W^`` and ``w = u^T R / sigma``; its residual
    ``tr(U^T G^ U) - 2 tr(U^T H^) + ||R||^2`` and the trace
    ``diag(G_A) . D + u^T G^ u / sigma`` need one block product with ``[U_A | D b]``.

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
        ``(p, n, t)``: ``(Q^T B Q)^{-1} (H^ + lam W^)`` in the rotated basis, candidates along
        the middle axis.
    """
    n, t = lams.shape[0], terms.t
    D, Db, sigma, UA, w = _arrow_solve(terms, lams, sum_lambda)
    # One block product serves G^ U and the trace's G^ u: [UA | Db] side by side.
    both = terms.block_product(torch.cat((UA.view(-1, n * t), Db), 1))
    # tr(U^T G^ U) - 2 tr(U^T H^) = UA.(B UA - 2 H_A) + w.(2 g^T UA + g_c w - 2 H_c)
    resid = (UA * (both[:, : n * t].reshape(UA.shape) - terms.H2[:-1])).sum((0, 2))
    gU2 = (terms.g2.unsqueeze(2) * UA).sum(0)  # (n, t): 2 g^T UA
    inner = torch.addcmul(gU2, terms.g_c, w).sub_(terms.H2[-1])
    residual = resid.add_((w * inner).sum(1)).add_(terms.r2).clamp_min_(0.0)
    # u^T G^ u = Db.(B Db - 2 g) + g_c
    uGu = (Db * (both[:, n * t :] - terms.g2)).sum(0).add_(terms.g_c)
    trace = (terms.g_diag @ D).add_(uGu.div_(sigma))
    gcv = gcv_ratio(residual, terms.t * (terms.rows - trace))
    return gcv, residual, torch.cat((UA, w.unsqueeze(0)))


def arrow_increment(terms: ArrowTerms, lams: Tensor, sum_lambda: Tensor | float) -> Tensor:
    """The rotated increment ``U`` ``(p, n, t)`` of :func:`arrow_values` alone (no sGCV)."""
    _, _, _, UA, w = _arrow_solve(terms, lams, sum_lambda)
    return torch.cat((UA, w.unsqueeze(0)))


def _arrow_solve(
    terms: ArrowTerms, lams: Tensor, sum_lambda: Tensor | float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``D`` and ``D b`` ``(p - 1, n)``, ``sigma`` ``(n,)``, ``U_A`` ``(p - 1, n, t)`` and the
    bias row ``w`` ``(n, t)`` of the increment (see :func:`arrow_values`)."""
    mu = sum_lambda + lams  # (n,)
    D = (terms.a + mu).reciprocal_()  # (p-1, n)
    Db = D * terms.b  # (p-1, n): minus the first p-1 entries of u
    sigma = torch.maximum(terms.c + mu - terms.b.view(-1) @ Db, mu)  # (n,)
    R = torch.addcmul(terms.H, lams.view(1, -1, 1), terms.W)  # (p, n, t)
    RA = R[:-1]
    Db3 = Db.unsqueeze(2)
    w = (R[-1] - (Db3 * RA).sum(0)).div_(sigma.unsqueeze(1))  # (n, t) = u^T R / sigma
    UA = torch.addcmul(D.unsqueeze(2) * RA, Db3, w, value=-1.0)  # (p-1, n, t); bias row w
    return D, Db, sigma, UA, w


def gcv_ratio(residual: Tensor, den: Tensor) -> Tensor:
    """sGCV ``residual / den^2`` where its denominator ``den > 0``, ``+inf`` elsewhere."""
    return torch.where(den > 0, residual / den.square(), torch.inf)


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
        return torch.empty_like(Xp).index_copy_(0, self.layout.perm, Xp)

    def rotate_blocks(self, G: Tensor) -> list[Tensor]:
        """``Q_g^T G_g Q_g`` of the diagonal blocks of a Gram with this structure, one
        ``(n_groups, size, size)`` tensor per size class."""
        return [
            Q.transpose(1, 2) @ Gb @ Q for Gb, Q in zip(_blocks(G, self.layout), self.Q,
                                                       strict=True)
        ]

    def rotate_gram(self, G: Tensor, bias: bool) -> Tensor:
        """``Q^T G[perm][:, perm] Q`` of a Gram with this structure (off-block entries 0)."""
        Gt = torch.block_diag(*(b for B in self.rotate_blocks(G) for b in B.unbind(0)))
        if bias:
            col = self.rotate(G[:, -1:])  # (p, 1): rotated bias column, corner last
            Gt = torch.cat((torch.cat((Gt, col[:-1]), 1), col.T), 0)
        return Gt


def block_basis(
    M: Tensor, structure: GramStructure, cpu_eigh_max_size: int = CPU_EIGH_MAX_SIZE
) -> BlockBasis:
    """Batched ``eigh`` of the diagonal blocks of ``M`` (float64), one call per block size.

    ``eigh`` reads the lower triangle of each block. Blocks of size at most
    ``cpu_eigh_max_size`` are decomposed on the CPU when ``M`` is on another device
    (:func:`slimtrain.linalg.eigh.symmetric_eigh`).
    """
    layout = _layout(structure, str(M.device))
    Qs, eigs = [], []
    for Mb in _blocks(M, layout):
        s, Q = symmetric_eigh(Mb, cpu_eigh_max_size)
        Qs.append(Q)
        eigs.append(s.reshape(-1))
    a = torch.cat(eigs).clamp_min(0.0) if eigs else M.new_zeros(0)
    return BlockBasis(layout, tuple(Qs), a)
