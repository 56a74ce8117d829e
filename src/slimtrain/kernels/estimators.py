r"""scikit-learn estimators for EigenPro kernel regression and classification.

:class:`EigenProRegressor` and :class:`EigenProClassifier` are thin shells over the pure
functions of :mod:`slimtrain.kernels.eigenpro`: they validate the inputs
(``_parameter_constraints``, :func:`sklearn.utils.validation.validate_data`), move the data to
torch, call :func:`~slimtrain.kernels.eigenpro.eigenpro_solve` and keep the result as fitted
attributes. Both pass scikit-learn's ``check_estimator`` (see ``tests/test_kernel_estimators.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from numbers import Integral, Real
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, ClassifierMixin, MultiOutputMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
from torch import Tensor

from slimtrain.kernels.eigenpro import (
    EigenProConfig,
    EigenProResult,
    EpochRecord,
    RuntimeOptions,
    eigenpro_solve,
)
from slimtrain.kernels.functions import KERNELS, Kernel, kernel_matmul, make_kernel
from slimtrain.kernels.memory import default_memory_gb, default_tile_elements

__all__ = ["EigenProClassifier", "EigenProRegressor"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _int_or_auto(value: object) -> int | Literal["auto"]:
    """A validated ``int or "auto"`` parameter as the solver's config takes it."""
    return "auto" if isinstance(value, str) else int(value)  # type: ignore[call-overload]


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a torch device; expected e.g. 'cpu' or 'cuda'"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use 'cpu'")
    return dev


