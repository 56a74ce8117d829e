"""The peaks function against its closed form and known extrema; the data set's sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slimtrain.problems.peaks import make_peaks_dataset, peaks


def test_peaks_closed_form_at_known_points() -> None:
    e = math.e
    # (0, 0): 3 e^{-1} - 0 - e^{-1} / 3 = (8/3) e^{-1}
    assert float(peaks(np.array(0.0), np.array(0.0))) == pytest.approx(8.0 / (3.0 * e), rel=1e-14)
    # (1, 1): 0 - 10 (0.2 - 1 - 1) e^{-2} - e^{-5} / 3
    assert float(peaks(np.array(1.0), np.array(1.0))) == pytest.approx(
        18.0 * e**-2 - e**-5 / 3.0, rel=1e-14
    )
    # (-1, 0): 3*4 e^{-2} - 10 (-0.2 + 1) e^{-1} - 1/3
    assert float(peaks(np.array(-1.0), np.array(0.0))) == pytest.approx(
        12.0 * e**-2 - 8.0 * e**-1 - 1.0 / 3.0, rel=1e-14
    )


def test_peaks_matches_matlab_extrema() -> None:
    # MATLAB's peaks: maximum 8.1062 at (-0.0093, 1.5814), minimum -6.5511 at (0.2283, -1.6255).
    assert float(peaks(np.array(-0.0093), np.array(1.5814))) == pytest.approx(8.1062, abs=1e-3)
    assert float(peaks(np.array(0.2283), np.array(-1.6255))) == pytest.approx(-6.5511, abs=1e-3)
    g = np.linspace(-3, 3, 601)
    vals = peaks(g[:, None], g[None, :])
    assert vals.max() <= 8.1063 and vals.min() >= -6.5512


def test_peaks_broadcasts() -> None:
    x = np.array([0.0, 1.0])
    out = peaks(x[:, None], np.array([0.0, 1.0])[None, :])
    assert out.shape == (2, 2)
    assert out[1, 1] == pytest.approx(18.0 * math.e**-2 - math.e**-5 / 3.0)


def test_dataset_shapes_domain_and_targets() -> None:
    data = make_peaks_dataset()
    x, c = data.train.tensors
    xv, cv = data.val.tensors
    assert x.shape == (2000, 2) and c.shape == (2000, 1)
    assert xv.shape == (1000, 2) and cv.shape == (1000, 1)
    assert x.dtype == torch.float32 and c.dtype == torch.float32
    for pts in (x, xv):
        assert float(pts.min()) >= -3.0 and float(pts.max()) <= 3.0
        assert float(pts.min()) < -2.9 and float(pts.max()) > 2.9  # covers the square
    ref = peaks(x[:, 0].double().numpy(), x[:, 1].double().numpy())
    np.testing.assert_allclose(c[:, 0].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_dataset_deterministic_and_prefix_stable() -> None:
    a = make_peaks_dataset(n_train=50, n_val=20, seed=3)
    b = make_peaks_dataset(n_train=50, n_val=20, seed=3)
    c = make_peaks_dataset(n_train=50, n_val=5, seed=3)
    d = make_peaks_dataset(n_train=50, n_val=20, seed=4)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert torch.equal(a.train.tensors[0], c.train.tensors[0])  # train independent of n_val
    assert not torch.equal(a.train.tensors[0], d.train.tensors[0])


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"n_train": 0}, ValueError),
        ({"n_val": -1}, ValueError),
        ({"n_train": 2.5}, TypeError),
        ({"seed": -1}, ValueError),
    ],
)
def test_dataset_bad_input(kwargs: dict, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        make_peaks_dataset(**kwargs)
