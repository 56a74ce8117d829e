"""Kernel regression with EigenPro 2: kernels, pure solver functions, scikit-learn estimators.

>>> from slimtrain.kernels import EigenProRegressor, gaussian
"""

from slimtrain.kernels.eigenpro import (
    EigenProConfig,
    EigenProParameters,
    EigenProResult,
    EigenProStatus,
    EpochRecord,
    Preconditioner,
    RuntimeOptions,
    eigenpro_epoch,
    eigenpro_preconditioner,
    eigenpro_setup,
    eigenpro_solve,
    eigenpro_step_and_batch,
    nystrom_eigensystem,
    preconditioned_top_eigenvalue,
)
from slimtrain.kernels.estimators import EigenProClassifier, EigenProRegressor
from slimtrain.kernels.functions import (
    Kernel,
    cauchy,
    gaussian,
    kernel_matmul,
    laplacian,
    make_kernel,
)

__all__ = [
    "EigenProClassifier",
    "EigenProConfig",
    "EigenProParameters",
    "EigenProRegressor",
    "EigenProResult",
    "EigenProStatus",
    "EpochRecord",
    "Kernel",
    "Preconditioner",
    "RuntimeOptions",
    "cauchy",
    "eigenpro_epoch",
    "eigenpro_preconditioner",
    "eigenpro_setup",
    "eigenpro_solve",
    "eigenpro_step_and_batch",
    "gaussian",
    "kernel_matmul",
    "laplacian",
    "make_kernel",
    "nystrom_eigensystem",
    "preconditioned_top_eigenvalue",
]
