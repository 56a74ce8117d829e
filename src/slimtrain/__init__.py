"""slimtrain: separable network training with slimTik/sGCV and EigenPro kernel regression."""

__version__ = "0.1.0"
