"""The head adapter interface, the checks every head shares and the package's constants."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Generic, TypeVar, cast

import torch
from torch import Tensor, nn

from slimtrain._validation import check_finite, check_same_device, check_tensor
from slimtrain.linalg.stats import GramStats

SUPPORTED_HEADS: tuple[str, ...] = ("nn.Linear", "nn.Conv2d", "nn.ConvTranspose2d")
"""Names of the supported head types, as they appear in error messages."""

#: Largest number of elements of one block of gathered patches in :meth:`HeadAdapter.statistics`
#: (16 Mi elements, 128 MiB in float64); larger batches are processed in chunks of samples.
DEFAULT_MAX_BLOCK_ELEMENTS = 2**24


def check_accumulate_dtype(dtype: torch.dtype) -> None:
    """Raise ``TypeError`` unless ``dtype`` (the accumulation dtype) is a floating dtype."""
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


def _is_lazy(param: Tensor | None) -> bool:
    return param is not None and nn.parameter.is_lazy(param)


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
