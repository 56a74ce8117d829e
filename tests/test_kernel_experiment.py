"""The ``kernel`` experiment end to end on tiny runs: files written and their contents."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.kernel_ridge import KernelRidge

from slimtrain.experiments import run_experiment
from slimtrain.experiments.kernel import KernelOptions
from slimtrain.kernels.ridge import fit_kernel_ridge
from slimtrain.problems.kernel_data import load_kernel_dataset

pytestmark = pytest.mark.usefixtures("few_threads")

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
COLUMNS = ["epoch", "train_mse", "val_mse", "val_error", "epoch_time", "elapsed", "step_size"]


def run_kernel_experiment(dataset: str = "digits", *, out_dir: Path, **options: Any
                          ) -> dict[str, Any]:
    """The experiment through its declaration and the report writer; the summary."""
    return run_experiment("kernel", KernelOptions(dataset=dataset, **options), out_dir).summary


def _read(out: Path) -> tuple[list[dict[str, str]], dict[str, object]]:
    with (out / "metrics.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    png = (out / "eigenpro_vs_kernel_ridge.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    return rows, summary


def test_digits_classification_report(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    summary = run_kernel_experiment("digits", epochs=3, out_dir=out, n_train=500)
    rows, written = _read(out)
    assert written == json.loads(json.dumps(summary))
    assert list(rows[0]) == COLUMNS and [int(r["epoch"]) for r in rows] == [1, 2, 3]
    elapsed = [float(r["elapsed"]) for r in rows]
    assert all(a < b for a, b in zip(elapsed, elapsed[1:], strict=False))
    ep, krr, config = summary["eigenpro"], summary["kernel_ridge"], summary["config"]
    assert config["n_train"] == 500 and config["n_test"] == 360 and config["bandwidth"] == 5.0
    assert float(rows[-1]["val_error"]) == pytest.approx(ep["test_error"])
    assert ep["test_error"] < 0.1 and krr["test_error"] < 0.1
    assert ep["setup_time"] > 0 and krr["fit_time"] > 0
    for key in ("subsample_size", "n_components", "batch_size", "step_size"):
        assert ep[key] == ep["parameters"][key]
    gap = summary["comparison"]["error_gap_points"]
    assert gap == pytest.approx(100 * (ep["test_error"] - krr["test_error"]))
    # the exact reference is KernelRidge on the same data and kernel
    (x_tr, y_tr, x_te, y_te), _ = load_kernel_dataset("digits", n_train=500)
    reference = KernelRidge(alpha=1e-6, kernel="rbf", gamma=1 / 50).fit(x_tr, np.eye(10)[y_tr])
    error = float(np.mean(reference.predict(x_te).argmax(1) != y_te))
    assert krr["test_error"] == pytest.approx(error)


def test_friedman_regression_report(tmp_path: Path) -> None:
    summary = run_kernel_experiment("friedman", kernel="laplacian", epochs=2, out_dir=tmp_path,
                                    n_train=400)
    rows, _ = _read(tmp_path)
    assert [r["val_error"] for r in rows] == ["", ""]
    assert summary["config"]["task"] == "regression" and summary["config"]["bandwidth"] == 1.0
    assert summary["eigenpro"]["test_error"] is None
    assert summary["eigenpro"]["test_mse"] == pytest.approx(float(rows[-1]["val_mse"]))
    ratio = summary["comparison"]["mse_ratio"]
    assert ratio == pytest.approx(
        summary["eigenpro"]["test_mse"] / summary["kernel_ridge"]["test_mse"])


def test_cholesky_exact_solver_equals_kernel_ridge() -> None:
    rng = np.random.default_rng(0)
    x, xt = rng.uniform(size=(300, 4)), rng.uniform(size=(50, 4))
    y = np.sin(x.sum(1))
    ref = fit_kernel_ridge(x, y, xt, kernel="gaussian", bandwidth=0.7, solver="sklearn")
    chol = fit_kernel_ridge(x, y, xt, kernel="gaussian", bandwidth=0.7, solver="cholesky")
    np.testing.assert_allclose(chol["predictions"], ref["predictions"], atol=1e-8)
    assert "KernelRidge" in ref["solver"] and "cholesky" in chol["solver"]
    lap = fit_kernel_ridge(x, y, xt, kernel="laplacian", bandwidth=0.7, solver="sklearn")
    lap_chol = fit_kernel_ridge(x, y, xt, kernel="laplacian", bandwidth=0.7,
                                   solver="cholesky")
    np.testing.assert_allclose(lap_chol["predictions"], lap["predictions"], atol=1e-8)


def test_mnist_report(tmp_path: Path) -> None:
    summary = run_kernel_experiment("mnist", data=MNIST_DIR, epochs=2, out_dir=tmp_path,
                                    n_train=600)
    rows, _ = _read(tmp_path)
    assert len(rows) == 2
    assert summary["config"]["n_train"] == 600 and summary["config"]["n_test"] == 2000
    assert summary["config"]["n_features"] == 784
    assert summary["eigenpro"]["test_error"] < 0.2


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        run_kernel_experiment("cifar", out_dir=tmp_path)
    with pytest.raises(ValueError, match="dataset 'mnist' needs --data"):
        run_kernel_experiment("mnist", out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown kernel 'linear'"):
        run_kernel_experiment("digits", kernel="linear", out_dir=tmp_path)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        run_kernel_experiment("digits", bandwidth=0.0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        run_kernel_experiment("digits", epochs=0, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written before the arguments were checked
