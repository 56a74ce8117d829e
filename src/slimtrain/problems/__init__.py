"""Data generators, data readers and networks of the experiments (nothing is downloaded).

- :mod:`~slimtrain.problems.cdr`: convection-diffusion-reaction surrogate data (55 -> 72).
- :mod:`~slimtrain.problems.peaks`: the 2-D peaks function.
- :mod:`~slimtrain.problems.mnist`: MNIST IDX reader, scikit-learn digits, autoencoder data.
- :mod:`~slimtrain.problems.inverse`: a streaming 1-D deblurring problem for slimTik.
- :mod:`~slimtrain.problems.classify`: labelled digits and MNIST for classification.
- :mod:`~slimtrain.problems.networks`: the ``(features, head)`` networks of the experiments.
"""

from slimtrain.problems.cdr import (
    CDRConfig,
    CDRData,
    make_cdr_dataset,
    sample_cdr_parameters,
    simulate_cdr,
    simulate_cdr_fields,
)
from slimtrain.problems.classify import (
    ClassificationData,
    digits_classification_data,
    make_classification_data,
    mnist_classification_data,
)
from slimtrain.problems.inverse import DeblurProblem, make_deblur_problem
from slimtrain.problems.mnist import (
    AutoencoderData,
    digits_autoencoder_data,
    load_digits_images,
    load_mnist,
    make_autoencoder_data,
    mnist_autoencoder_data,
    read_idx,
)
from slimtrain.problems.networks import (
    autoencoder_network,
    cdr_network,
    cnn_classifier_network,
    mlp_classifier_network,
    peaks_network,
)
from slimtrain.problems.peaks import PeaksData, make_peaks_dataset, peaks

__all__ = [
    "AutoencoderData",
    "CDRConfig",
    "ClassificationData",
    "CDRData",
    "DeblurProblem",
    "PeaksData",
    "autoencoder_network",
    "cdr_network",
    "cnn_classifier_network",
    "digits_autoencoder_data",
    "digits_classification_data",
    "load_digits_images",
    "load_mnist",
    "make_autoencoder_data",
    "make_classification_data",
    "make_cdr_dataset",
    "make_deblur_problem",
    "make_peaks_dataset",
    "mlp_classifier_network",
    "mnist_autoencoder_data",
    "mnist_classification_data",
    "peaks",
    "peaks_network",
    "read_idx",
    "sample_cdr_parameters",
    "simulate_cdr",
    "simulate_cdr_fields",
]
