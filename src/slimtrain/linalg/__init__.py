"""Pure linear algebra of slimTik: batch statistics, the update and sampled GCV.

No ``nn.Module`` and no I/O here.
"""

from slimtrain.linalg.eigh import symmetric_eigh
from slimtrain.linalg.sgcv import (
    SGCVChoice,
    SGCVTerms,
    candidate_grid,
    select_lambda_sgcv,
    sgcv_terms,
    sgcv_values,
)
from slimtrain.linalg.slimtik import (
    SlimTikConfig,
    SlimTikInfo,
    SlimTikRecord,
    SlimTikState,
    SlimTikStatus,
    data_scale,
    initial_state,
    slimtik_update,
)
from slimtrain.linalg.solver import SlimTik
from slimtrain.linalg.stats import GramStats, gram_statistics

__all__ = [
    "GramStats",
    "SGCVChoice",
    "SGCVTerms",
    "SlimTik",
    "SlimTikConfig",
    "SlimTikInfo",
    "SlimTikRecord",
    "SlimTikState",
    "SlimTikStatus",
    "candidate_grid",
    "data_scale",
    "gram_statistics",
    "initial_state",
    "select_lambda_sgcv",
    "sgcv_terms",
    "sgcv_values",
    "slimtik_update",
    "symmetric_eigh",
]
