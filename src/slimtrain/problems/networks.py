r"""The networks of the experiments, as ``(features, head)`` pairs.

Each builder returns a feature extractor ``F`` (an ``nn.Module``) and the final linear layer
(``nn.Linear`` or ``nn.ConvTranspose2d``) that slimTik solves for; wrap them in
``slimtrain.SeparableModel(features, head)``. Initialisation is deterministic: parameters are
drawn from a ``torch.Generator`` seeded by ``seed`` (or the generator passed in) with PyTorch's
default distributions (``kaiming_uniform_(a=sqrt(5))`` for weights, ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))`` for biases). The modules are built on the ``meta`` device first, so building
a network never touches (or advances) torch's global random state.

- :func:`cdr_network` and :func:`peaks_network`: residual networks (the forward Euler
  discretisation of an ODE, as in the slimTrain paper),

  .. math::

      x_0 = K_0 y + b_0, \qquad x_{l+1} = x_l + h \tanh(K_l x_l + b_l), \quad l < \text{depth},

  with features :math:`F(y) = x_{\text{depth}}` and a linear head.
- :func:`autoencoder_network`: the convolutional MNIST autoencoder whose last layer is
  ``ConvTranspose2d(16, 1, 4, stride=2, padding=1)``.
- :func:`mlp_classifier_network` and :func:`cnn_classifier_network`: classifiers (logits, one
  per class) for ``loss="cross_entropy"``, on digits and MNIST.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from slimtrain._validation import check_int

__all__ = [
    "ResidualBlock",
    "autoencoder_network",
    "cdr_network",
    "cnn_classifier_network",
    "init_parameters",
    "mlp_classifier_network",
    "peaks_network",
    "residual_features",
]

logger = logging.getLogger(__name__)

Seed = int | torch.Generator


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    return check_int(name, value, minimum=minimum)


def _quarter_size(image_size: object, halvings: str) -> int:
    """``image_size // 4`` for an image side that ``halvings`` (two halvings) divide exactly."""
    size = _positive_int("image_size", image_size, minimum=4)
    if size % 4:
        raise ValueError(f"image_size must be a multiple of 4 ({halvings}), found {size}")
    return size // 4


