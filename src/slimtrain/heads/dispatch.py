"""From a head module to its adapter: :func:`head_adapter`."""

from __future__ import annotations

from typing import Any

from torch import nn

from slimtrain.heads.base import SUPPORTED_HEADS, HeadAdapter
from slimtrain.heads.conv import Conv2dAdapter
from slimtrain.heads.linear import LinearAdapter
from slimtrain.heads.transpose import ConvTranspose2dAdapter

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
