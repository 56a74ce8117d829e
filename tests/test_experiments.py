"""End-to-end runs of the experiments at a tiny size: the files each writes (``metrics.csv``,
``summary.json``, PNG plots) and their contents, the sweep's grids and spreads, and the inverse
problem. The command line and the output-folder rules: ``test_cli.py``.

Every run goes through the real code path (data, network, loop, report writer); only the sizes
are small. The CDR simulations are cached in a temporary folder, never in ``~/.cache``.
"""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from slimtrain import plots
from slimtrain.experiments import METHODS, REGISTRY, TrainingOptions, run_experiment
from slimtrain.experiments.inverse import InverseOptions
from slimtrain.experiments.runner import run_methods
from slimtrain.experiments.setups import make_setup
from slimtrain.experiments.sweep import SweepOptions
from slimtrain.experiments.tables import sweep_table

pytestmark = pytest.mark.usefixtures("few_threads")

EPOCHS = 2
# Every method once (on peaks, the cheapest); slimTrain against Adam on the others.
RUNS = {
    "peaks": list(METHODS),
    "cdr": ["slimtrain", "adam"],
    "autoencoder": ["slimtrain", "adam"],
}
# Larger batches than the experiments' defaults, so that each run takes about a second.
BATCH = {"peaks": 32, "cdr": 32, "autoencoder": 32}
METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "val_rel_error", "sum_lambda", "epoch_time")
CURVES = ("val_loss", "train_loss", "val_rel_error", "sum_lambda", "epoch_time")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_bytes: int = 2000) -> tuple[int, int]:
    """``path`` is a PNG of non-trivial size; returns its ``(width, height)`` in pixels."""
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} does not start with the PNG signature"
    assert data[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    width, height = struct.unpack(">II", data[16:24])
    assert len(data) >= min_bytes, f"{path} has only {len(data)} bytes"
    assert width >= 100 and height >= 100, f"{path} is {width}x{height} pixels"
    return width, height


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module", params=list(RUNS))
def training_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cdr_cache: Path
) -> tuple[str, Path, dict[str, Any]]:
    name = request.param
    out = tmp_path_factory.mktemp(name) / "run"
    options = REGISTRY[name].options(
        experiment=name, methods=tuple(RUNS[name]), quick=True,
        training=TrainingOptions(epochs=EPOCHS, batch_size=BATCH[name]))
    return name, out, run_experiment(name, options, out).summary


def test_training_run_metrics_csv(training_run: tuple[str, Path, dict[str, Any]]) -> None:
    name, out, summary = training_run
    header, rows = read_csv(out / "metrics.csv")
    assert header[0] == "method"
    for field in METRIC_FIELDS:
        assert field in header, f"metrics.csv of {name} lacks the column {field}"
    methods = RUNS[name]
    assert len(rows) == len(methods) * (EPOCHS + 1)
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        assert [int(r["epoch"]) for r in mine] == list(range(EPOCHS + 1))
        # The CSV and the summary hold the same numbers.
        np.testing.assert_allclose([float(r["val_loss"]) for r in mine],
                                   summary["methods"][method]["val_loss"], rtol=1e-12)
        np.testing.assert_allclose([float(r["train_loss"]) for r in mine],
                                   summary["methods"][method]["train_loss"], rtol=1e-12)


def test_training_run_summary_json(
    training_run: tuple[str, Path, dict[str, Any]], cdr_cache: Path
) -> None:
    name, out, _ = training_run
    summary = json.loads((out / "summary.json").read_text())
    assert {"experiment", "config", "methods"} <= summary.keys()
    assert summary["experiment"] == name
    assert summary["config"]["training"]["epochs"] == EPOCHS
    assert summary["config"]["training"]["batch_size"] == BATCH[name]
    assert list(summary["methods"]) == RUNS[name]
    initial = []
    for method, m in summary["methods"].items():
        assert {*CURVES, "best_val_loss"} <= m.keys()
        for key in CURVES:
            assert len(m[key]) == EPOCHS + 1, f"{name}/{method}: {key} has {len(m[key])} values"
        for key in ("val_loss", "train_loss", "val_rel_error", "epoch_time"):
            assert all(v is not None and math.isfinite(v) for v in m[key]), (name, method, key)
        if method.startswith("slimtrain"):
            assert all(v is not None and math.isfinite(v) and v > 0 for v in m["sum_lambda"])
        else:  # no Lambda for end-to-end baselines: NaN, written as null
            assert m["sum_lambda"] == [None] * (EPOCHS + 1)
        assert m["epoch_time"][0] == 0.0 and all(t > 0 for t in m["epoch_time"][1:])
        assert m["val_loss"][-1] < m["val_loss"][0], f"{name}/{method} did not learn"
        assert m["best_val_loss"] == min(m["val_loss"])
        initial.append(m["val_loss"][0])
    # Every method starts from the same initial weights.
    np.testing.assert_allclose(initial, initial[0], rtol=1e-6)
    if name == "cdr":  # the simulations went to the temporary cache
        cache = Path(summary["config"]["data"]["cache"])
        assert cache.parent == cdr_cache and cache.is_file()


