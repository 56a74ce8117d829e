r"""Head adapters: the final linear layer of a separable network as a linear system.

slimTik solves for the weights ``W`` of the head exactly at every step. For that, each supported
head maps a batch of ``features`` (the head's input) and ``targets`` (the head's desired output)
to the rows of a linear least-squares system

.. math::

    \min_W \tfrac12 \| Z W^\top - C \|_F^2, \qquad
    Z \in \mathbb{R}^{\text{rows} \times p}, \; C \in \mathbb{R}^{\text{rows} \times t},
    \; W \in \mathbb{R}^{t \times p},

such that ``Z @ W.T``, rearranged, is exactly the head's native forward. When the head has a
bias, ``Z`` carries a trailing column of ones and the last column of ``W`` is the bias.

Supported heads (``groups=1``, ``padding_mode="zeros"``):

=========================  ==============================  ===================================
head                       rows                            columns of ``W`` (before the bias)
=========================  ==============================  ===================================
``nn.Linear``              ``N * prod(*)``                 ``in_features``
``nn.Conv2d``              ``N * H_out * W_out``           ``(c_in, ky, kx)``
``nn.ConvTranspose2d``     ``N * H_out * W_out``           ``(c_in, kh-1-ky, kw-1-kx)``
=========================  ==============================  ===================================

Rows of convolutional heads are ordered ``(n, oy, ox)`` and columns of ``C`` are the output
channels. :func:`head_adapter` returns the adapter of a head; adapters are stateless and take
the head as their first argument:

- :meth:`HeadAdapter.design` forms the explicit rows ``(Z, C)`` (the reference path),
- :meth:`HeadAdapter.statistics` forms the :class:`~slimtrain.linalg.stats.GramStats`
  ``Z^T Z``, ``Z^T C``, ``||C||^2`` directly (the fast path of every training step),
- :meth:`HeadAdapter.get_weight` / :meth:`HeadAdapter.set_weight` read and write ``W``.

The transposed convolution
--------------------------
For ``nn.ConvTranspose2d`` with stride ``s``, padding ``q``, dilation ``d``, output padding
``o`` and weight ``w`` of shape ``(c_in, c_out, kh, kw)``, along one axis

.. math::

    y[n, j, u] = b_j + \sum_{c, k} x[n, c, (u + q - d k) / s] \, w[c, j, k],

summing over the taps ``k`` for which ``(u + q - d k) / s`` is an integer in ``[0, H_in)``;
``H_out = (H_in - 1) s - 2 q + d (kh - 1) + o + 1``. This is the ordinary convolution (a
cross-correlation, as ``nn.Conv2d`` computes it) of the stride-dilated input ``x_s``
(``s - 1`` zeros inserted between neighbouring pixels), padded by ``d (kh - 1) - q`` before and
``d (kh - 1) - q + o`` after (negative padding crops), with the flipped, channel-swapped kernel
``w'[j, c, a] = w[c, j, kh - 1 - a]``. The design rows are therefore those of that ``Conv2d``,
``Z = unfold(pad(x_s))`` with dilation ``d``, and ``W = w'.reshape(c_out, -1)`` [| bias]:
column ``c * kh * kw + a * kw + a'`` of ``W`` holds ``w[c, :, kh - 1 - a, kw - 1 - a']``.

Phase decomposition (the fast path). Output position ``u = r + s m`` (phase ``r = u mod s``)
only sees the taps ``k`` with ``(r + q - d k) mod s = 0``, reading input pixel
``m + (r + q - d k) / s``. Every tap belongs to exactly one phase, so in two dimensions the
phase ``(ry, rx)`` has a small dense design of the ``(c_in, taps of the phase)`` columns, at
most ``c_in * ceil(kh / s_h) * ceil(kw / s_w)`` wide, built by strided slicing of the
(un-dilated) input; its rows are the output pixels of that phase. Rows of different phases
share no tap, so ``Z^T Z`` is, up to a permutation of columns, block diagonal with one block
per phase (plus the ones column), and the per-phase Gram and cross products are written into
their blocks. This costs ``1 / (s_h s_w)^2`` of the dense ``p x p`` Gram of the zero-inserted
rows and never materialises them.
"""

from __future__ import annotations

import functools
import itertools
import logging
import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from slimtrain._validation import check_finite, check_int, check_same_device, check_tensor
from slimtrain.linalg.correlation import (
    Window,
    WindowPlan,
    plan_window_grams,
    window_cross_blocks,
    window_gram_blocks,
)
from slimtrain.linalg.stats import GramStats
from slimtrain.linalg.structured import GramStructure

__all__ = [
    "Conv2dAdapter",
    "ConvTranspose2dAdapter",
    "HeadAdapter",
    "LinearAdapter",
    "SUPPORTED_HEADS",
    "head_adapter",
]

logger = logging.getLogger(__name__)

SUPPORTED_HEADS: tuple[str, ...] = ("nn.Linear", "nn.Conv2d", "nn.ConvTranspose2d")
"""Names of the supported head types, as they appear in error messages."""

#: Largest number of elements of one block of gathered patches in :meth:`HeadAdapter.statistics`
#: (16 Mi elements, 128 MiB in float64); larger batches are processed in chunks of samples.
DEFAULT_MAX_BLOCK_ELEMENTS = 2**24


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _check_accumulate_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"dtype (the accumulation dtype) must be a floating torch.dtype such as "
            f"torch.float64, found {dtype!r}"
        )


def _check_tensors(features: object, targets: object) -> tuple[Tensor, Tensor]:
    """Type and device checks common to every head."""
    features = check_tensor("features", features)
    targets = check_tensor("targets", targets)
    check_same_device(features=features, targets=targets)
    return features, targets


def _check_batch(features: Tensor, targets: Tensor) -> None:
    """Batch-size and finiteness checks (after the head has checked the features' rank)."""
    if targets.ndim == 0 or features.shape[0] != targets.shape[0]:
        found = targets.shape[0] if targets.ndim else "no batch dimension"
        raise ValueError(
            f"features has {features.shape[0]} samples but targets has {found} "
            f"(the first dimension is the batch)"
        )
    if features.shape[0] == 0:
        raise ValueError("features and targets hold no samples; expected a non-empty batch")
    check_finite("features", features)
    check_finite("targets", targets)


def _check_target_shape(targets: Tensor, expected: tuple[int, ...], head: nn.Module) -> None:
    if tuple(targets.shape) != expected:
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but {type(head).__name__} produces "
            f"{expected} from these features; targets must have the head's output shape"
        )


