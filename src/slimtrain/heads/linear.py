"""``nn.Linear`` heads: ``Z = [features | 1]``, ``C = targets``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimtrain.heads.base import DEFAULT_MAX_BLOCK_ELEMENTS, HeadAdapter, check_accumulate_dtype
from slimtrain.linalg.stats import GramStats


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
        check_accumulate_dtype(dtype)
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
