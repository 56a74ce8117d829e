"""slimtrain: separable network training with slimTik/sGCV and EigenPro kernel regression.

Public names (see the README):

- :class:`SlimTik`: the sampled limited-memory Tikhonov solver for linear weights.
"""

from slimtrain.linalg import GramStats, SlimTik, SlimTikConfig, SlimTikInfo, SlimTikStatus

__version__ = "0.1.0"

__all__ = ["GramStats", "SlimTik", "SlimTikConfig", "SlimTikInfo", "SlimTikStatus", "__version__"]