H = TypeVar("H", bound=nn.Module)


def _pair(value: Any, name: str, head: nn.Module) -> tuple[int, int]:
    label = f"{type(head).__name__}.{name}"
    pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{label} must be two ints, found {value!r}")
    return check_int(label, pair[0], minimum=0), check_int(label, pair[1], minimum=0)


def _is_lazy(param: Tensor | None) -> bool:
    return param is not None and nn.parameter.is_lazy(param)


def _gather_taps(
    x_cn: Tensor,
    starts: Sequence[tuple[int, int]],
    step: tuple[int, int],
    size: tuple[int, int],
) -> Tensor:
    """Gather strided windows of ``x_cn`` ``(c, n, H, W)`` into ``(c * taps, n * Jy * Jx)``.

    Tap ``t`` with start ``(a, b)`` contributes ``x_cn[:, :, a + step_y * i, b + step_x * j]``
    for ``i < Jy``, ``j < Jx``; rows are ordered ``(c, t)`` and columns ``(n, i, j)``.
    """
    (sy, sx), (jy, jx) = step, size
    windows = [
        x_cn[:, :, a : a + sy * (jy - 1) + 1 : sy, b : b + sx * (jx - 1) + 1 : sx]
        for a, b in starts
    ]
    patches = torch.stack(windows, dim=1)  # (c, taps, n, Jy, Jx)
    return patches.reshape(patches.shape[0] * patches.shape[1], -1)


