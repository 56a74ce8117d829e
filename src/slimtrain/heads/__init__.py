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

Modules
-------
- :mod:`~slimtrain.heads.base`: the :class:`HeadAdapter` interface, the checks every head
  shares, :data:`SUPPORTED_HEADS` and the default block size of :meth:`HeadAdapter.statistics`,
- :mod:`~slimtrain.heads.linear`: :class:`LinearAdapter`,
- :mod:`~slimtrain.heads.conv`: :class:`Conv2dAdapter` and the checks both convolutions share,
- :mod:`~slimtrain.heads.transpose`: :class:`ConvTranspose2dAdapter`, with the mapping of the
  transposed convolution to a convolution and its phase decomposition,
- :mod:`~slimtrain.heads.conv_statistics`: pieces of the Gram statistics shared by the two
  convolutions (gathered-tap products, chunks of samples, the shift plan),
- :mod:`~slimtrain.heads.dispatch`: :func:`head_adapter`, from a head's type to its adapter.
"""

from __future__ import annotations

# importable from here as before the split, but not in __all__ (as before)
from slimtrain.heads.base import DEFAULT_MAX_BLOCK_ELEMENTS as DEFAULT_MAX_BLOCK_ELEMENTS
from slimtrain.heads.base import SUPPORTED_HEADS, HeadAdapter
from slimtrain.heads.conv import Conv2dAdapter
from slimtrain.heads.dispatch import head_adapter
from slimtrain.heads.linear import LinearAdapter
from slimtrain.heads.transpose import ConvTranspose2dAdapter

__all__ = [
    "Conv2dAdapter",
    "ConvTranspose2dAdapter",
    "HeadAdapter",
    "LinearAdapter",
    "SUPPORTED_HEADS",
    "head_adapter",
]
