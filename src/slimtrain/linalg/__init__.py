"""Pure linear algebra of slimTik: batch statistics, the update and sampled GCV.

No ``nn.Module`` and no I/O here.
"""

from slimtrain.linalg.sgcv import (
    SGCVTerms,
    candidate_grid,
    select_lambda_sgcv,
    sgcv_terms,
    sgcv_values,
)
from slimtrain.linalg.slimtik import (
    SlimTikConfig,
    SlimTikInfo,
    SlimTikState,
    SlimTikStatus,
    initial_state,
    slimtik_update,
)
from slimtrain.linalg.solver import SlimTik
from slimtrain.linalg.stats import GramStats, gram_statistics

__all__ = [
    "GramStats",
    "SGCVTerms",
    "SlimTik",
    "SlimTikConfig",
    "SlimTikInfo",
    "SlimTikState",
    "SlimTikStatus",
    "candidate_grid",
    "gram_statistics",
    "initial_state",
    "select_lambda_sgcv",
    "sgcv_terms",
    "sgcv_values",
    "slimtik_update",
]