def _sample_chunks(n_samples: int, per_sample: int, max_elements: int) -> list[slice]:
    size = max(1, max_elements // max(1, per_sample))
    if size < n_samples:
        logger.debug("gathering patches in chunks of %d of %d samples", size, n_samples)
    return [slice(i, min(i + size, n_samples)) for i in range(0, n_samples, size)]


def _conv_output_size(size: int, lo: int, hi: int, kernel: int, stride: int, dil: int) -> int:
    return (size + lo + hi - dil * (kernel - 1) - 1) // stride + 1


# --------------------------------------------------------------------------------------------
# the adapter interface
# --------------------------------------------------------------------------------------------


class HeadAdapter(ABC, Generic[H]):
    """Maps a head, its input ``features`` and the ``targets`` to rows of a linear system.

    Adapters hold no state: every method takes the head, reads its configuration and (for
    :meth:`get_weight` / :meth:`set_weight`) its parameters. Obtain one with
    :func:`head_adapter`.
    """

    head_type: ClassVar[type[nn.Module]]

    # -- configuration ----------------------------------------------------------------------

    def check_head(self, head: nn.Module) -> H:
        """Return ``head`` if the adapter supports it; raise ``TypeError``/``ValueError`` if not."""
        if not isinstance(head, self.head_type):
            raise TypeError(
                f"{type(self).__name__} handles nn.{self.head_type.__name__} heads, found "
                f"{type(head).__name__}"
            )
        if type(head).forward is not self.head_type.forward:
            raise TypeError(
                f"{type(head).__name__} subclasses nn.{self.head_type.__name__} but overrides "
                f"forward, so its rows are unknown; use a plain nn.{self.head_type.__name__}"
            )
        weight = getattr(head, "weight", None)
        if not isinstance(weight, Tensor) or _is_lazy(weight) or _is_lazy(self._bias(head)):
            raise ValueError(
                f"{type(head).__name__} has uninitialised (lazy) parameters; run one forward "
                f"pass before using it as a slimTik head"
            )
        stored = {**head._parameters, **head._buffers}
        if stored.get("weight") is not weight or stored.get("bias", None) is not self._bias(head):
            raise ValueError(
                f"the weight of this {type(head).__name__} is computed (a parametrization or "
                f"weight normalization), so W cannot be written back; remove it with "
                f"torch.nn.utils.parametrize.remove_parametrizations or use a plain layer"
            )
        typed = cast(H, head)
        self._check_config(typed)
        return typed

    def _check_config(self, head: H) -> None:
        """Per-type configuration checks (``ValueError``); nothing by default."""

    def num_features(self, head: nn.Module) -> int:
        """Columns ``p`` of ``Z`` (and of ``W``), the ones column of a bias included."""
        h = self.check_head(head)
        return self._num_weight_columns(h) + (1 if self._bias(h) is not None else 0)

    def num_outputs(self, head: nn.Module) -> int:
        """Columns ``t`` of ``C`` (rows of ``W``): output features or channels."""
        return self._num_outputs(self.check_head(head))

    def output_shape(self, head: nn.Module, features_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of ``head(features)`` (and so of the targets) for features of this shape.

        Raises ``ValueError`` when the features do not fit the head (rank, channels, size).
        """
        return self._output_shape(self.check_head(head), tuple(int(s) for s in features_shape))

    @abstractmethod
    def _output_shape(self, head: H, shape: tuple[int, ...]) -> tuple[int, ...]: ...

    def _prepare(
        self, head: nn.Module, features: object, targets: object
    ) -> tuple[H, Tensor, Tensor, tuple[int, ...]]:
        """Check head and batch; return the typed head, the tensors and the output shape."""
        h = self.check_head(head)
        x, y = _check_tensors(features, targets)
        out_shape = self._output_shape(h, tuple(x.shape))
        _check_batch(x, y)
        _check_target_shape(y, out_shape, h)
        return h, x, y, out_shape

    # -- weights ----------------------------------------------------------------------------

    def get_weight(self, head: nn.Module, dtype: torch.dtype | None = None) -> Tensor:
        """The head's weights as the matrix ``W`` ``(t, p)``, a new tensor.

        Parameters
        ----------
        head : nn.Module
            The head.
        dtype : torch.dtype, optional
            dtype of the result; the weight parameter's dtype by default.

        Returns
        -------
        Tensor
            ``W`` of shape ``(n_outputs, n_features)`` on the head's device, bias (if any) in
            the last column; detached from autograd.
        """
        h = self.check_head(head)
        with torch.no_grad():
            weight = self._weight(h).detach()
            dtype = weight.dtype if dtype is None else dtype
            matrix = self._weight_to_matrix(h, weight).to(dtype)
            bias = self._bias(h)
            if bias is not None:
                matrix = torch.cat([matrix, bias.detach().to(dtype).unsqueeze(1)], dim=1)
            else:
                matrix = matrix.clone(memory_format=torch.contiguous_format)
        return matrix

    def set_weight(self, head: nn.Module, W: Tensor) -> None:
        """Write ``W`` ``(t, p)`` into the head's parameters in place.

        The parameters keep their dtype, device and ``requires_grad`` flag; ``W`` may have
        another dtype or device. ``W`` is validated (shape, finiteness) before anything is
        written.
        """
        h = self.check_head(head)
        W = check_tensor("W", W, ndim=2)
        bias = self._bias(h)
        n_weight = self._num_weight_columns(h)
        expected = (self._num_outputs(h), n_weight + (1 if bias is not None else 0))
        if tuple(W.shape) != expected:
            with_bias = ", the bias in the last column" if bias is not None else ""
            raise ValueError(
                f"W has shape {tuple(W.shape)} but this {type(h).__name__} head needs "
                f"{expected} (n_outputs, n_features{with_bias})"
            )
        check_finite("W", W)
        with torch.no_grad():
            weight = self._weight(h)
            new_weight = self._matrix_to_weight(h, W[:, :n_weight])
            weight.copy_(new_weight.to(device=weight.device, dtype=weight.dtype))
            if bias is not None:
                bias.copy_(W[:, n_weight].to(device=bias.device, dtype=bias.dtype))

    # -- rows and statistics ------------------------------------------------------------------

    @abstractmethod
    def design(self, head: nn.Module, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Explicit rows ``Z`` ``(rows, p)`` and ``C`` ``(rows, t)`` of the batch system.

        ``Z`` has the dtype of ``features``, ``C`` that of ``targets``; ``Z @ W.T`` rearranged
        is the native ``head(features)``. This is the reference path; the training step uses
        :meth:`statistics`.
        """

    @abstractmethod
    def statistics(
        self,
        head: nn.Module,
        features: Tensor,
        targets: Tensor,
        dtype: torch.dtype = torch.float64,
        *,
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
        method: str = "auto",
    ) -> GramStats:
        """:class:`GramStats` of the batch system, without forming ``Z`` when avoidable.

        Equal (to rounding) to ``gram_statistics(*design(head, features, targets),
        n_samples=N, dtype=dtype)``.

        Parameters
        ----------
        head : nn.Module
            The head.
        features : Tensor
            The head's input, ``(n_samples, ...)``.
        targets : Tensor
            The desired output, the shape of ``head(features)``.
        dtype : torch.dtype
            Accumulation dtype of the sums (float64 by default).
        max_block_elements : int
            Largest block of gathered patches formed at once; larger batches are processed
            in chunks of samples.
        method : {"auto", "correlation", "gather"}
            How convolutional heads form ``Z^T Z``: ``"correlation"`` from one correlation of
            the feature maps per tap shift (:mod:`slimtrain.linalg.correlation`), ``"gather"``
            from the gathered taps (one product per tap pair). ``"auto"`` takes the correlation
            for ``nn.ConvTranspose2d`` unless one shift's products ``(positions, c, c)`` exceed
            ``max_block_elements``, and the gathered taps for ``nn.Conv2d`` (faster there on
            CPU as measured). Both are exact; ``nn.Linear`` ignores it.

        Returns
        -------
        GramStats
            ``ztz`` ``(p, p)``, ``ztc`` ``(p, t)``, ``ctc``, ``n_samples = N``,
            ``n_rows = rows``, on the device of ``features``.
        """

    # -- per-type pieces ----------------------------------------------------------------------

    @staticmethod
    def _bias(head: nn.Module) -> Tensor | None:
        bias = getattr(head, "bias", None)
        return bias if isinstance(bias, Tensor) else None

    @staticmethod
    def _weight(head: nn.Module) -> Tensor:
        return cast(Tensor, head.weight)

    @abstractmethod
    def _num_outputs(self, head: H) -> int: ...

    @abstractmethod
    def _num_weight_columns(self, head: H) -> int: ...

    @abstractmethod
    def _weight_to_matrix(self, head: H, weight: Tensor) -> Tensor: ...

    @abstractmethod
    def _matrix_to_weight(self, head: H, matrix: Tensor) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------------------------
# nn.Linear
# --------------------------------------------------------------------------------------------


class LinearAdapter(HeadAdapter[nn.Linear]):
    """``nn.Linear(p_in, t)``: ``Z = [features | 1]``, ``C = targets``, ``W = [weight | bias]``.

    Features of shape ``(n_samples, *, p_in)`` are accepted like ``nn.Linear`` does: every
    leading position is a row (``rows = n_samples * prod(*)``), and targets have shape
    ``(n_samples, *, t)``. ``n_samples`` in the statistics is the first dimension.
    """

    head_type = nn.Linear

    def _output_shape(self, head: nn.Linear, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(*features_shape[:-1], out_features)``."""
        in_features = int(head.in_features)
        if len(shape) < 2:
            raise ValueError(
                f"features for nn.Linear must have shape (n_samples, ..., {in_features}), found "
                f"{shape}; add a batch dimension"
            )
        if shape[-1] != in_features:
            raise ValueError(
                f"features has {shape[-1]} features in its last dimension but the "
                f"nn.Linear head expects in_features={in_features}"
            )
        return (*shape[:-1], int(head.out_features))

    def _num_outputs(self, head: nn.Linear) -> int:
        return int(head.out_features)

    def _num_weight_columns(self, head: nn.Linear) -> int:
        return int(head.in_features)

    def _weight_to_matrix(self, head: nn.Linear, weight: Tensor) -> Tensor:
        return weight

    def _matrix_to_weight(self, head: nn.Linear, matrix: Tensor) -> Tensor:
        return matrix

    def _rows(
        self, head: nn.Module, features: Tensor, targets: Tensor
    ) -> tuple[nn.Linear, Tensor, Tensor]:
        h, x, y, _ = self._prepare(head, features, targets)
        return h, x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])

    def design(self, head: nn.Module, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``Z = [features | 1]`` ``(rows, p)``, ``C = targets`` ``(rows, t)``."""
        h, Z, C = self._rows(head, features, targets)
        if self._bias(h) is not None:
            Z = torch.cat([Z, Z.new_ones(Z.shape[0], 1)], dim=1)
        return Z, C

    def statistics(
        self,
        head: nn.Module,
        features: Tensor,
        targets: Tensor,
        dtype: torch.dtype = torch.float64,
        *,
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
        method: str = "auto",
    ) -> GramStats:
        """Gram statistics of ``[features | 1]`` and ``targets``; see :class:`HeadAdapter`."""
        _check_accumulate_dtype(dtype)
        h, X, C = self._rows(head, features, targets)
        n_samples = int(features.shape[0])
        X, C = X.to(dtype), C.to(dtype)
        n_rows = int(X.shape[0])
        ztz, ztc = X.T @ X, X.T @ C
        if self._bias(h) is not None:
            col_sum, c_sum = X.sum(0), C.sum(0)
            count = X.new_full((1, 1), float(n_rows))
            ztz = torch.cat(
                [torch.cat([ztz, col_sum[:, None]], 1), torch.cat([col_sum[None], count], 1)], 0
            )
            ztc = torch.cat([ztc, c_sum[None]], 0)
        return GramStats(ztz, ztc, (C * C).sum(), n_samples, n_rows)


# --------------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------------


C2 = TypeVar("C2", nn.Conv2d, nn.ConvTranspose2d)


class _Conv2dBase(HeadAdapter[C2]):
    """Shared checks of the two convolution adapters."""

    def _check_config(self, head: C2) -> None:
        """Raise unless ``head`` is a supported 2-d convolution (``groups=1``, zero padding)."""
        name = type(head).__name__
        if head.groups != 1:
            raise ValueError(
                f"{name} heads with groups={head.groups} are not supported; slimTik solves a "
                f"dense W, so use groups=1"
            )
        if head.padding_mode != "zeros":
            raise ValueError(
                f"{name} heads with padding_mode={head.padding_mode!r} are not supported; use "
                f"padding_mode='zeros' (pad the features yourself for other modes)"
            )
        if head.weight.ndim != 4:
            raise ValueError(f"{name}.weight must be 4-d, found shape {tuple(head.weight.shape)}")

    def _num_weight_columns(self, head: C2) -> int:
        w = head.weight
        return int(head.in_channels * w.shape[2] * w.shape[3])

    def _num_outputs(self, head: C2) -> int:
        return int(head.out_channels)

    def _check_features(self, head: C2, shape: tuple[int, ...]) -> tuple[int, ...]:
        name = type(head).__name__
        if len(shape) != 4:
            raise ValueError(
                f"features for {name} must have shape (n_samples, {head.in_channels}, H, W), "
                f"found {shape} ({len(shape)} dims); unbatched inputs need a batch dimension"
            )
        if shape[1] != head.in_channels:
            raise ValueError(
                f"features has {shape[1]} channels but the {name} head expects "
                f"in_channels={head.in_channels}"
            )
        return shape

    @staticmethod
    def _rows_from_patches(patches: Tensor) -> Tensor:
        """``unfold`` output ``(N, P, L)`` -> rows ``(N * L, P)``."""
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    @staticmethod
    def _target_rows(targets: Tensor) -> Tensor:
        """``(N, t, H, W)`` -> rows ``(N * H * W, t)``, ordered ``(n, oy, ox)``."""
        return targets.permute(0, 2, 3, 1).reshape(-1, targets.shape[1])

    def _with_ones(self, head: C2, Z: Tensor) -> Tensor:
        if self._bias(head) is None:
            return Z
        return torch.cat([Z, Z.new_ones(Z.shape[0], 1)], dim=1)


@dataclass(frozen=True)
class _ConvGeometry:
    pad: tuple[int, int, int, int]  # F.pad order: (left, right, top, bottom)
    stride: tuple[int, int]
    dilation: tuple[int, int]
    kernel: tuple[int, int]


class Conv2dAdapter(_Conv2dBase[nn.Conv2d]):
    r"""``nn.Conv2d``: the rows are the ``im2col`` patches of the features.

    ``Z = unfold(features)`` rearranged to ``(n_samples * L, c_in * kh * kw)`` [| 1] with
    ``L = H_out * W_out`` and columns ordered ``(c_in, ky, kx)``; ``C`` = targets
    ``(n_samples, c_out, H_out, W_out)`` rearranged to ``(n_samples * L, c_out)``;
    ``W = weight.reshape(c_out, -1)`` [| bias]. ``padding="valid"`` and ``padding="same"``
    (extra padding on the bottom/right, as PyTorch does) are supported.
    """

    head_type = nn.Conv2d

    def _geometry(self, head: nn.Conv2d) -> _ConvGeometry:
        kh, kw = int(head.weight.shape[2]), int(head.weight.shape[3])
        stride = _pair(head.stride, "stride", head)
        dilation = _pair(head.dilation, "dilation", head)
        if isinstance(head.padding, str):
            if head.padding == "valid":
                pad = (0, 0, 0, 0)
            elif head.padding == "same":
                th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
                pad = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
            else:
                raise ValueError(
                    f"nn.Conv2d padding={head.padding!r} is not supported; use 'valid', 'same' "
                    f"or integers"
                )
        else:
            ph, pw = _pair(head.padding, "padding", head)
            pad = (pw, pw, ph, ph)
        return _ConvGeometry(pad, stride, dilation, (kh, kw))

    def _output_shape(self, head: nn.Conv2d, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(n_samples, c_out, H_out, W_out)`` by the usual convolution arithmetic."""
        n, _, h, w = self._check_features(head, shape)
        g = self._geometry(head)
        ho = _conv_output_size(h, g.pad[2], g.pad[3], g.kernel[0], g.stride[0], g.dilation[0])
        wo = _conv_output_size(w, g.pad[0], g.pad[1], g.kernel[1], g.stride[1], g.dilation[1])
        if ho < 1 or wo < 1:
            raise ValueError(
                f"features of spatial size {(h, w)} are smaller than the dilated kernel of the "
                f"nn.Conv2d head (output would be {(ho, wo)})"
            )
        return (n, int(head.out_channels), ho, wo)

    def _weight_to_matrix(self, head: nn.Conv2d, weight: Tensor) -> Tensor:
        return weight.reshape(weight.shape[0], -1)

    def _matrix_to_weight(self, head: nn.Conv2d, matrix: Tensor) -> Tensor:
        return matrix.reshape(head.weight.shape)

    def design(self, head: nn.Module, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``Z`` ``(N * L, c_in * kh * kw [+ 1])`` by ``F.unfold``, ``C`` ``(N * L, c_out)``."""
        h, features, targets, _ = self._prepare(head, features, targets)
        g = self._geometry(h)
        patches = F.unfold(
            F.pad(features, g.pad), g.kernel, dilation=g.dilation, stride=g.stride
        )  # (N, c_in * kh * kw, L)
        return self._with_ones(h, self._rows_from_patches(patches)), self._target_rows(targets)

    def statistics(
        self,
        head: nn.Module,
        features: Tensor,
        targets: Tensor,
        dtype: torch.dtype = torch.float64,
        *,
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
        method: str = "auto",
    ) -> GramStats:
        """Gram statistics from shift correlations (or gathered patches), in chunks of samples.

        ``Z^T Z``: with stride ``s``, tap ``(ky, kx)`` reads the polyphase component
        ``(ky d_y mod s_y, kx d_x mod s_x)`` of the padded features at offset
        ``(ky d_y // s_y, kx d_x // s_x)`` with stride 1, so its block with every other tap is
        a window sum of one shift correlation of two components
        (:mod:`slimtrain.linalg.correlation`, ``method="correlation"``), or the product of the
        gathered taps (``method="gather"``). ``Z^T [C | 1]``: per tap one matrix product of its
        window with the targets (:func:`~slimtrain.linalg.correlation.window_cross_blocks`;
        ``torch.nn.grad.conv2d_weight`` computes the same but is slower in float64 on CPU).
        See :class:`HeadAdapter`.
        """
        _check_accumulate_dtype(dtype)
        _check_method(method)
        h, features, targets, (n, t, ho, wo) = self._prepare(head, features, targets)
        g = self._geometry(h)
        (kh, kw), (dh, dw) = g.kernel, g.dilation
        n_cols = self._num_weight_columns(h)
        c_in = int(features.shape[1])
        biased = self._bias(h) is not None
        x = F.pad(features.to(dtype), g.pad)  # (N, c_in, Hp, Wp)
        c_cn = targets.to(dtype).transpose(0, 1)  # (t, N, H_out, W_out)
        ztz, ztc = _new_stats(x, n_cols + biased, t)
        # "auto" keeps the gathered taps for Conv2d: with stride 1 the shifts save ~5x the
        # flops but their per-position products (c x N by N x c) run ~3x slower per flop on
        # CPU than the one large product of the gathered taps (benchmarks/head_statistics.py
        # --conv); the transposed convolution shares its shifts across phases and gains.
        if method == "correlation":
            shift = _conv_shift_plan(
                (int(x.shape[2]), int(x.shape[3])), g.kernel, g.stride, g.dilation, (ho, wo)
            )
            rhs = _targets_with_ones(c_cn, biased, dim=0)  # (t [+ 1], N, H_out, W_out)
            x_cn = x.transpose(0, 1)  # (c_in, N, Hp, Wp)
            per_sample = c_in * int(x.shape[2]) * int(x.shape[3])
            for chunk in _sample_chunks(n, per_sample, max_block_elements):
                maps = [x_cn[:, chunk, ry :: g.stride[0], rx :: g.stride[1]]
                        for ry, rx in shift.components]
                _correlation_statistics(ztz, ztc, maps, [rhs[:, chunk]], shift, kh * kw)
        else:
            starts = [(ky * dh, kx * dw) for ky in range(kh) for kx in range(kw)]
            gram, cross_rows = _chunked_products(
                x.transpose(0, 1), c_cn, starts, g.stride, (ho, wo), max_block_elements
            )
            ztz[:n_cols, :n_cols] = gram
            ztc[:n_cols] = cross_rows[:, :t]
            if biased:
                ztz[:n_cols, -1] = cross_rows[:, t]
        return _finish_conv_stats(ztz, ztc, c_cn, biased, n, n * ho * wo)


_METHODS = ("auto", "correlation", "gather")


def _check_method(method: object) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, found {method!r}")


def _use_correlation(method: str, product_elements: int, max_elements: int) -> bool:
    """Whether to form ``Z^T Z`` from shift correlations (see the ``method`` option)."""
    if method == "auto":
        return product_elements <= max_elements
    return method == "correlation"


def _targets_with_ones(targets: Tensor, biased: bool, dim: int) -> Tensor:
    """Append a channel of ones along ``dim`` (the channels) when ``biased``."""
    if not biased:
        return targets
    shape = list(targets.shape)
    shape[dim] = 1
    return torch.cat([targets, targets.new_ones(shape)], dim)


@dataclass(frozen=True)
class _ShiftPlan:
    """Taps of a convolution as windows of feature maps (the correlation path's plan)."""

    components: tuple[tuple[int, int], ...]  # per map: polyphase component (ry, rx) (Conv2d)
    windows: tuple[Window, ...]  # per tap
    taps: tuple[int, ...]  # per tap: its column (ky' * kw + kx') in W's layout
    target_of: tuple[int, ...]  # per tap: index of its target map (the phase)
    plan: WindowPlan  # the requested tap-pair blocks
    columns: tuple[tuple[int, int], ...]  # per block: the columns of its two taps


def _correlation_statistics(
    ztz: Tensor,
    ztc: Tensor,
    maps: Sequence[Tensor],
    targets: Sequence[Tensor],
    shift: _ShiftPlan,
    kk: int,
) -> None:
    """Add the shift-correlation statistics of a chunk of samples to ``Z^T Z`` and ``Z^T C``.

    ``maps`` ``(c, N, H, W)`` and ``targets`` ``(t [+ 1], N, J_y, J_x)`` (the last channel ones
    when the head has a bias): the weight block and ones column of ``ztz``, the weight rows of
    ``ztc``.
    """
    c = int(maps[0].shape[0])
    t = int(ztc.shape[1])
    _scatter_blocks(ztz, window_gram_blocks(maps, shift.plan), shift.columns, kk, c)
    cross = window_cross_blocks(maps, targets, shift.windows, shift.target_of)  # (taps, c, j)
    rows = (torch.tensor(shift.taps, device=ztz.device)[:, None]
            + kk * torch.arange(c, device=ztz.device)[None, :])  # (taps, c)
    ztc.index_put_((rows,), cross[..., :t], accumulate=True)
    if cross.shape[2] > t:
        last = torch.full_like(rows, ztz.shape[1] - 1)
        ztz.index_put_((rows, last), cross[..., t], accumulate=True)


@functools.lru_cache(maxsize=128)
def _conv_shift_plan(
    padded: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
) -> _ShiftPlan:
    """Conv2d taps as stride-1 windows of the polyphase components of the padded input."""
    size = (-(-padded[0] // stride[0]), -(-padded[1] // stride[1]))  # component (0, 0)
    components: list[tuple[int, int]] = []
    windows: list[Window] = []
    for ky, kx in itertools.product(range(kernel[0]), range(kernel[1])):
        by, ry = divmod(ky * dilation[0], stride[0])
        bx, rx = divmod(kx * dilation[1], stride[1])
        if (ry, rx) not in components:
            components.append((ry, rx))
        windows.append((components.index((ry, rx)), by, bx, *out_size))
    taps = tuple(range(len(windows)))
    pairs = tuple(itertools.product(taps, taps))
    blocks = plan_window_grams(tuple(windows), pairs, size)
    return _ShiftPlan(tuple(components), tuple(windows), taps, (0,) * len(taps), blocks, pairs)


def _scatter_blocks(
    ztz: Tensor, blocks: Tensor, columns: Sequence[tuple[int, int]], kk: int, c: int
) -> None:
    """Add block ``k`` ``(c, c)`` of tap columns ``(a, b)`` to ``ztz[c * kk + a, d * kk + b]``."""
    cols = torch.tensor(columns, device=ztz.device)  # (blocks, 2)
    channel = torch.arange(c, device=ztz.device) * kk
    rows = cols[:, 0, None, None] + channel[None, :, None]
    index = torch.broadcast_tensors(rows, cols[:, 1, None, None] + channel[None, None, :])
    ztz.index_put_(index, blocks, accumulate=True)


def _new_stats(like: Tensor, p: int, t: int) -> tuple[Tensor, Tensor]:
    """Zero ``Z^T Z`` ``(p, p)`` and ``Z^T C`` ``(p, t)`` with the dtype/device of ``like``."""
    return like.new_zeros(p, p), like.new_zeros(p, t)


def _tap_products(U: Tensor, c_block: Tensor) -> tuple[Tensor, Tensor]:
    """``U U^T`` ``(m, m)`` and ``U [C | 1]`` ``(m, t + 1)`` for gathered taps ``U``.

    ``U`` is ``(m, rows)`` with rows ordered ``(n, i, j)``, ``c_block`` the targets of these
    rows as ``(t, n, Jy, Jx)``; the last column of the second product is ``U``'s row sums
    (the cross products with the ones column).
    """
    t = c_block.shape[0]
    rhs = U.new_empty(t + 1, U.shape[1])
    rhs[:t].view(c_block.shape).copy_(c_block)
    rhs[t] = 1
    return U @ U.T, U @ rhs.T


def _chunked_products(
    x_cn: Tensor,
    c_block: Tensor,
    starts: Sequence[tuple[int, int]],
    step: tuple[int, int],
    size: tuple[int, int],
    max_elements: int,
) -> tuple[Tensor, Tensor]:
    """:func:`_tap_products` of the taps ``starts`` over all samples, in chunks of samples.

    ``x_cn`` is the padded input ``(c, N, Hp, Wp)``, ``c_block`` the matching targets
    ``(t, N, Jy, Jx)``; returns ``(m, m)`` and ``(m, t + 1)`` with ``m = c * len(starts)``.
    """
    n = x_cn.shape[1]
    per_sample = x_cn.shape[0] * len(starts) * size[0] * size[1]
    gram = cross = None
    for chunk in _sample_chunks(n, per_sample, max_elements):
        U = _gather_taps(x_cn[:, chunk], starts, step, size)  # (m, rows of the chunk)
        g, c = _tap_products(U, c_block[:, chunk])
        if gram is None or cross is None:
            gram, cross = g, c
        else:
            gram += g
            cross += c
    if gram is None or cross is None:  # pragma: no cover - n >= 1 is checked at the boundary
        raise ValueError("no samples to gather")
    return gram, cross


def _finish_conv_stats(
    ztz: Tensor, ztc: Tensor, c_cn: Tensor, biased: bool, n_samples: int, n_rows: int
) -> GramStats:
    """Complete the ones row/column (if ``ztz`` has one) and add ``||C||^2``.

    On entry the weight block of ``ztz``, ``ztc`` and the last column ``ztz[:-1, -1]`` (the
    column sums of the weight columns, if biased) are filled; ``c_cn`` is ``(t, N, H, W)``.
    """
    if biased:
        ztz[-1, :-1] = ztz[:-1, -1]
        ztz[-1, -1] = float(n_rows)
        ztc[-1] = c_cn.sum((1, 2, 3))
    return GramStats(ztz, ztc, (c_cn * c_cn).sum(), n_samples, n_rows)


@dataclass(frozen=True)
class _Phase:
    """One output phase ``(ry, rx)`` of a transposed convolution (fast path plan)."""

    phase: tuple[int, int]  # (ry, rx): first output row / column of the phase
    size: tuple[int, int]  # (Jy, Jx): output positions of the phase per axis
    starts: tuple[tuple[int, int], ...]  # per tap: window start in the padded input
    columns: tuple[int, ...]  # per tap: ky' * kw + kx' in W's (flipped) layout


@dataclass(frozen=True)
class _TransposePlan:
    pad: tuple[int, int, int, int]  # F.pad of the un-dilated input: (left, right, top, bottom)
    stride: tuple[int, int]
    phases: tuple[_Phase, ...]


def _axis_phases(
    n_in: int, n_out: int, kernel: int, stride: int, padding: int, dilation: int
) -> tuple[list[tuple[int, int, list[tuple[int, int]]]], int, int]:
    """Phases of one axis: ``[(r, J, [(k, offset), ...])]`` and the padding the windows need.

    Output ``u = r + s m`` (``m < J``) reads input ``m + offset`` through tap ``k`` when
    ``(r + q - d k) mod s = 0``, with ``offset = (r + q - d k) / s``.
    """
    phases = []
    lo = hi = 0
    for r in range(min(stride, n_out)):
        n_pos = len(range(r, n_out, stride))
        taps = [
            (k, (r + padding - dilation * k) // stride)
            for k in range(kernel)
            if (r + padding - dilation * k) % stride == 0
        ]
        for _, offset in taps:
            lo = max(lo, -offset)
            hi = max(hi, offset + n_pos - n_in)
        phases.append((r, n_pos, taps))
    return phases, lo, hi


@functools.lru_cache(maxsize=128)
def _transpose_plan(
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> _TransposePlan:
    """Phase plan of a transposed convolution; pure in its (hashable) geometry."""
    ys, top, bottom = _axis_phases(
        in_size[0], out_size[0], kernel[0], stride[0], padding[0], dilation[0]
    )
    xs, left, right = _axis_phases(
        in_size[1], out_size[1], kernel[1], stride[1], padding[1], dilation[1]
    )
    kh, kw = kernel
    phases = []
    for (ry, jy, taps_y), (rx, jx, taps_x) in itertools.product(ys, xs):
        if not taps_y or not taps_x:
            continue  # rows of this phase see no weight (only the bias)
        starts, columns = [], []
        for (ky, oy), (kx, ox) in itertools.product(taps_y, taps_x):
            starts.append((oy + top, ox + left))
            columns.append((kh - 1 - ky) * kw + (kw - 1 - kx))
        phases.append(_Phase((ry, rx), (jy, jx), tuple(starts), tuple(columns)))
    return _TransposePlan((left, right, top, bottom), stride, tuple(phases))


class ConvTranspose2dAdapter(_Conv2dBase[nn.ConvTranspose2d]):
    r"""``nn.ConvTranspose2d``: rows of the equivalent convolution of the zero-inserted input.

    With weight ``w`` ``(c_in, c_out, kh, kw)``, ``W = w.flip(2, 3).transpose(0, 1)
    .reshape(c_out, -1)`` [| bias]: column ``c * kh * kw + a * kw + a'`` holds
    ``w[c, :, kh - 1 - a, kw - 1 - a']``. ``Z`` ``(n_samples * H_out * W_out, p)`` is the
    ``unfold`` (dilation ``d``) of the stride-dilated features padded by ``d (k - 1) - q``
    before and ``d (k - 1) - q + output_padding`` after, per axis; see the module docstring for
    the mapping and the phase decomposition that :meth:`statistics` uses.
    """

    head_type = nn.ConvTranspose2d

    def _check_config(self, head: nn.ConvTranspose2d) -> None:
        """Raise unless ``head`` is a supported ``nn.ConvTranspose2d``."""
        super()._check_config(head)
        stride = _pair(head.stride, "stride", head)
        dilation = _pair(head.dilation, "dilation", head)
        output_padding = _pair(head.output_padding, "output_padding", head)
        _pair(head.padding, "padding", head)
        for s, d, o in zip(stride, dilation, output_padding, strict=True):
            if not 0 <= o < max(s, d):
                raise ValueError(
                    f"nn.ConvTranspose2d output_padding={head.output_padding} must be smaller "
                    f"than stride or dilation (stride={head.stride}, dilation={head.dilation})"
                )

    def _params(self, head: nn.ConvTranspose2d) -> tuple[tuple[int, int], ...]:
        return (
            (int(head.weight.shape[2]), int(head.weight.shape[3])),
            _pair(head.stride, "stride", head),
            _pair(head.padding, "padding", head),
            _pair(head.dilation, "dilation", head),
            _pair(head.output_padding, "output_padding", head),
        )

    def _output_shape(self, head: nn.ConvTranspose2d, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(n_samples, c_out, H_out, W_out)``, ``H_out = (H-1) s - 2 q + d (k-1) + o + 1``.

        ``output_size`` given to ``forward`` is not supported: the head's own
        ``output_padding`` fixes the size.
        """
        n, _, h, w = self._check_features(head, shape)
        kernel, stride, padding, dilation, out_pad = self._params(head)
        out = tuple(
            (size - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1)
            + out_pad[i] + 1
            for i, size in enumerate((h, w))
        )
        if out[0] < 1 or out[1] < 1:
            raise ValueError(
                f"features of spatial size {(h, w)} give an empty output {out} for the "
                f"nn.ConvTranspose2d head (padding {padding} is too large)"
            )
        return (n, int(head.out_channels), out[0], out[1])

    def _weight_to_matrix(self, head: nn.ConvTranspose2d, weight: Tensor) -> Tensor:
        return weight.flip(2, 3).transpose(0, 1).reshape(weight.shape[1], -1)

    def _matrix_to_weight(self, head: nn.ConvTranspose2d, matrix: Tensor) -> Tensor:
        c_in, c_out, kh, kw = head.weight.shape
        return matrix.reshape(c_out, c_in, kh, kw).transpose(0, 1).flip(2, 3)

    def design(self, head: nn.Module, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Explicit rows from the zero-inserted features (reference path; ``s^2`` times larger
        than needed, see :meth:`statistics`)."""
        hd, features, targets, _ = self._prepare(head, features, targets)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = self._params(hd)
        n, c, h, w = features.shape
        dilated = features.new_zeros(n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
        dilated[:, :, ::sh, ::sw] = features
        top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
        padded = F.pad(dilated, (left, left + ow, top, top + oh))  # negative entries crop
        patches = F.unfold(padded, (kh, kw), dilation=(dh, dw))  # (N, c_in * kh * kw, L)
        return self._with_ones(hd, self._rows_from_patches(patches)), self._target_rows(targets)

    def statistics(
        self,
        head: nn.Module,
        features: Tensor,
        targets: Tensor,
        dtype: torch.dtype = torch.float64,
        *,
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
        method: str = "auto",
    ) -> GramStats:
        """Gram statistics by the phase decomposition (module docstring).

        ``Z^T Z``: the taps of output phase ``(ry, rx)`` read stride-1 windows of the
        un-dilated, padded features, so the phase's block is formed from shift correlations of
        the features (:mod:`slimtrain.linalg.correlation`; the shifts are shared by all phases,
        ``method="correlation"``) or from the gathered taps ``U U^T`` (``method="gather"``).
        Blocks of different phases do not overlap; nothing is summed across phases except the
        ones column. ``Z^T [C | 1]``: the transposed convolution is the adjoint of the
        convolution ``conv2d(., w, stride, padding, dilation)``, so the cross products are the
        native weight gradient ``torch.nn.grad.conv2d_weight`` with ``[C | 1]`` as the input
        and the features (zero-extended to that convolution's output size) as the output
        gradient, rearranged to ``W``'s flipped layout. It unfolds the targets, which have few
        channels, on the input grid: one pass over the features.
        """
        _check_accumulate_dtype(dtype)
        _check_method(method)
        hd, features, targets, (n, t, ho, wo) = self._prepare(head, features, targets)
        kernel, stride, padding, dilation, _ = self._params(hd)
        c_in, h, w = int(features.shape[1]), int(features.shape[2]), int(features.shape[3])
        plan = _transpose_plan((h, w), (ho, wo), kernel, stride, padding, dilation)
        x = features.to(dtype)
        c_cn = targets.to(dtype).transpose(0, 1)  # (t, N, H_out, W_out)
        kk = kernel[0] * kernel[1]
        n_cols = c_in * kk
        biased = self._bias(hd) is not None
        ztz, ztc = _new_stats(x, n_cols + biased, t)
        shift = _transpose_shift_plan(plan, (h, w))
        if _use_correlation(method, shift.plan.largest_span * c_in * c_in, max_block_elements):
            rhs = _targets_with_ones(targets.to(dtype), biased, dim=1)  # (N, t [+ 1], Ho, Wo)
            # the convolution adjoint to the head maps H_out to >= H_in; zero-extend x to it
            conv_out = [
                (size + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                for i, size in enumerate((ho, wo))
            ]
            x_ext = F.pad(x, (0, conv_out[1] - w, 0, conv_out[0] - h))
            x_cn = x.transpose(0, 1)  # (c_in, N, H, W)
            per_sample = max(rhs.shape[1] * kk * conv_out[0] * conv_out[1],
                             c_in * shift.plan.size[0] * shift.plan.size[1])
            for chunk in _sample_chunks(n, per_sample, max_block_elements):
                maps = [F.pad(x_cn[:, chunk], plan.pad)]  # (c_in, n, Hp, Wp)
                blocks = window_gram_blocks(maps, shift.plan)
                _scatter_blocks(ztz, blocks, shift.columns, kk, c_in)
                cross = conv2d_weight(
                    rhs[chunk], (c_in, rhs.shape[1], *kernel), x_ext[chunk], stride, padding,
                    dilation,
                )  # (c_in, t [+ 1], kh, kw) in the head's weight layout
                rows = cross.flip(2, 3).transpose(0, 1).reshape(cross.shape[1], -1).T
                ztc[:n_cols] += rows[:, :t]
                if biased:
                    ztz[:n_cols, -1] += rows[:, t]
        else:
            x_cn = F.pad(x.transpose(0, 1), plan.pad)  # (c_in, N, Hp, Wp)
            channel_offsets = torch.arange(0, n_cols, kk, device=x_cn.device)
            for phase in plan.phases:
                (ry, rx), (jy, jx) = phase.phase, phase.size
                taps = torch.tensor(phase.columns, device=x_cn.device)
                idx = (channel_offsets[:, None] + taps[None, :]).reshape(-1)  # (c_in * taps,)
                c_phase = c_cn[:, :, ry :: stride[0], rx :: stride[1]]  # (t, N, Jy, Jx)
                gram, cross = _chunked_products(
                    x_cn, c_phase, phase.starts, (1, 1), (jy, jx), max_block_elements
                )
                ztz[idx[:, None], idx[None, :]] = gram
                ztc[idx] = cross[:, :t]
                if biased:
                    ztz[idx, -1] = cross[:, t]
        stats = _finish_conv_stats(ztz, ztc, c_cn, biased, n, n * ho * wo)
        return stats._replace(structure=_transpose_structure(plan, c_in, kk, biased))


@functools.lru_cache(maxsize=128)
def _transpose_shift_plan(plan: _TransposePlan, in_size: tuple[int, int]) -> _ShiftPlan:
    """The taps of every phase as windows of the padded input; blocks within phases only."""
    left, right, top, bottom = plan.pad
    size = (in_size[0] + top + bottom, in_size[1] + left + right)
    windows: list[Window] = []
    target_of: list[int] = []
    columns: list[tuple[int, int]] = []
    pairs: list[tuple[int, int]] = []
    for index, phase in enumerate(plan.phases):
        first = len(windows)
        windows.extend((0, ay, ax, *phase.size) for ay, ax in phase.starts)
        target_of.extend([index] * len(phase.starts))
        taps = range(first, len(windows))
        pairs.extend(itertools.product(taps, taps))
        columns.extend(itertools.product(phase.columns, phase.columns))
    blocks = plan_window_grams(tuple(windows), tuple(pairs), size)
    taps_columns = tuple(col for phase in plan.phases for col in phase.columns)
    return _ShiftPlan(
        ((0, 0),), tuple(windows), taps_columns, tuple(target_of), blocks, tuple(columns)
    )


@functools.lru_cache(maxsize=128)
def _transpose_structure(
    plan: _TransposePlan, c_in: int, kk: int, biased: bool
) -> GramStructure | None:
    """The block structure of a transposed convolution's Gram: one group per output phase.

    A row of phase ``(ry, rx)`` touches only that phase's taps (of every input channel), so
    ``Z^T Z`` is zero between phases except in the ones column. Taps that reach no output
    form one more (all-zero) group. ``None`` when there are fewer than two groups (stride 1).
    """
    groups = []
    seen: set[int] = set()
    for phase in plan.phases:
        cols = tuple(sorted(c * kk + col for c in range(c_in) for col in phase.columns))
        groups.append(cols)
        seen.update(cols)
    rest = tuple(j for j in range(c_in * kk) if j not in seen)
    if rest:
        groups.append(rest)
    return GramStructure(tuple(groups), biased) if len(groups) >= 2 else None


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------

_ADAPTERS: tuple[HeadAdapter[Any], ...] = (
    LinearAdapter(),
    Conv2dAdapter(),
    ConvTranspose2dAdapter(),
)

_OTHER_DIMENSIONS = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose3d)


def head_adapter(head: nn.Module) -> HeadAdapter[Any]:
    """The adapter for ``head``, after checking that its configuration is supported.

    Parameters
    ----------
    head : nn.Module
        ``nn.Linear``, ``nn.Conv2d`` or ``nn.ConvTranspose2d`` with ``groups=1`` and
        ``padding_mode="zeros"``.

    Returns
    -------
    HeadAdapter
        A stateless adapter; pass the head to its methods.

    Raises
    ------
    TypeError
        If ``head`` is not one of the supported types (its type and the supported ones are
        named).
    ValueError
        If the configuration is unsupported (``groups != 1``, another ``padding_mode``,
        uninitialised lazy parameters).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> head = nn.Linear(3, 2)
    >>> adapter = head_adapter(head)
    >>> x, y = torch.randn(5, 3), torch.randn(5, 2)
    >>> Z, C = adapter.design(head, x, y)
    >>> Z.shape, adapter.get_weight(head).shape
    (torch.Size([5, 4]), torch.Size([2, 4]))
    >>> torch.allclose(Z @ adapter.get_weight(head).T, head(x))
    True
    """
    for adapter in _ADAPTERS:
        if isinstance(head, adapter.head_type):
            adapter.check_head(head)
            return adapter
    supported = ", ".join(SUPPORTED_HEADS)
    if isinstance(head, _OTHER_DIMENSIONS):
        raise TypeError(
            f"{type(head).__name__} heads are not supported: only 2-d convolutions are "
            f"({supported}); reshape the features to 2-d images or use nn.Linear"
        )
    if isinstance(head, nn.Module):
        raise TypeError(
            f"unsupported head {type(head).__name__}; the head must be one of {supported} "
            f"(the last layer alone, not a container such as nn.Sequential)"
        )
    raise TypeError(f"head must be an nn.Module ({supported}), found {type(head).__name__}")
