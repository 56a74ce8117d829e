"""The separable model ``f(x) = head(features(x))`` as an ordinary ``nn.Module``."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from slimtrain.heads import head_adapter

__all__ = ["SeparableModel"]


class SeparableModel(nn.Module):
    r"""A feature extractor followed by a linear final layer.

    .. math::

        f(x; \theta, W) = W \begin{bmatrix} F(x; \theta) \\ 1 \end{bmatrix}

    ``forward`` is the plain composition and has no side effects; targets are never passed to
    it. The head's parameters are set to ``requires_grad=False``: slimTrain solves for them and
    no gradient optimizer should see them (:class:`~slimtrain.GradientTrainer`, the baseline,
    turns them back on). They stay ordinary Parameters, so ``state_dict``, ``.to()`` and DDP work
    unchanged.

    Parameters
    ----------
    features : nn.Module
        ``F(x; theta)``: maps a batch ``(n_samples, ...)`` to the head's input.
    head : nn.Module
        ``nn.Linear``, ``nn.Conv2d`` or ``nn.ConvTranspose2d`` (``groups=1``).

    Examples
    --------
    >>> from torch import nn
    >>> model = SeparableModel(nn.Sequential(nn.Linear(3, 8), nn.Tanh()), nn.Linear(8, 2))
    >>> [p.requires_grad for p in model.head.parameters()]
    [False, False]
    """

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        if not isinstance(features, nn.Module):
            raise TypeError(f"features must be an nn.Module, found {type(features).__name__}")
        head_adapter(head)  # raises for unsupported heads, naming the supported ones
        self.features = features
        self.head = head
        for parameter in self.head.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """Prediction ``head(features(x))``."""
        return self.head(self.features(x))

    def feature_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters ``theta`` of the feature extractor (what the optimizer should get)."""
        return self.features.parameters()
