r"""Training losses of the separable model and the least-squares targets of the head update.

slimTik solves a linear least-squares problem for the head ``W``. For the squared loss its
right-hand side is the target ``C`` itself. For a loss :math:`\ell(f, y)` whose Hessian in the
logits is bounded, :math:`\nabla_f^2 \ell \preceq b I`, the batch loss of any ``W'`` is
majorized at the current ``W`` by a least-squares problem in the same rows ``Z`` (features with
the ones column of the bias), with *working targets* :math:`\tilde C`:

.. math::

    L(W') &= \frac1N \sum_i \ell(W' z_i, y_i)
           \le L(W) + \frac1N \sum_i g_i^\top (W' - W) z_i
                    + \frac{b}{2N} \sum_i \|(W' - W) z_i\|^2 \\
          &= \frac{b}{2N} \|Z W'^\top - \tilde C\|_F^2 + \text{const}, \qquad
    \tilde C = Z W^\top - \tfrac1b\, G, \quad
    G = [\,g_i^\top\,] = [\,\nabla_f \ell(W z_i, y_i)^\top\,],

with equality at ``W' = W`` and the same gradient there (Böhning & Lindsay 1988; Böhning 1992).
``N`` counts samples; a convolutional head has one row per output pixel, and ``L`` sums over
the pixels of a sample. The three losses:

- ``"squared"``: :math:`\ell = \tfrac12\|f - c\|^2`, ``b = 1``, :math:`\tilde C = c` (exact:
  the majorizer is the loss).
- ``"cross_entropy"``: :math:`\ell = -\log \operatorname{softmax}(f)_y`, ``b = 1/2``,
  :math:`\tilde C = f - 2(\operatorname{softmax}(f) - e_y)` (``e_y`` one-hot).
- ``"binary_cross_entropy"``: :math:`\ell = \sum_j -y_j \log\sigma(f_j) - (1 - y_j)
  \log(1 - \sigma(f_j))`, ``b = 1/4``, :math:`\tilde C = f - 4(\sigma(f) - y)`.

For softmax cross-entropy the Hessian ``diag(p) - p p^T`` is bounded by
``(1/2)(I - 1 1^T / t) <= I / 2`` (Böhning 1992); for the logistic loss ``s (1 - s) <= 1/4``.

**How Lambda maps.** slimTik minimizes ``(1/2N) ||Z W'^T - C~||^2 + ...`` (``reduction="mean"``),
which is ``1/b`` times the majorizer. So a slimTik step with increment ``lam`` and previous
``Lambda`` minimizes, over ``W'``,

.. math::

    \underbrace{\tfrac{b}{2N}\|Z W'^\top - \tilde C\|_F^2}_{\text{majorizer of } L}
    + \frac{b\,\lambda}{2} \|W'\|_F^2 + \frac{b\,\Lambda}{2} \|W' - W\|_F^2 ,

so in the units of the loss slimTik's regularization is ``b * Lambda`` (``Lambda / 2`` for
cross-entropy, ``Lambda / 4`` for the binary loss): the factor ``b`` is absorbed by ``Lambda``,
and the solve is unchanged. Because the update minimizes a majorizer of
``L(W') + (b lam / 2) ||W'||^2``, with fixed features and memory depth 0 one update never
increases ``L(W) + (b lam / 2) ||W||^2`` (for ``Lambda >= 0`` before the step).

**What the iteration converges to.** With one batch holding every row, fixed features,
memory depth 0 and ``Lambda`` held fixed (increment 0), the update is

.. math::

    W^\top \leftarrow W^\top - \bigl(\tfrac1N Z^\top Z + \Lambda I\bigr)^{-1}
    \tfrac{1}{b N} Z^\top G ,

bounded-Hessian IRLS (majorize-minimize), damped by ``Lambda``. ``Lambda`` only damps, so on
non-separable data it converges monotonically to the *unpenalized* maximum-likelihood fit
(scikit-learn's ``LogisticRegression(penalty=None)``; for softmax, up to a constant added to
every class's weights, which leaves the probabilities unchanged and which the update never
changes since the rows of ``G`` sum to zero). With minibatches, a changing feature extractor,
memory and sGCV choosing ``lam`` there is no fixed objective: each step is one
majorize-minimize step on the current batch (its Gram enlarged by the memory, which only damps
more), and the iteration is not known to converge to any particular penalized fit.

Accuracy: the fraction of correctly classified rows (samples; pixels of a convolutional head)
by ``argmax`` of the logits; for the binary loss, of outputs with ``(f > 0) == (y > 1/2)``.
``evaluate`` sums it per sample (each sample's fraction), like the loss.

References
----------
.. [1] D. Böhning, "Multinomial logistic regression algorithm", Ann. Inst. Statist. Math.
   44(1), 197-200, 1992.
.. [2] D. Böhning, B. G. Lindsay, "Monotonicity of quadratic-approximation algorithms",
   Ann. Inst. Statist. Math. 40(4), 641-663, 1988.
.. [3] E. Newman, J. Chung, M. Chung, L. Ruthotto, "slimTrain -- A Stochastic Approximation
   Method for Training Separable Deep Neural Networks", SIAM J. Sci. Comput. 44(4), 2022.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimtrain._validation import check_finite

__all__ = [
    "LOSSES",
    "LossName",
    "Loss",
    "get_loss",
    "class_dim_of",
    "squared_loss",
    "relative_errors",
    "cross_entropy_loss",
    "binary_cross_entropy_loss",
    "working_targets",
]

LossName = Literal["squared", "cross_entropy", "binary_cross_entropy"]

#: Names accepted by ``loss=`` of the trainers.
LOSSES: tuple[str, ...] = ("squared", "cross_entropy", "binary_cross_entropy")

#: Curvature bound ``b`` of each loss in the logits (``nabla^2 l <= b I``).
CURVATURE: dict[str, float] = {"squared": 1.0, "cross_entropy": 0.5, "binary_cross_entropy": 0.25}


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------


def squared_loss(prediction: Tensor, target: Tensor) -> Tensor:
    r"""Per-sample mean of :math:`\tfrac12 \|f(x_i) - c_i\|^2` (sum over all but the batch dim)."""
    diff = (prediction - target).reshape(prediction.shape[0], -1)
    return 0.5 * (diff * diff).sum() / prediction.shape[0]


def relative_errors(prediction: Tensor, target: Tensor) -> Tensor:
    r"""Per-sample :math:`\|f(x_i) - c_i\| / \|c_i\|`, shape ``(n_samples,)``."""
    diff = (prediction - target).reshape(prediction.shape[0], -1)
    norm = target.reshape(target.shape[0], -1).norm(dim=1)
    return diff.norm(dim=1) / norm.clamp_min(torch.finfo(norm.dtype).tiny)


def cross_entropy_loss(logits: Tensor, target: Tensor, class_dim: int = 1) -> Tensor:
    r"""Per-sample mean of the softmax cross-entropy summed over positions.

    :math:`\frac1N \sum_i \sum_{\text{positions}} -\log \operatorname{softmax}(f_i)_{y_i}`.
    For logits ``(N, t)`` this is ``nn.CrossEntropyLoss()``; for ``(N, t, H, W)`` it is ``H W``
    times ``nn.CrossEntropyLoss()`` (the sum over a sample's pixels, as the squared loss sums
    over a sample's outputs).

    Parameters
    ----------
    logits : Tensor
        ``(N, ...)`` with the classes along ``class_dim``.
    target : Tensor
        Class indices (integer dtype), the shape of ``logits`` without ``class_dim``.
    class_dim : int
        The axis of the classes in ``logits`` (1 as ``nn.CrossEntropyLoss``; -1 for a
        ``nn.Linear`` head on ``(N, *, p)`` features).
    """
    moved = logits.movedim(class_dim, 1) if logits.ndim > 2 else logits
    return F.cross_entropy(moved, target, reduction="sum") / logits.shape[0]


def binary_cross_entropy_loss(logits: Tensor, target: Tensor) -> Tensor:
    r"""Per-sample mean of the logistic loss summed over outputs (targets in [0, 1])."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[0]


def working_targets(logits: Tensor, target: Tensor, loss: str, class_dim: int = 1) -> Tensor:
    r"""The least-squares targets :math:`\tilde C = f - \tfrac1b \nabla_f \ell(f, y)`.

    ``logits`` are the head's output at the current ``W``; the result has their shape and
    dtype. For ``"squared"`` it is ``target`` itself. See the module docstring.

    Examples
    --------
    >>> f = torch.zeros(1, 3)
    >>> working_targets(f, torch.tensor([2]), "cross_entropy")
    tensor([[-0.6667, -0.6667,  1.3333]])
    """
    if loss == "squared":
        return target
    if loss == "cross_entropy":
        probs = torch.softmax(logits, dim=class_dim)
        one_hot = F.one_hot(target, logits.shape[class_dim]).to(logits.dtype)
        if logits.ndim > 2 and class_dim % logits.ndim != logits.ndim - 1:
            one_hot = one_hot.movedim(-1, class_dim)
        return logits - (probs - one_hot) / CURVATURE[loss]
    if loss == "binary_cross_entropy":
        return logits - (torch.sigmoid(logits) - target) / CURVATURE[loss]
    raise ValueError(f"loss must be one of {LOSSES}, found {loss!r}")


def class_dim_of(model: nn.Module) -> int:
    """The class axis of a model's output: -1 for a ``SeparableModel`` with a ``nn.Linear``
    head (its output is ``(N, *, t)``), else 1 (``nn.CrossEntropyLoss``'s convention)."""
    head = getattr(model, "head", None)
    return -1 if isinstance(head, nn.Linear) else 1


# --------------------------------------------------------------------------------------------
# the trainers' view of a loss
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loss:
    """One training loss: validation of targets, value, working targets, metrics.

    Obtain it with :func:`get_loss`. ``class_dim`` is the class axis of the logits (cross-
    entropy only).
    """

    name: str
    class_dim: int = 1

    @property
    def curvature(self) -> float:
        """The bound ``b`` on the Hessian in the logits."""
        return CURVATURE[self.name]

    @property
    def is_classification(self) -> bool:
        """True for the cross-entropy losses (they report accuracy)."""
        return self.name != "squared"

    @property
    def sum_names(self) -> tuple[str, ...]:
        """The batch sums besides the loss that :meth:`metric_sums` returns."""
        return ("accuracy",) if self.is_classification else ("target_sq",)

    # -- targets ---------------------------------------------------------------------------
    def prepare_targets(self, y: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Check the dtype and values of a batch of targets and move them to ``device``.

        Squared and binary losses take floating targets (cast to ``dtype``); cross-entropy
        takes class indices (an integer tensor, cast to ``torch.long``). Raises ``TypeError``
        or ``ValueError`` naming what was found.
        """
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a torch.Tensor, found {type(y).__name__}")
        if self.name == "cross_entropy":
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise TypeError(
                    f"cross-entropy targets must be class indices, an integer tensor (such as "
                    f"torch.long) of shape (N,) as for nn.CrossEntropyLoss; found dtype "
                    f"{y.dtype}. Convert labels with y.long()"
                )
            if y.numel() and int(y.min()) < 0:
                raise ValueError(
                    f"cross-entropy targets must be class indices >= 0, found {int(y.min())}"
                )
            return y.to(device=device, dtype=torch.long)
        if not y.is_floating_point():
            raise TypeError(f"y must have a floating-point dtype, found {y.dtype}")
        check_finite("y", y)
        if self.name == "binary_cross_entropy" and y.numel() and (
            float(y.min()) < 0.0 or float(y.max()) > 1.0
        ):
            raise ValueError(
                f"binary cross-entropy targets must lie in [0, 1] (0/1 labels), found values in "
                f"[{float(y.min()):g}, {float(y.max()):g}]"
            )
        return y.to(device=device, dtype=dtype)

    def check(self, output: Tensor, y: Tensor) -> None:
        """Raise ``ValueError`` unless targets ``y`` fit the model's ``output``.

        Cross-entropy: ``y`` has the shape of ``output`` without the class axis, the head has
        at least two outputs and every class index is below their number. Otherwise ``y`` has
        the shape of ``output``.
        """
        if self.name != "cross_entropy":
            if tuple(y.shape) != tuple(output.shape):
                raise ValueError(
                    f"targets has shape {tuple(y.shape)} but the model's output has shape "
                    f"{tuple(output.shape)}; {self.name} targets must have the output's shape"
                )
            return
        if output.ndim < 2:
            raise ValueError(
                "cross-entropy needs logits of shape (N, classes, ...), found "
                f"{tuple(output.shape)}"
            )
        dim = self.class_dim % output.ndim
        classes = int(output.shape[dim])
        expected = tuple(output.shape[:dim]) + tuple(output.shape[dim + 1 :])
        if tuple(y.shape) != expected:
            raise ValueError(
                f"cross-entropy targets has shape {tuple(y.shape)} but the logits have shape "
                f"{tuple(output.shape)} (classes along dim {dim}); expected class indices of "
                f"shape {expected}"
            )
        if classes < 2:
            raise ValueError(
                f"the head has {classes} output(s) but cross-entropy needs one per class (at "
                "least 2); for two classes use 2 outputs, or 1 with loss='binary_cross_entropy'"
            )
        if y.numel() and int(y.max()) >= classes:
            raise ValueError(
                f"targets hold class {int(y.max())} but the head has {classes} outputs (classes "
                f"0..{classes - 1}); give the head one output per class"
            )

    # -- values ----------------------------------------------------------------------------
    def value(self, output: Tensor, y: Tensor) -> Tensor:
        """The batch loss: per-sample mean, summed over a sample's outputs or positions."""
        if self.name == "cross_entropy":
            return cross_entropy_loss(output, y, self.class_dim)
        if self.name == "binary_cross_entropy":
            return binary_cross_entropy_loss(output, y)
        return squared_loss(output, y)

    def working_targets(self, logits: Tensor, y: Tensor) -> Tensor:
        """:func:`working_targets` of this loss (``logits`` at the current ``W``)."""
        return working_targets(logits, y, self.name, self.class_dim)

    def correct(self, output: Tensor, y: Tensor) -> Tensor:
        """Per-sample fraction of correctly classified positions (outputs), ``(N,)``."""
        if self.name == "cross_entropy":
            hits = output.argmax(dim=self.class_dim) == y
        else:
            hits = (output > 0) == (y > 0.5)
        return hits.reshape(hits.shape[0], -1).to(output.dtype).mean(dim=1)

    def metric_sums(self, output: Tensor, y: Tensor) -> dict[str, float]:
        """Sums over the batch of the loss and of :attr:`sum_names` (no grad).

        ``accuracy`` sums the per-sample fractions of correct positions; ``target_sq`` is
        :math:`\\|C\\|_F^2`, from which :meth:`metric_means` forms the whole-set relative error.
        """
        n = int(output.shape[0])
        sums = {"loss": float(self.value(output, y)) * n}
        if self.is_classification:
            sums["accuracy"] = float(self.correct(output, y).sum())
        else:
            sums["target_sq"] = float(y.double().square().sum())
        return sums

    def metric_means(self, totals: dict[str, float]) -> dict[str, float]:
        r"""Whole-set metrics from the sums of :meth:`metric_sums` over batches (and ``n``).

        ``loss`` and ``accuracy`` are means over the samples. For the squared loss,
        ``rel_error`` is :math:`\|F - C\|_F / \|C\|_F` of the whole set: the loss sum is
        :math:`\tfrac12 \|F - C\|_F^2`.
        """
        count = totals["n"]
        means = {"loss": totals["loss"] / count}
        if self.is_classification:
            means["accuracy"] = totals["accuracy"] / count
        else:
            target = totals["target_sq"]
            means["rel_error"] = (
                math.sqrt(2.0 * totals["loss"] / target) if target > 0 else math.inf
            )
        return means


def get_loss(name: object, class_dim: int = 1) -> Loss:
    """The :class:`Loss` called ``name`` (one of :data:`LOSSES`)."""
    if not isinstance(name, str):
        raise TypeError(f"loss must be a string among {LOSSES}, found {type(name).__name__}")
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, found {name!r}")
    return Loss(name, class_dim if name == "cross_entropy" else 1)