def _generator(seed: Seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int or a torch.Generator, found {type(seed).__name__}")
    return torch.Generator().manual_seed(check_int("seed", seed))


def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """(Re)initialise every layer of ``module`` in place from ``generator``, deterministically.

    Linear and (transposed) convolution layers get PyTorch's default initialisation, with
    random numbers from ``generator`` instead of the global generator; normalisation layers are
    reset (weight 1, bias 0, fresh running statistics). Layers are visited in
    ``module.modules()`` order. Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose1d
                      | nn.ConvTranspose2d | nn.ConvTranspose3d):
            with torch.no_grad():
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            m.reset_parameters()
        elif hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
            raise TypeError(f"init_parameters does not know how to initialise {type(m).__name__}")
    return module


def _materialise(module: nn.Module, generator: torch.Generator) -> None:
    """Allocate a module built on the meta device on the CPU (in place) and initialise it."""
    module.to_empty(device="cpu")
    init_parameters(module, generator)


class ResidualBlock(nn.Module):
    r"""One residual layer ``x + h * tanh(linear(x))`` of width ``width``.

    Parameters
    ----------
    width : int
        Number of features in and out.
    step_size : float
        The step ``h``.
    """

    def __init__(self, width: int, step_size: float) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.step_size = float(step_size)

    def forward(self, x: Tensor) -> Tensor:
        """``x + h * tanh(linear(x))``, shape ``(N, width)`` -> ``(N, width)``."""
        return x + self.step_size * torch.tanh(self.linear(x))

    def extra_repr(self) -> str:
        return f"step_size={self.step_size}"


def residual_features(
    in_features: int, width: int, depth: int, step_size: float = 0.5
) -> nn.Sequential:
    """The residual feature extractor: an opening ``Linear(in_features, width)`` and ``depth``
    :class:`ResidualBlock` s. Built with torch's default initialisation (use the network
    builders for seeded initialisation)."""
    in_features = _positive_int("in_features", in_features)
    width = _positive_int("width", width)
    depth = _positive_int("depth", depth, minimum=0)
    if not (isinstance(step_size, int | float) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0, found {step_size!r}")
    return nn.Sequential(
        nn.Linear(in_features, width), *(ResidualBlock(width, step_size) for _ in range(depth))
    )


def _residual_network(
    in_features: int, out_features: int, width: int, depth: int, step_size: float, seed: Seed
) -> tuple[nn.Sequential, nn.Linear]:
    out_features = _positive_int("out_features", out_features)
    gen = _generator(seed)
    with torch.device("meta"):
        features = residual_features(in_features, width, depth, step_size)
        head = nn.Linear(width, out_features)
    _materialise(features, gen)
    _materialise(head, gen)
    return features, head


def cdr_network(
    in_features: int = 55,
    out_features: int = 72,
    width: int = 16,
    depth: int = 4,
    step_size: float = 0.5,
    seed: Seed = 0,
) -> tuple[nn.Sequential, nn.Linear]:
    """The CDR surrogate network: residual features ``55 -> 16`` and a linear head ``16 -> 72``.

    Parameters
    ----------
    in_features, out_features : int
        Parameter and observation dimensions (55 and 72 for the CDR data).
    width : int
        Width of the residual layers (the head has ``width + 1`` unknowns per output).
    depth : int
        Number of residual blocks (0: only the opening layer).
    step_size : float
        Step ``h`` of the residual blocks (``depth * h`` is the "final time").
    seed : int or torch.Generator
        Source of the initial weights.

    Returns
    -------
    features : torch.nn.Sequential
        ``(N, in_features) -> (N, width)``.
    head : torch.nn.Linear
        ``Linear(width, out_features)``.

    Examples
    --------
    >>> features, head = cdr_network()
    >>> head(features(torch.zeros(5, 55))).shape
    torch.Size([5, 72])
    """
    return _residual_network(in_features, out_features, width, depth, step_size, seed)


def peaks_network(
    in_features: int = 2,
    out_features: int = 1,
    width: int = 8,
    depth: int = 8,
    step_size: float = 0.5,
    seed: Seed = 0,
) -> tuple[nn.Sequential, nn.Linear]:
    """The peaks network: residual features ``2 -> 8`` (8 blocks, ``h = 0.5``, as in the
    slimTrain paper) and a linear head ``8 -> 1``. Parameters as in :func:`cdr_network`.

    Examples
    --------
    >>> features, head = peaks_network()
    >>> head(features(torch.zeros(3, 2))).shape
    torch.Size([3, 1])
    """
    return _residual_network(in_features, out_features, width, depth, step_size, seed)


def autoencoder_network(
    latent: int = 50, width: int = 16, image_size: int = 28, seed: Seed = 0
) -> tuple[nn.Sequential, nn.ConvTranspose2d]:
    """The convolutional autoencoder; its final layer is the separable head.

    With ``c = width`` and ``s = image_size``::

        encoder  Conv2d(1, c, 4, 2, 1) ReLU         (1, s, s)     -> (c, s/2, s/2)
                 Conv2d(c, 2c, 4, 2, 1) ReLU        -> (2c, s/4, s/4)
                 Flatten, Linear(2c (s/4)^2, latent)
        decoder  Linear(latent, 2c (s/4)^2), Unflatten, BatchNorm2d(2c)
                 ConvTranspose2d(2c, c, 4, 2, 1) ReLU BatchNorm2d(c)   -> (c, s/2, s/2)
        head     ConvTranspose2d(c, 1, 4, 2, 1)                         -> (1, s, s)

    ``width=16, image_size=28`` is the SPEC's network (16 and 32 channels, head
    ``ConvTranspose2d(16, 1, 4, stride=2, padding=1)`` with ``16 * 4 * 4 + 1 = 257`` unknowns);
    ``width=64`` scales the channels to 64 / 128. ``image_size=8`` is the adapted network for
    scikit-learn's 8x8 digits (spatial sizes 8 -> 4 -> 2 -> 4 -> 8).

    Parameters
    ----------
    latent : int
        Size of the code.
    width : int
        Channels of the first convolution (the second has ``2 * width``).
    image_size : int
        Height = width of the (single-channel) images, a multiple of 4.
    seed : int or torch.Generator
        Source of the initial weights.

    Returns
    -------
    features : torch.nn.Sequential
        ``(N, 1, s, s) -> (N, width, s/2, s/2)``.
    head : torch.nn.ConvTranspose2d
        ``ConvTranspose2d(width, 1, 4, stride=2, padding=1)``, ``-> (N, 1, s, s)``.

    Examples
    --------
    >>> features, head = autoencoder_network()
    >>> head(features(torch.zeros(2, 1, 28, 28))).shape
    torch.Size([2, 1, 28, 28])
    """
    latent = _positive_int("latent", latent)
    width = _positive_int("width", width)
    q = _quarter_size(image_size, "two stride-2 convolutions")
    gen = _generator(seed)
    c1, c2 = width, 2 * width
    with torch.device("meta"):
        features = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * q * q, latent),
            nn.Linear(latent, c2 * q * q),
            nn.Unflatten(1, (c2, q, q)),
            nn.BatchNorm2d(c2),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(c1),
        )
        head = nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1)
    _materialise(features, gen)
    _materialise(head, gen)
    return features, head


def mlp_classifier_network(
    in_features: int = 64, n_classes: int = 10, width: int = 64, depth: int = 2, seed: Seed = 0
) -> tuple[nn.Sequential, nn.Linear]:
    """A tanh multilayer perceptron and a linear head with one output (logit) per class.

    ``depth`` layers ``Linear, Tanh`` (``in_features -> width -> ... -> width``) and the head
    ``Linear(width, n_classes)``. The defaults are the digits classifier of issue 13 (64 pixels
    of scikit-learn's 8x8 digits, ``64 -> 64 -> 64`` tanh, 10 classes).

    Examples
    --------
    >>> features, head = mlp_classifier_network()
    >>> head(features(torch.zeros(3, 64))).shape
    torch.Size([3, 10])
    """
    in_features = _positive_int("in_features", in_features)
    n_classes = _positive_int("n_classes", n_classes)
    width = _positive_int("width", width)
    depth = _positive_int("depth", depth)
    gen = _generator(seed)
    with torch.device("meta"):
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.Tanh()]
        features = nn.Sequential(*layers)
        head = nn.Linear(width, n_classes)
    _materialise(features, gen)
    _materialise(head, gen)
    return features, head


def cnn_classifier_network(
    n_classes: int = 10, width: int = 16, hidden: int = 64, image_size: int = 28, seed: Seed = 0
) -> tuple[nn.Sequential, nn.Linear]:
    """A small CNN feature extractor for single-channel images and a linear classifier head.

    With ``c = width`` and ``s = image_size`` (a multiple of 4)::

        Conv2d(1, c, 3, padding=1) ReLU MaxPool2d(2)      (1, s, s)    -> (c, s/2, s/2)
        Conv2d(c, 2c, 3, padding=1) ReLU MaxPool2d(2)     -> (2c, s/4, s/4)
        Flatten, Linear(2c (s/4)^2, hidden) ReLU          -> (hidden,)
        head Linear(hidden, n_classes)                    -> logits

    The head has ``hidden + 1`` unknowns per class, so slimTik's solve is ``O(hidden^3)``.

    Examples
    --------
    >>> features, head = cnn_classifier_network()
    >>> head(features(torch.zeros(2, 1, 28, 28))).shape
    torch.Size([2, 10])
    """
    n_classes = _positive_int("n_classes", n_classes)
    width = _positive_int("width", width)
    hidden = _positive_int("hidden", hidden)
    q = _quarter_size(image_size, "two 2x2 poolings")
    gen = _generator(seed)
    with torch.device("meta"):
        features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * q * q, hidden),
            nn.ReLU(),
        )
        head = nn.Linear(hidden, n_classes)
    _materialise(features, gen)
    _materialise(head, gen)
    return features, head
