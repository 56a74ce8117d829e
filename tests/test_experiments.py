"""End-to-end runs of the experiments at a tiny size: the files each writes (``metrics.csv``,
``summary.json``, PNG plots) and their contents, the sweep's grids and spreads, the inverse
problem, and the command line (defaults per experiment, options that do not apply, errors).

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

from slimtrain import cli, experiments, plots
from slimtrain.experiments import (
    METHODS,
    RunConfig,
    experiment_defaults,
    run_experiment,
    run_inverse,
    run_sweep,
    sweep_table,
)
from slimtrain.experiments.inverse import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MEMORY_DEPTH,
    DEFAULT_PASSES,
)

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


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One intra-op thread: the tensors here are tiny, and on a shared machine with few cores
    torch's thread pool made the autoencoder run 10x slower (measured: 30 s against 3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A temporary CDR cache, also as ``$SLIMTRAIN_CACHE`` for the code paths (the CLI) that
    take no ``cache_dir``."""
    path = tmp_path_factory.mktemp("cdr-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLIMTRAIN_CACHE", str(path))
        yield path


@pytest.fixture(scope="module", params=list(RUNS))
def training_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> tuple[str, Path, dict[str, Any]]:
    name = request.param
    out = tmp_path_factory.mktemp(name)
    summary = run_experiment(
        name, RUNS[name], RunConfig(epochs=EPOCHS, batch_size=BATCH[name]), out_dir=out,
        quick=True, progress=False, cache_dir=cache_dir,
    )
    return name, out, summary


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
    training_run: tuple[str, Path, dict[str, Any]], cache_dir: Path
) -> None:
    name, out, _ = training_run
    summary = json.loads((out / "summary.json").read_text())
    assert {"experiment", "config", "methods"} <= summary.keys()
    assert summary["experiment"] == name
    assert summary["config"]["epochs"] == EPOCHS
    assert summary["config"]["batch_size"] == BATCH[name]
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
        assert cache.parent == cache_dir and cache.is_file()


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
    out = tmp_path_factory.mktemp("sweep")
    summary = run_sweep("peaks", RunConfig(epochs=1, batch_size=32), lrs=[1e-3, 1e-2],
                        regs=[1e-10, 1e-1], out_dir=out, quick=True, progress=False)
    return out, summary


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
        run_sweep("peaks", RunConfig(epochs=1), lrs=[1e-3, 0.0], regs=[0.0], out_dir=tmp_path,
                  quick=True, progress=False)
    assert not (tmp_path / "summary.json").exists()


def test_sweep_heatmap_panels_do_not_overlap(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    figures = []
    save = plots._save

    def keep(fig: Any, path: Any) -> Path:
        fig.canvas.draw()
        figures.append([ax.get_tightbbox() for ax in fig.axes[:2]] + fig.axes[:2])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    grids = {"slimtrain": np.array([[1.0, 2.0], [math.nan, 3.0]]),
             "adam": np.array([[4.0, 5.0], [6.0, 70.0]])}
    plots.plot_sweep_heatmaps(grids, [1e-3, 1e-2], [1e-10, 1e-1], tmp_path / "sweep.png")
    first, second, ax0, ax1 = figures[0]
    assert ax0.get_ylabel() == "learning rate" and ax1.get_ylabel() == ""
    assert first.x1 < second.x0, "the panels (with their labels) overlap"
    assert_png(tmp_path / "sweep.png")


def test_run_inverse_tiny(tmp_path: Path) -> None:
    summary = run_inverse(out_dir=tmp_path, n=64, batch_size=16, epochs=3, progress=False)
    config = summary["config"]
    assert config["memory_depth"] == DEFAULT_MEMORY_DEPTH  # the function's own default
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
def test_run_inverse_validates(tmp_path: Path, bad: dict[str, int]) -> None:
    (name, _), = bad.items()
    with pytest.raises(ValueError, match=name):
        run_inverse(out_dir=tmp_path, n=32, progress=False, **bad)


# --- command line -------------------------------------------------------------------------


def test_cli_run_peaks_uses_the_experiment_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = cli.main(["run", "peaks", "--quick", "--epochs", "1", "--method", "slimtrain",
                     "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["slimtrain"]
    config = summary["config"]
    assert config["epochs"] == 1
    assert config["batch_size"] == experiment_defaults("peaks", quick=True)["batch_size"]
    defaults = RunConfig()
    for key in ("lr", "alpha", "memory_depth", "initial_lambda", "device"):
        assert config[key] == getattr(defaults, key), key
    assert len(summary["methods"]["slimtrain"]["val_loss"]) == 2
    printed = capsys.readouterr().out
    assert "slimtrain" in printed and "best val loss" in printed and str(out) in printed


def test_cli_resume_continues_a_run_exactly(tmp_path: Path) -> None:
    def run(out: Path, epochs: int, *extra: str) -> dict[str, Any]:
        code = cli.main(["run", "peaks", "--quick", "--epochs", str(epochs), "--method",
                         "slimtrain,adam", "--out", str(out), "--no-progress", *extra])
        assert code == 0
        return json.loads((out / "summary.json").read_text())["methods"]

    interrupted = tmp_path / "interrupted"
    run(interrupted, 1)
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir()) == [
        "adam.pt", "slimtrain.pt"]
    resumed = run(interrupted, 2, "--resume")
    straight = run(tmp_path / "straight", 2)
    for method in ("slimtrain", "adam"):
        assert resumed[method]["val_loss"] == straight[method]["val_loss"]
        assert resumed[method]["train_loss"] == straight[method]["train_loss"]
    assert resumed["slimtrain"]["sum_lambda"] == straight["slimtrain"]["sum_lambda"]


def test_cli_resume_needs_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "peaks", "--resume", "--no-progress"])
    assert exit_info.value.code == 2
    assert "--resume continues the run in --out" in capsys.readouterr().err


