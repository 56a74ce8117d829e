"""Classification data, networks, and the acceptance check of issue 13 on scikit-learn's digits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from slimtrain import GradientTrainer, SeparableModel, SlimTrain, fit
from slimtrain._threads import num_threads
from slimtrain.problems import (
    cnn_classifier_network,
    digits_classification_data,
    load_digits_images,
    load_mnist,
    make_classification_data,
    mlp_classifier_network,
    mnist_classification_data,
)

# The shared MNIST 10k folder next to the checkout (as in test_mnist.py); SLIMTRAIN_MNIST_DIR
# overrides it (e.g. in a git worktree elsewhere). A missing folder fails the test, never skips.
MNIST = Path(os.environ.get("SLIMTRAIN_MNIST_DIR",
                            Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))



@pytest.fixture(autouse=True)
def _one_thread():
    """Small kernels on one thread: on shared cores torch's pool slows them down 10-100x."""
    with num_threads(1):
        yield

def _digits_run(method: str, lr: float, epochs: int = 3):
    data = digits_classification_data()
    model = SeparableModel(*mlp_classifier_network(seed=0))  # the same start for both methods
    if method == "slimtrain":
        trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=lr),
                            loss="cross_entropy", memory_depth=5)
    else:
        trainer = GradientTrainer(model, torch.optim.Adam(model.parameters(), lr=lr),
                                  loss="cross_entropy")
    loader = DataLoader(data.train, batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(1))
    return fit(trainer, loader, DataLoader(data.val, batch_size=512), epochs=epochs,
               eval_train=False)


def test_acceptance_slimtrain_cross_entropy_on_digits_beats_adam_after_one_epoch():
    # Issue 13: MLP 64 -> 64 -> 64 tanh, Linear head, batch 32, memory depth 5, Adam 1e-3 on
    # theta; against Adam 1e-3 on all weights with cross-entropy, from the same start.
    slim = _digits_run("slimtrain", 1e-3).column("val_accuracy")
    adam = _digits_run("adam", 1e-3, epochs=1).column("val_accuracy")
    assert slim[0] == adam[0]  # the same initial network
    assert slim[1] >= adam[1]
    assert slim[3] >= 0.9


def test_digits_classification_data_split_standardisation_and_labels():
    data = digits_classification_data()
    x, y = data.train.tensors
    xv, yv = data.val.tensors
    assert x.shape == (1440, 64) and xv.shape == (357, 64) and data.n_classes == 10
    assert y.dtype == torch.long and yv.dtype == torch.long
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(x.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    # the same images and labels as the file, permuted by the seed
    images, labels = load_digits_images(8)
    order = np.random.default_rng(0).permutation(len(labels))
    np.testing.assert_array_equal(y.numpy(), labels[order][:1440])
    np.testing.assert_allclose(x[:5].numpy() * data.std + data.mean,
                               images[order][:5].reshape(5, 64), atol=1e-6)


def test_make_classification_data_rejects_bad_input():
    images = np.zeros((10, 4, 4), dtype=np.uint8)
    images[0, 0, 0] = 255
    with pytest.raises(ValueError, match="one per image"):
        make_classification_data(images, np.zeros(9, dtype=np.int64), 5)
    with pytest.raises(ValueError, match="non-negative integers"):
        make_classification_data(images, np.full(10, -1), 5)
    with pytest.raises(ValueError, match="exceeds"):
        make_classification_data(images, np.zeros(10, dtype=np.int64), 8, 5)
    data = make_classification_data(images, np.arange(10) % 3, 6)
    assert data.train.tensors[0].shape == (6, 1, 4, 4) and len(data.val) == 4
    assert data.n_classes == 3


def test_mnist_classification_data_is_the_first_8000_and_last_2000_with_labels():
    assert (MNIST / "t10k-labels-idx1-ubyte.gz").is_file(), f"MNIST test data missing at {MNIST}"
    data = mnist_classification_data(MNIST)
    _, labels = load_mnist(MNIST)
    assert data.train.tensors[0].shape == (8000, 1, 28, 28)
    np.testing.assert_array_equal(data.train.tensors[1].numpy(), labels[:8000])
    np.testing.assert_array_equal(data.val.tensors[1].numpy(), labels[-2000:])


def test_classifier_networks_shapes_and_seeded_initialisation():
    features, head = mlp_classifier_network(seed=3)
    again, head_again = mlp_classifier_network(seed=3)
    x = torch.randn(4, 64)
    assert isinstance(head, nn.Linear) and head(features(x)).shape == (4, 10)
    torch.testing.assert_close(head_again(again(x)), head(features(x)))
    features, head = cnn_classifier_network(n_classes=7, width=4, hidden=16, image_size=8)
    assert head(features(torch.zeros(2, 1, 8, 8))).shape == (2, 7) and head.in_features == 16
    with pytest.raises(ValueError, match="multiple of 4"):
        cnn_classifier_network(image_size=10)
