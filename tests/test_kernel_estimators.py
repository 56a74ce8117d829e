"""EigenProRegressor / EigenProClassifier: scikit-learn conventions and exact references."""

from __future__ import annotations

import doctest
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import (
    check_methods_sample_order_invariance,
    check_methods_subset_invariance,
    parametrize_with_checks,
)

from slimtrain.kernels import (
    EigenProClassifier,
    EigenProRegressor,
    EigenProStatus,
    EpochRecord,
    estimators,
    gaussian,
)
from slimtrain.kernels.eigenpro import eigenpro_step_and_batch

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

pytestmark = pytest.mark.usefixtures("few_threads")


@parametrize_with_checks(
    [EigenProRegressor(n_epochs=5, random_state=0), EigenProClassifier(n_epochs=5, random_state=0)],
)
def test_sklearn_compatible_estimator(estimator: object, check: object) -> None:
    check(estimator)  # type: ignore[operator]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls", [EigenProRegressor, EigenProClassifier])
def test_predictions_are_row_invariant(cls: type, dtype: str) -> None:
    estimator = cls(n_epochs=5, random_state=0, dtype=dtype)
    check_methods_subset_invariance(cls.__name__, estimator)
    check_methods_sample_order_invariance(cls.__name__, estimator)


def test_float32_predictions_do_not_depend_on_the_batching() -> None:
    """Issue 12: in float32 a row's prediction differed by 1.4e-6 with the rows predicted
    with it; predictions are now evaluated in float64 from the float32 model."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 5))
    y = 100 * np.sin(x).sum(1)
    model = EigenProRegressor(n_epochs=5, random_state=0).fit(x, y)
    full = model.predict(x)
    parts = np.concatenate([model.predict(x[i : i + 7]) for i in range(0, 300, 7)])
    single = np.array([model.predict(x[i : i + 1])[0] for i in range(0, 300, 37)])
    np.testing.assert_allclose(parts, full, rtol=1e-12, atol=1e-12 * np.abs(full).max())
    np.testing.assert_allclose(single, full[::37], rtol=1e-12, atol=1e-12 * np.abs(full).max())
    # the same model as in float32: the float32 centers, evaluated exactly
    x32 = torch.tensor(x, dtype=torch.float32).double()
    kernel = gaussian(x32, torch.tensor(model.centers_, dtype=torch.float64), 5.0)
    np.testing.assert_allclose(full, kernel.numpy() @ model.weights_.astype(np.float64),
                               rtol=1e-10, atol=1e-10 * np.abs(full).max())


# ----------------------------------------------------------------------- exact references


def _problem(n: int = 250, d: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, d))
    y = np.stack([np.sin(2 * x[:, 0]) * x[:, 1], np.cos(x.sum(1))], axis=1)
    return x, y


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "cauchy"])
def test_ridge_estimator_matches_kernel_ridge(kernel: str) -> None:
    x, y = _problem()
    xt, _ = _problem(80, seed=1)
    sigma, ridge = 0.7, 0.1
    model = EigenProRegressor(kernel=kernel, bandwidth=sigma, ridge=ridge, n_epochs=200,
                              dtype="float64", random_state=0).fit(x, y)
    k = {"gaussian": lambda a, b: np.exp(-_d2(a, b) / (2 * sigma**2)),
         "laplacian": lambda a, b: np.exp(-np.sqrt(_d2(a, b)) / sigma),
         "cauchy": lambda a, b: 1 / (1 + _d2(a, b) / sigma**2)}[kernel]
    reference = KernelRidge(alpha=ridge, kernel="precomputed").fit(k(x, x), y)
    np.testing.assert_allclose(model.weights_, reference.dual_coef_, rtol=0,
                               atol=1e-6 * np.abs(reference.dual_coef_).max())
    np.testing.assert_allclose(model.predict(xt), reference.predict(k(xt, x)), atol=1e-7)


def _d2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def test_interpolation_limit_against_kernel_ridge() -> None:
    x, y = _problem(200, 2, seed=2)
    xt, _ = _problem(100, 2, seed=3)
    reference = KernelRidge(alpha=1e-10, kernel="rbf", gamma=0.5).fit(x, y).predict(xt)
    errors = []
    for epochs in (1, 5, 25):
        # n_components=160 (lowered to the float64 precision limit): the limit is under test;
        # the default rule flattens fewer directions and approaches it more slowly
        model = EigenProRegressor(bandwidth=1.0, n_epochs=epochs, dtype="float64",
                                  n_components=160, random_state=0).fit(x, y)
        errors.append(np.abs(model.predict(xt) - reference).max())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-2 * np.abs(reference).max()


# ----------------------------------------------------------------------- API behaviour


def test_regressor_shapes_and_reported_parameters() -> None:
    x, y = _problem(400, 3)
    # budget: data (float32 x, y, weights, copy) + subsample Gram and 13 eigenvectors + a
    # kernel block of 100 rows, so that m_max = 100 < n
    memory_gb = (4 * 400 * (3 + 3 * 2) + 8 * 100**2 + 4 * 100 * 13 + 4 * 400 * 100) / 2**30
    options = {"bandwidth": 0.5, "n_epochs": 3, "random_state": 0, "memory_gb": memory_gb,
               "subsample_size": 100}
    one = EigenProRegressor(**options).fit(x, y[:, 0])  # type: ignore[arg-type]
    assert one.predict(x[:7]).shape == (7,) and one.weights_.shape == (400,)
    assert one.predict(x[:7]).dtype == np.float64
    two = EigenProRegressor(**options).fit(x, y)  # type: ignore[arg-type]
    assert two.predict(x[:7]).shape == (7, 2) and two.weights_.shape == (400, 2)
    assert two.centers_.shape == (400, 3) and two.n_features_in_ == 3
    p = two.eigenpro_parameters_
    assert (two.subsample_size_, two.n_components_, two.batch_size_) == (
        p["subsample_size"], p["n_components"], p["batch_size"])
    assert p["regime"] == "sgd" and p["max_batch_size"] == 100
    m, eta = eigenpro_step_and_batch(p["beta"], p["preconditioned_top_eigenvalue"],
                                     p["max_batch_size"])
    assert (two.batch_size_, two.step_size_) == (m, pytest.approx(eta))
    assert len(two.history_) == two.n_iter_ == 3
    assert set(two.history_[0]) == {"epoch", "train_mse", "val_mse", "val_error", "step_size",
                                    "epoch_time", "status"}
    assert two.status_ is EigenProStatus.OK and two.history_[-1]["status"] == "OK"


def test_diverging_fit_returns_its_last_good_iterate_with_the_status() -> None:
    """Issue 12 acceptance: a diverging fit does not raise; it returns the iterate before the
    divergence (here: that of a clean 2-epoch fit) with ``status_ = DIVERGED``."""
    x, y = _problem(150, 2)
    poisoned = [False]

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = gaussian(a, b, 0.7)
        return out * math.nan if poisoned[0] else out

    def callback(record: EpochRecord) -> None:
        poisoned[0] = poisoned[0] or record.epoch == 3

    options = {"subsample_size": 50, "batch_size": 30, "dtype": "float64", "random_state": 0}
    model = EigenProRegressor(kernel=kernel, n_epochs=8, **options)  # type: ignore[arg-type]
    model.fit(x, y, callback=callback)
    assert model.status_ is EigenProStatus.DIVERGED
    assert model.best_epoch_ == model.n_iter_ == 2
    clean = EigenProRegressor(kernel="gaussian", bandwidth=0.7, n_epochs=2,
                              **options).fit(x, y)  # type: ignore[arg-type]
    np.testing.assert_array_equal(model.weights_, clean.weights_)
    assert clean.status_ is EigenProStatus.OK


def test_same_random_state_identical_results() -> None:
    x, y = _problem(300, 3)

    def fit(seed: int | None) -> np.ndarray:
        return EigenProRegressor(bandwidth=0.5, n_epochs=3, random_state=seed,
                                 memory_gb=0.002).fit(x, y).weights_

    assert np.array_equal(fit(7), fit(7))
    assert not np.array_equal(fit(7), fit(8))


def test_classifier_labels_scores_and_validation_history() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [3, 0], [0, 3]])
    labels = np.array(["ant", "bee", "cat"])
    idx = rng.integers(0, 3, 300)
    x = centers[idx] + 0.6 * rng.standard_normal((300, 2))
    y = labels[idx]
    clf = EigenProClassifier(bandwidth=1.0, n_epochs=4, random_state=0)
    clf.fit(x[:200], y[:200], X_val=x[200:], y_val=y[200:])
    assert list(clf.classes_) == ["ant", "bee", "cat"]
    assert set(clf.predict(x[200:])) <= set(labels)
    assert clf.decision_function(x[:5]).shape == (5, 3)
    assert clf.score(x[200:], y[200:]) > 0.9
    last = clf.history_[-1]
    assert last["val_error"] == pytest.approx(1 - clf.score(x[200:], y[200:]))
    onehot = (y[200:, None] == labels[None, :]).astype(float)
    scores = clf.decision_function(x[200:])
    # The history's prediction sums weights_j k(x, x_j) in the solver's order (subsample first),
    # decision_function in the data's order. In float32 with q at the precision limit
    # (numerical_component_limit: rounding amplified up to 1 / (100 eps) ~ 8e4) the two differ
    # by ~1e-3 relative (measured 1.05e-3 here), so the tolerance is 5e-3.
    assert last["val_mse"] == pytest.approx(np.mean((scores - onehot) ** 2), rel=5e-3)
    binary = EigenProClassifier(bandwidth=1.0, n_epochs=3, random_state=0)
    binary.fit(x[:200], y[:200] == "ant")
    decision = binary.decision_function(x[200:])
    assert decision.shape == (100,)
    np.testing.assert_array_equal(binary.predict(x[200:]), decision > 0)


def test_early_stopping_with_internal_validation_split() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(400, 2))
    y = np.sin(6 * x[:, 0]) + 0.7 * rng.standard_normal(400)
    model = EigenProRegressor(kernel="laplacian", bandwidth=0.05, n_epochs=50,
                              early_stopping=True, validation_fraction=0.25, n_iter_no_change=2,
                              batch_size=40, subsample_size=100, random_state=0).fit(x, y)
    assert model.centers_.shape == (300, 2)
    assert model.n_iter_ < 50
    val = [row["val_mse"] for row in model.history_]
    assert model.best_epoch_ == 1 + int(np.argmin(val))


def test_callable_kernel_equals_the_builtin() -> None:
    x, y = _problem(200, 2)

    def mine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return gaussian(a, b, bandwidth=0.8)

    seen = []
    builtin = EigenProRegressor(bandwidth=0.8, n_epochs=4, dtype="float64", random_state=3)
    custom = EigenProRegressor(kernel=mine, n_epochs=4, dtype="float64", random_state=3)
    builtin.fit(x, y)
    custom.fit(x, y, callback=seen.append)
    np.testing.assert_allclose(custom.predict(x), builtin.predict(x), atol=1e-8)
    assert [r.epoch for r in seen] == [1, 2, 3, 4]
    restored = pickle.loads(pickle.dumps(builtin))
    np.testing.assert_array_equal(restored.predict(x), builtin.predict(x))


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"bandwidth": 0.0}, "'bandwidth' parameter of EigenProRegressor must be a float in"),
        ({"bandwidth": -2.0}, "'bandwidth' parameter"),
        ({"kernel": "polynomial"}, "'kernel' parameter of EigenProRegressor must be a str among"),
        ({"n_epochs": 0}, "'n_epochs' parameter"),
        ({"dtype": "float16"}, "'dtype' parameter"),
        ({"memory_gb": -1.0}, "'memory_gb' parameter"),
    ],
)
def test_bad_parameters_raise_clear_errors(params: dict[str, object], match: str) -> None:
    x, y = _problem(20, 2)
    with pytest.raises(InvalidParameterError, match=match):
        EigenProRegressor(**params).fit(x, y)  # type: ignore[arg-type]
    assert issubclass(InvalidParameterError, ValueError)


def test_bad_data_raise_clear_errors_and_leave_the_model_unchanged() -> None:
    x, y = _problem(60, 2)
    model = EigenProRegressor(n_epochs=2, random_state=0).fit(x, y)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(model).items()}
    bad_x = x.copy()
    bad_x[3, 1] = np.nan
    cases = [
        ((bad_x, y), {}, "Input X contains NaN"),
        ((x, y[:50]), {}, r"inconsistent numbers of samples: \[60, 50\]"),
        ((x[:, :1], y), {"X_val": x, "y_val": y}, "X has 2 features, but EigenProRegressor is "
         "expecting 1"),
        ((x, y), {"X_val": x}, "pass both X_val and y_val, or neither"),
        ((x, y), {"X_val": x[:5], "y_val": y[:4]}, "X_val has 5 samples but y_val has 4"),
        ((x, y), {"X_val": x[:5], "y_val": y[:5, :1]}, "y_val must be finite with 2 output"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            model.fit(*args, **kwargs)
        after = vars(model)
        assert after.keys() == before.keys()
        for key, value in before.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(after[key], value)
            else:
                assert after[key] == value or (isinstance(value, float) and math.isnan(value))
    with pytest.raises(ValueError, match="n_components=30 needs a subsample of at least 31"):
        EigenProRegressor(n_components=30, subsample_size=20).fit(x, y)
    with pytest.raises(ValueError, match="device='cpux' is not a torch device"):
        EigenProRegressor(device="cpux").fit(x, y)


def test_classifier_bad_labels() -> None:
    x, _ = _problem(40, 2)
    y = np.array([0, 1] * 20)
    with pytest.raises(ValueError, match="Unknown label type"):
        EigenProClassifier().fit(x, np.linspace(0, 1, 40))
    with pytest.raises(ValueError, match="at least 2 classes; the data contain only one class"):
        EigenProClassifier().fit(x, np.zeros(40))
    with pytest.raises(ValueError, match=r"y_val contains labels \[7\] not seen in y"):
        EigenProClassifier().fit(x, y, X_val=x[:3], y_val=[0, 7, 1])


def test_doctests() -> None:
    result = doctest.testmod(estimators)
    assert result.attempted >= 4 and result.failed == 0


# ----------------------------------------------------------------------- MNIST acceptance


def test_mnist_split_within_0_3_points_of_kernel_ridge() -> None:
    """Issue acceptance: 8000/2000 split, Gaussian sigma 5, at most 10 epochs."""
    from slimtrain.problems.mnist import load_mnist

    images, labels = load_mnist(MNIST_DIR, split="t10k")
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    xtr, ytr, xte, yte = x[:8000], labels[:8000], x[8000:], labels[8000:]
    # One torch thread (the module fixture): on a shared, busy two-core machine two OpenMP
    # threads spin at every barrier and ran this fit 5x slower than one thread.
    clf = EigenProClassifier(bandwidth=5.0, n_epochs=10, random_state=0)
    clf.fit(xtr, ytr, X_val=xte, y_val=yte)
    onehot = np.eye(10)[ytr]
    krr = KernelRidge(alpha=1e-6, kernel="rbf", gamma=1 / 50).fit(xtr, onehot)
    krr_error = float(np.mean(krr.predict(xte).argmax(1) != yte))
    errors = [row["val_error"] for row in clf.history_]
    assert errors[-1] == pytest.approx(float(np.mean(clf.predict(xte) != yte)))
    assert errors[-1] <= krr_error + 0.003, (errors, krr_error)
    # Set-up (subsample Gram + eigensystem + rule): 0.45 s measured on the idle two-core
    # machine, 0.8 s on one thread under load; the acceptance bound is 1 s (reported by
    # benchmarks/eigenpro_scaling.py), asserted here with headroom for a loaded machine.
    assert clf.setup_time_ < 2.0


def test_friedman_within_5_percent_of_kernel_ridge() -> None:
    """Acceptance case of benchmarks/eigenpro_scaling.py at a test-suite size: Friedman #1
    (d = 20, noise 1, sigma 1), 3000 training points, 10 epochs of the default rule; the test
    MSE within 5 % of exact KernelRidge (alpha 1e-6) on 1000 test points."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=4000, n_features=20, noise=1.0, random_state=0)
    xtr, ytr, xte, yte = x[:3000], y[:3000], x[3000:], y[3000:]
    model = EigenProRegressor(bandwidth=1.0, n_epochs=10, random_state=0).fit(xtr, ytr)
    exact = KernelRidge(alpha=1e-6, kernel="rbf", gamma=0.5).fit(xtr, ytr)
    mse = float(np.mean((model.predict(xte) - yte) ** 2))
    exact_mse = float(np.mean((exact.predict(xte) - yte) ** 2))
    assert model.status_ is EigenProStatus.OK
    assert mse <= 1.05 * exact_mse, (mse, exact_mse)