class _EigenProBase(BaseEstimator):
    """Parameters, validation and the fit/predict plumbing shared by both estimators."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "kernel": [StrOptions(set(KERNELS)), callable],
        "bandwidth": [Interval(Real, 0, None, closed="neither")],
        "n_epochs": [Interval(Integral, 1, None, closed="left")],
        "subsample_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "n_components": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "memory_gb": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "ridge": [Interval(Real, 0, None, closed="left")],
        "dtype": [StrOptions(set(_DTYPES))],
        "device": [str, torch.device],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        kernel: str | Callable[..., Any] = "gaussian",
        bandwidth: float = 5.0,
        n_epochs: int = 10,
        subsample_size: int | str = "auto",
        n_components: int | str = "auto",
        batch_size: int | str = "auto",
        memory_gb: float | str = "auto",
        ridge: float = 0.0,
        dtype: str = "float32",
        device: str | torch.device = "cpu",
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 3,
        tol: float = 0.0,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.kernel = kernel
        self.bandwidth = bandwidth
        self.n_epochs = n_epochs
        self.subsample_size = subsample_size
        self.n_components = n_components
        self.batch_size = batch_size
        self.memory_gb = memory_gb
        self.ridge = ridge
        self.dtype = dtype
        self.device = device
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _atomic_fit(self) -> Iterator[None]:
        """Restore every attribute if ``fit`` raises, so a failed fit changes nothing."""
        saved = dict(self.__dict__)
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def _kernel(self) -> Kernel:
        return make_kernel(self.kernel, self.bandwidth)

    def _memory_bytes(self, device: torch.device) -> float:
        gb = default_memory_gb(device) if self.memory_gb == "auto" else float(self.memory_gb)
        return gb * 2**30

    def _split_validation(
        self, x: NDArray[Any], y: NDArray[Any], rng: np.random.RandomState
    ) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
        n = x.shape[0]
        n_val = max(1, int(round(self.validation_fraction * n)))
        if n - n_val < 1:
            raise ValueError(
                f"early_stopping with validation_fraction={self.validation_fraction} leaves no "
                f"training points out of {n}; pass X_val/y_val or more samples"
            )
        perm = rng.permutation(n)
        val, train = perm[:n_val], perm[n_val:]
        return x[train], y[train], x[val], y[val]

    def _solve(
        self,
        x: NDArray[Any],
        y: NDArray[Any],
        x_val: NDArray[Any] | None,
        y_val: NDArray[Any] | None,
        error_fn: Callable[[Tensor, Tensor], float] | None,
        callback: Callable[[EpochRecord], None] | None,
    ) -> None:
        """Run the solver on validated arrays ``x`` (n, d) and ``y`` (n, l); set attributes."""
        kernel = self._kernel()
        device = _resolve_device(self.device)
        dtype = _DTYPES[self.dtype]
        memory_bytes = self._memory_bytes(device)
        if self.random_state is None:  # fresh entropy; the global NumPy state stays untouched
            seed = int(np.random.default_rng().integers(np.iinfo(np.int32).max))
        else:
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if self.early_stopping and x_val is None:
            x, y, x_val, y_val = self._split_validation(x, y, np.random.RandomState(seed))
        generator = torch.Generator().manual_seed(seed)

        def to_torch(a: NDArray[Any]) -> Tensor:
            return torch.tensor(a, dtype=dtype, device=device)

        xt, yt = to_torch(x), to_torch(y)
        config = EigenProConfig(
            n_epochs=int(self.n_epochs),
            subsample_size=_int_or_auto(self.subsample_size),
            n_components=_int_or_auto(self.n_components),
            batch_size=_int_or_auto(self.batch_size),
            ridge=float(self.ridge),
            early_stopping=bool(self.early_stopping),
            n_iter_no_change=int(self.n_iter_no_change),
            tol=float(self.tol),
        )
        result: EigenProResult = eigenpro_solve(
            kernel,
            xt,
            yt,
            config,
            RuntimeOptions(memory_bytes=memory_bytes),
            generator=generator,
            x_val=None if x_val is None else to_torch(x_val),
            y_val=None if y_val is None else to_torch(y_val),
            error_fn=error_fn,
            callback=callback,
        )
        weights = result.weights.cpu().numpy()
        if not np.isfinite(weights).all():  # the solver guards this; never hand out NaN
            raise RuntimeError("EigenPro produced non-finite weights")
        params = result.parameters
        self.centers_ = xt.cpu().numpy()
        self.weights_ = weights
        self.subsample_size_ = params.subsample_size
        self.n_components_ = params.n_components
        self.batch_size_ = params.batch_size
        self.step_size_ = result.history[-1].step_size if result.history else params.step_size
        self.setup_time_ = params.setup_time
        self.eigenpro_parameters_ = params.as_dict()
        self.history_ = [record.as_dict() for record in result.history]
        self.n_iter_ = len(result.history)
        self.best_epoch_ = result.best_epoch
        self.status_ = result.status

    def _check_val(
        self, x_val: ArrayLike | None, y_val: ArrayLike | None
    ) -> tuple[NDArray[Any] | None, Any]:
        if (x_val is None) != (y_val is None):
            raise ValueError("pass both X_val and y_val, or neither")
        if x_val is None:
            return None, None
        xv = validate_data(self, x_val, reset=False, dtype=[np.float64, np.float32])
        yv = np.asarray(y_val)
        if yv.shape[0] != xv.shape[0]:
            raise ValueError(
                f"X_val has {xv.shape[0]} samples but y_val has {yv.shape[0]}; they must match"
            )
        return xv, yv

    def _scores(self, X: ArrayLike) -> NDArray[np.float64]:
        """``k(X, centers_) @ weights_``, shape (n_samples,) or (n_samples, l).

        Evaluated in float64 whatever ``dtype``: a prediction sums terms
        ``weights_j k(x, x_j)`` that partly cancel, and float32 GEMMs round differently for
        different numbers of rows, so float32 predictions of a row depended on the rows
        predicted with it (1.4e-6 apart); in float64 they agree to 1e-13 and
        ``check_methods_subset_invariance`` holds. The fitted centers hold the float32 values
        when ``dtype="float32"``, so the model is the same; the cost is one float64 kernel
        evaluation (predicting is not the bottleneck of a fit).
        """
        check_is_fitted(self)
        x = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        device = _resolve_device(self.device)
        dtype = torch.float64
        xt = torch.tensor(x, dtype=_DTYPES[self.dtype], device=device).to(dtype)
        centers = torch.as_tensor(self.centers_, device=device).to(dtype)
        weights = torch.as_tensor(self.weights_, device=device).to(dtype)
        tile = default_tile_elements(device, self._memory_bytes(device), xt.element_size())
        out = kernel_matmul(self._kernel(), xt, centers, weights, tile_elements=tile)
        return np.asarray(out.cpu().numpy(), dtype=np.float64)


class EigenProRegressor(MultiOutputMixin, RegressorMixin, _EigenProBase):
    r"""Kernel regression fitted by EigenPro 2 (preconditioned SGD with automatic parameters).

    The model is :math:`f(x) = \sum_{j=1}^n \alpha_j k(x, x_j)` over the training points.
    EigenPro iterates towards the interpolant :math:`K\alpha = y` (or the ridge solution
    :math:`(K + rI)\alpha = y`); each step on a batch ``B`` of ``m`` points is

    .. math::

        g &= k(X_B, X)\alpha + r\alpha_B - y_B, \qquad
        \alpha_B \leftarrow \alpha_B - \frac{\eta}{m} g, \\
        \alpha_S &\leftarrow \alpha_S + \frac{\eta}{m} E D E^\top k(X_S, X_B)\, g,

    where ``S`` is a random subsample of ``s`` points, ``E`` holds the top ``q`` eigenvectors
    of ``k(X_S, X_S)/s`` scaled by ``1/sqrt(s)`` and
    ``D_i = (1 - (lambda_{q+1}/lambda_i)^{0.95}) / lambda_i``. The subsample size ``s``, the
    number of components ``q``, the batch size ``m`` and the step size ``eta`` are chosen by the
    EigenPro 2 rule from the memory budget (see
    :func:`slimtrain.kernels.eigenpro.eigenpro_setup`) and reported as fitted attributes.
    Kernel blocks are formed in tiles, so memory is ``O(n (d + l))``: no ``n x n`` matrix.

    Parameters
    ----------
    kernel : {"gaussian", "laplacian", "cauchy"} or callable, default="gaussian"
        Gaussian ``exp(-|x-z|^2 / (2 sigma^2))``, Laplacian ``exp(-|x-z|_2 / sigma)``
        (Euclidean norm), Cauchy ``1 / (1 + |x-z|^2 / sigma^2)``, or a callable
        ``f(x, z) -> (n_x, n_z)`` on torch tensors (``bandwidth`` is not passed to it).
    bandwidth : float, default=5.0
        ``sigma > 0``.
    n_epochs : int, default=10
        Passes over the training data.
    subsample_size : int or "auto", default="auto"
        ``s``: ``min(n, 2000)`` for ``n < 100000``, else 12000 (capped by the budget).
    n_components : int or "auto", default="auto"
        ``q``: the smallest number whose critical batch size reaches the largest batch the
        memory allows (EigenPro 2, also when the subsample is all the data), at most
        ``min(160, s // 8)`` (``min(160, s - 1)`` when the subsample is all the data) and what
        the working precision resolves; 0 disables the preconditioner (plain SGD).
    batch_size : int or "auto", default="auto"
        ``m``: ``min(floor(m*) + 1, m_max)``. When all ``n`` points fit in one batch and
        ``m*(q) >= n``, the solver takes full-batch steps of ``0.99 / lt1`` instead
        (``eigenpro_parameters_["regime"] == "full-batch"``, see
        :func:`slimtrain.kernels.eigenpro.eigenpro_setup`).
    memory_gb : float or "auto", default="auto"
        Memory budget in GiB; "auto" is half the available host memory (80 % of the free
        memory of a GPU device).
    ridge : float, default=0.0
        ``r >= 0``: converge to kernel ridge regression ``(K + rI)alpha = y``
        (``KernelRidge(alpha=r)``) instead of the interpolant.
    dtype : {"float32", "float64"}, default="float32"
        Working precision of the kernel blocks and weights (eigensystems are always float64).
    device : str or torch.device, default="cpu"
        Device of the solver; CUDA needs ``torch.cuda.is_available()``.
    early_stopping : bool, default=False
        Stop when the validation MSE has not improved by ``tol`` for ``n_iter_no_change``
        epochs and keep the best epoch's weights. The validation set is ``X_val, y_val`` given
        to ``fit``, or else a ``validation_fraction`` of the training data (then held out of
        the centers).
    validation_fraction : float, default=0.1
        Fraction of the training data held out for early stopping when no ``X_val`` is given.
    n_iter_no_change : int, default=3
        Epochs without improvement before early stopping.
    tol : float, default=0.0
        Improvement of the validation criterion that counts for early stopping.
    random_state : int, RandomState instance or None, default=None
        Seeds the subsample, the eigensolver and the batch order; equal seeds give identical
        results.

    Attributes
    ----------
    weights_ : ndarray of shape (n_centers,) or (n_centers, n_outputs)
        ``alpha`` (the dimensionality follows ``y``).
    centers_ : ndarray of shape (n_centers, n_features)
        The training points (minus the held-out validation part under early stopping).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when ``X`` has string feature names.
    subsample_size_, n_components_, batch_size_ : int
        The chosen ``s``, ``q`` and ``m``.
    step_size_ : float
        ``eta`` in use at the end (halved from the rule's value after a detected divergence).
    setup_time_ : float
        Seconds for the subsample eigensystem and the parameter rule.
    eigenpro_parameters_ : dict
        Every chosen value (also ``beta``, the eigenvalues, ``m*``, ``m_max``, the solver).
    history_ : list of dict
        Per epoch: ``epoch``, ``train_mse``, ``val_mse``, ``val_error``, ``step_size``,
        ``epoch_time`` and ``status`` (the name of the epoch's
        :class:`~slimtrain.kernels.eigenpro.EigenProStatus`).
    n_iter_ : int
        Epochs kept (epochs undone by a divergence are not counted).
    best_epoch_ : int
        Epoch of the returned weights.
    status_ : EigenProStatus
        What the fit did; ``status_.value`` is a sentence saying what to do about it (a
        diverging fit returns its last good iterate with ``DIVERGED`` instead of raising).

    References
    ----------
    .. [1] S. Ma and M. Belkin, "Diving into the shallows: a computational perspective on
       large-scale shallow learning", NeurIPS 2017.
    .. [2] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
       training", MLSys 2019.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(size=(200, 2))
    >>> y = np.sin(4 * X[:, 0])
    >>> model = EigenProRegressor(bandwidth=0.3, n_epochs=20, random_state=0).fit(X, y)
    >>> bool(model.score(X, y) > 0.99), model.predict(X[:3]).shape
    (True, (3,))
    """

    def fit(
        self,
        X: ArrayLike,
        y: ArrayLike,
        X_val: ArrayLike | None = None,
        y_val: ArrayLike | None = None,
        callback: Callable[[EpochRecord], None] | None = None,
    ) -> EigenProRegressor:
        """Fit the kernel weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training points (the centers of the model).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        X_val : array-like of shape (n_val, n_features), optional
            Validation points: their MSE is recorded in ``history_`` every epoch and drives
            ``early_stopping``.
        y_val : array-like of shape (n_val,) or (n_val, n_outputs), optional
            Validation targets.
        callback : callable, optional
            Called with each epoch's :class:`~slimtrain.kernels.eigenpro.EpochRecord`.

        Returns
        -------
        self
        """
        with self._atomic_fit():
            self._validate_params()
            x, y_arr = validate_data(
                self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32]
            )
            xv, yv = self._check_val(X_val, y_val)
            y2 = y_arr.reshape(-1, 1) if y_arr.ndim == 1 else y_arr
            yv2 = None
            if yv is not None:
                yv2 = np.asarray(yv, dtype=np.float64).reshape(yv.shape[0], -1)
                if yv2.shape[1] != y2.shape[1] or not np.isfinite(yv2).all():
                    raise ValueError(
                        f"y_val must be finite with {y2.shape[1]} output(s) like y; got shape "
                        f"{np.shape(yv)}"
                    )
            self._solve(x, y2, xv, yv2, None, callback)
            if y_arr.ndim == 1:
                self.weights_ = self.weights_[:, 0]
        return self

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        """Predict ``f(x) = sum_j weights_j k(x, centers_j)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points to predict.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
            float64, shaped like the training targets.
        """
        return self._scores(X)


def _classification_error(pred: Tensor, target: Tensor) -> float:
    return float((pred.argmax(dim=1) != target.argmax(dim=1)).double().mean())


class EigenProClassifier(ClassifierMixin, _EigenProBase):
    r"""Kernel classifier fitted by EigenPro 2 on one-hot targets.

    Regresses the one-hot encoding of the labels, :math:`f(x) = \sum_j \alpha_j k(x, x_j)`
    with ``alpha`` of shape ``(n_samples, n_classes)``, by the EigenPro iteration of
    :class:`EigenProRegressor`, and predicts the class of the largest output:

    .. math::

        g = k(X_B, X)\alpha + r\alpha_B - Y_B,\quad
        \alpha_B \leftarrow \alpha_B - \frac{\eta}{m} g,\quad
        \alpha_S \leftarrow \alpha_S + \frac{\eta}{m} E D E^\top k(X_S, X_B)\, g,\quad
        \hat y(x) = \arg\max_c f_c(x).

    Parameters
    ----------
    kernel, bandwidth, n_epochs, subsample_size, n_components, batch_size, memory_gb, ridge,
    dtype, device, random_state
        As for :class:`EigenProRegressor`.
    early_stopping : bool, default=False
        Stop on the validation classification error (see :class:`EigenProRegressor`).
    validation_fraction, n_iter_no_change, tol
        As for :class:`EigenProRegressor`.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    weights_ : ndarray of shape (n_centers, n_classes)
    centers_ : ndarray of shape (n_centers, n_features)
    n_features_in_ : int
    subsample_size_, n_components_, batch_size_, step_size_, setup_time_,
    eigenpro_parameters_, history_, n_iter_, best_epoch_, status_
        As for :class:`EigenProRegressor`; ``history_`` also holds ``val_error``.

    References
    ----------
    .. [1] S. Ma and M. Belkin, "Diving into the shallows: a computational perspective on
       large-scale shallow learning", NeurIPS 2017.
    .. [2] S. Ma and M. Belkin, "Kernel machines that adapt to GPUs for effective large batch
       training", MLSys 2019.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = EigenProClassifier(bandwidth=1.0, n_epochs=10, random_state=0).fit(X, y)
    >>> bool(clf.score(X, y) > 0.95), clf.classes_
    (True, array([0, 1, 2]))
    """

    def fit(
        self,
        X: ArrayLike,
        y: ArrayLike,
        X_val: ArrayLike | None = None,
        y_val: ArrayLike | None = None,
        callback: Callable[[EpochRecord], None] | None = None,
    ) -> EigenProClassifier:
        """Fit the kernel weights on one-hot targets.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training points (the centers of the model).
        y : array-like of shape (n_samples,)
            Class labels.
        X_val : array-like of shape (n_val, n_features), optional
            Validation points: MSE and classification error per epoch in ``history_``.
        y_val : array-like of shape (n_val,), optional
            Labels among those of ``y``.
        callback : callable, optional
            Called with each epoch's :class:`~slimtrain.kernels.eigenpro.EpochRecord`.

        Returns
        -------
        self
        """
        with self._atomic_fit():
            self._validate_params()
            x, y_arr = validate_data(self, X, y, dtype=[np.float64, np.float32])
            y_arr = column_or_1d(y_arr, warn=True)
            check_classification_targets(y_arr)
            classes, encoded = np.unique(y_arr, return_inverse=True)
            if classes.shape[0] < 2:
                raise ValueError(
                    "EigenProClassifier needs samples of at least 2 classes; the data contain "
                    f"only one class: {classes[0]!r}"
                )
            xv, yv = self._check_val(X_val, y_val)
            onehot_val = None
            if yv is not None:
                yv1 = column_or_1d(yv)
                unknown = np.setdiff1d(yv1, classes)
                if unknown.size:
                    raise ValueError(
                        f"y_val contains labels {unknown[:5].tolist()} not seen in y; expected "
                        f"labels among {classes[:10].tolist()}"
                    )
                onehot_val = np.eye(classes.shape[0])[np.searchsorted(classes, yv1)]
            self.classes_ = classes
            onehot = np.eye(classes.shape[0])[encoded]
            self._solve(x, onehot, xv, onehot_val, _classification_error, callback)
        return self

    def decision_function(self, X: ArrayLike) -> NDArray[np.float64]:
        """Outputs ``f_c(x)`` per class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points to score.

        Returns
        -------
        ndarray of shape (n_samples, n_classes), or (n_samples,) for two classes
            For two classes, ``f_1 - f_0`` (positive means ``classes_[1]``).
        """
        scores = self._scores(X)
        if scores.shape[1] == 2:
            return scores[:, 1] - scores[:, 0]
        return scores

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Class of the largest output.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points to classify.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        scores = self._scores(X)
        return np.asarray(self.classes_[np.argmax(scores, axis=1)])