def test_training_run_plots(training_run: tuple[str, Path, dict[str, Any]]) -> None:
    name, out, _ = training_run
    assert_png(out / "loss.png")
    assert_png(out / "lambda.png")
    if name == "autoencoder":
        assert_png(out / "reconstructions.png")
    else:
        assert not (out / "reconstructions.png").exists()


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sweep") / "run"
    options = SweepOptions(experiment="peaks", training=TrainingOptions(epochs=1, batch_size=32),
                           quick=True, lrs=(1e-3, 1e-2), regs=(1e-10, 1e-1))
    return out, run_experiment("sweep", options, out).summary


def test_sweep_writes_grids_spreads_and_plot(sweep_run: tuple[Path, dict[str, Any]]) -> None:
    out, returned = sweep_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "sweep-peaks"
    assert summary["lrs"] == [1e-3, 1e-2] and summary["regs"] == [1e-10, 1e-1]
    header, rows = read_csv(out / "metrics.csv")
    assert header == ["method", "lr", "alpha", "final_val_loss", "best_val_loss"]
    assert len(rows) == 2 * 2 * 2  # methods x learning rates x regularizations
    for method in ("slimtrain", "adam"):
        grid = np.array(summary["final_val_loss"][method], dtype=float)
        best = np.array(summary["best_val_loss"][method], dtype=float)
        assert grid.shape == (2, 2) and best.shape == (2, 2)
        assert np.isfinite(grid).all() and (grid > 0).all()
        assert (best <= grid).all()
        # The spread computed independently, from the CSV rows.
        final = [float(r["final_val_loss"]) for r in rows if r["method"] == method]
        assert sorted(final) == sorted(grid.ravel().tolist())
        assert summary["spread"][method] == pytest.approx(max(final) / min(final), rel=1e-12)
        cells = {(float(r["lr"]), float(r["alpha"])) for r in rows if r["method"] == method}
        assert cells == {(lr, a) for lr in (1e-3, 1e-2) for a in (1e-10, 1e-1)}
    assert summary["spread_ratio_adam_over_slimtrain"] == pytest.approx(
        summary["spread"]["adam"] / summary["spread"]["slimtrain"], rel=1e-12
    )
    assert_png(out / "sweep.png")
    table = sweep_table(returned)
    assert "spread max/min of slimtrain" in table and "lr=0.01" in table


def test_sweep_rejects_a_bad_cell_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lr must be > 0"):
        SweepOptions(experiment="peaks", lrs=(1e-3, 0.0), regs=(0.0,))


def test_sweep_heatmap_panels_do_not_overlap(tmp_path: Path) -> None:
    grids = {"slimtrain": np.array([[1.0, 2.0], [math.nan, 3.0]]),
             "adam": np.array([[4.0, 5.0], [6.0, 70.0]])}
    fig = plots.plot_sweep_heatmaps(grids, [1e-3, 1e-2], [1e-10, 1e-1])
    fig.canvas.draw()
    ax0, ax1 = fig.axes[:2]
    first, second = ax0.get_tightbbox(), ax1.get_tightbbox()
    assert ax0.get_ylabel() == "learning rate" and ax1.get_ylabel() == ""
    assert first.x1 < second.x0, "the panels (with their labels) overlap"
    plots.save_figure(fig, tmp_path / "sweep.png")
    assert_png(tmp_path / "sweep.png")


def test_run_inverse_tiny(tmp_path: Path) -> None:
    options = InverseOptions(n=64, batch_size=16, epochs=3)
    summary = run_experiment("inverse", options, tmp_path).summary
    config = summary["config"]
    assert config["memory_depth"] == InverseOptions().memory_depth == 4
    assert config["batch_size"] == 16 and config["passes"] == 3
    assert config["steps"] == 3 * 4
    results = json.loads((tmp_path / "summary.json").read_text())["results"]
    assert set(results) == {"slimtik_sgcv", "tikhonov_best_fixed", "sgd"}
    for method, r in results.items():
        # x = 0 has relative error 1: every method must do better.
        assert 0 < r["rel_error"] < 1, method
    assert results["sgd"]["best_rel_error"] <= results["sgd"]["rel_error"]
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == ["step", "epoch", "slimtik_rel_error", "sum_lambda", "sgd_rel_error"]
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert all(math.isfinite(float(r["slimtik_rel_error"])) for r in rows)
    assert_png(tmp_path / "inverse.png")


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"memory_depth": -1}, {"epochs": 0}])
def test_inverse_options_validate(bad: dict[str, int]) -> None:
    (name, _), = bad.items()
    with pytest.raises(ValueError, match=name):
        InverseOptions(**bad)


def test_val_rel_error_is_that_of_the_whole_set() -> None:
    """Defect 5: ``||F - C||_F / ||C||_F`` of the validation set, not a mean of per-sample
    ratios (312 on peaks, where targets come near zero)."""
    setup = make_setup("peaks", quick=True)
    result = run_methods(setup, ("adam",), TrainingOptions(epochs=1, batch_size=32))["adam"]
    x = torch.stack([setup.val[i][0] for i in range(len(setup.val))])  # type: ignore[arg-type]
    c = torch.stack([setup.val[i][1] for i in range(len(setup.val))])  # type: ignore[arg-type]
    model = result.trainer.model.eval()
    with torch.no_grad():
        f = model(x.to(result.trainer.dtype)).double()
    expected = float(torch.linalg.norm(f - c.double()) / torch.linalg.norm(c.double()))
    assert result.history.records[-1]["val_rel_error"] == pytest.approx(expected, rel=1e-5)
    assert expected < 1.5