def _record_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[dict[str, Any]]:
    """Replace ``experiments.<name>`` by a fake that records its keyword arguments."""
    calls: list[dict[str, Any]] = []

    def fake(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return {"experiment": "fake"}

    monkeypatch.setattr(experiments, name, fake)
    return calls


def test_cli_inverse_uses_run_inverse_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = _record_calls(monkeypatch, "run_inverse")
    assert cli.main(["run", "inverse", "--out", str(tmp_path), "--no-progress"]) == 0
    assert calls[-1]["memory_depth"] is None  # None: run_inverse's own default
    assert calls[-1]["batch_size"] is None and calls[-1]["epochs"] is None
    assert cli.main(["run", "inverse", "--out", str(tmp_path), "--no-progress",
                     "--memory-depth", "3", "--batch-size", "32", "--epochs", "2"]) == 0
    assert (calls[-1]["memory_depth"], calls[-1]["batch_size"], calls[-1]["epochs"]) == (3, 32, 2)
    capsys.readouterr()


def test_cli_kernel_passes_only_the_given_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = _record_calls(monkeypatch, "run_kernel_experiment")
    assert cli.main(["run", "kernel", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "epochs" not in calls[-1] and "kernel" not in calls[-1]  # the function's defaults
    assert calls[-1]["dataset"] == "digits"
    assert cli.main(["run", "kernel", "--out", str(tmp_path), "--no-progress", "--epochs", "3",
                     "--kernel", "laplacian"]) == 0
    assert (calls[-1]["epochs"], calls[-1]["kernel"]) == (3, "laplacian")
    capsys.readouterr()


def test_cli_inverse_end_to_end_records_depth_4(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "inverse", "--epochs", "1", "--out", str(tmp_path),
                     "--no-progress"]) == 0
    config = json.loads((tmp_path / "summary.json").read_text())["config"]
    assert config["memory_depth"] == DEFAULT_MEMORY_DEPTH == 4
    assert config["batch_size"] == DEFAULT_BATCH_SIZE
    assert config["passes"] == 1 != DEFAULT_PASSES
    assert "slimTik + sGCV" in capsys.readouterr().out


def test_cli_missing_data_folder_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["run", "autoencoder", "--data", "/nonexistent", "--out", str(tmp_path),
                     "--no-progress"])
    assert code != 0
    err = capsys.readouterr().err
    assert "slimtrain: error:" in err and "/nonexistent" in err and "does not exist" in err


@pytest.mark.parametrize(
    ("argv", "flag", "where"),
    [
        (["run", "inverse", "--lr", "0.1"], "--lr", "run inverse"),
        (["run", "inverse", "--method", "adam"], "--method", "run inverse"),
        (["run", "inverse", "--alpha", "0.5"], "--alpha", "run inverse"),
        (["run", "inverse", "--quick"], "--quick", "run inverse"),
        (["run", "kernel", "--method", "all"], "--method", "run kernel"),
        (["run", "kernel", "--memory-depth", "3"], "--memory-depth", "run kernel"),
        (["sweep", "peaks", "--lr", "0.1"], "--lr", "sweep peaks"),
        (["sweep", "peaks", "--alpha", "0.1"], "--alpha", "sweep peaks"),
        (["run", "peaks", "--data", "somewhere"], "--data", "run peaks"),
        (["run", "cdr", "--kernel", "laplacian"], "--kernel", "run cdr"),
    ],
)
def test_cli_rejects_options_that_do_not_apply(
    argv: list[str], flag: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} does not apply to 'slimtrain {where}'" in err


def test_cli_method_lists() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["run", "peaks", "--method", "all"]).method == list(METHODS)
    args = parser.parse_args(["run", "peaks", "--method", "adam, slimtrain"])
    assert args.method == ["adam", "slimtrain"]
    assert parser.parse_args(["run", "peaks"]).method is None  # filled in as all by main
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "peaks", "--method", "adam,bogus"])
