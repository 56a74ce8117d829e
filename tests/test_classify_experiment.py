"""``slimtrain run classify`` and ``slimtrain sweep classify`` end to end on ``--quick`` digits:
the files, accuracy columns that a recomputation from the saved model reproduces, the printed
table and notice, the sweep's grids, and the defaults that ``--help`` shows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slimtrain import SeparableModel, cli
from slimtrain.problems import digits_classification_data
from slimtrain.problems.networks import cnn_classifier_network
from slimtrain.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("few_threads")


def test_run_classify_quick_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert cli.main(["run", "classify", "--quick", "--epochs", "1", "--method",
                     "slimtrain,adam", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("classify: no --data given")  # the notice comes first
    assert "val accuracy %" in printed and "classify/slimtrain epoch 1/1" in printed
    for name in ("metrics.csv", "summary.json", "loss.png", "accuracy.png", "lambda.png"):
        assert (out / name).is_file(), name

    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["loss"] == "cross-entropy per image (nats)"
    assert summary["config"]["training"]["batch_size"] == 32
    assert summary["config"]["training"]["slimtik"]["memory_depth"] == 5
    with (out / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["epoch"]) for r in rows] == [
        ("slimtrain", "0"), ("slimtrain", "1"), ("adam", "0"), ("adam", "1")]
    for row in rows:
        for key in ("train_accuracy", "val_accuracy"):
            assert 0.0 <= float(row[key]) <= 1.0, (row["method"], key, row[key])
        assert row["val_rel_error"] == ""  # NaN for a classifier, written empty

    # recompute the final validation loss and accuracy from the saved model, independently
    data = digits_classification_data(flatten=False)
    x, y = data.val.tensors
    for method in ("slimtrain", "adam"):
        model = SeparableModel(*cnn_classifier_network(10, image_size=8))
        model.load_state_dict(load_checkpoint(out / "checkpoints" / f"{method}.pt")
                              ["trainer"]["model"])
        model.eval()
        with torch.no_grad():
            logits = model(x)
        accuracy = (logits.argmax(dim=1) == y).double().mean().item()
        loss = F.cross_entropy(logits, y).item()
        block = summary["methods"][method]
        assert block["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-9)
        assert block["val_loss"][-1] == pytest.approx(loss, rel=1e-4)
        assert len(block["train_accuracy"]) == 2
    assert summary["methods"]["slimtrain"]["val_accuracy"][-1] > 0.5  # it learns in one epoch


def test_sweep_classify_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "classify", "--quick", "--epochs", "1", "--lrs", "1e-3,1e-2",
                     "--regs", "0", "--out", str(out), "--no-progress"]) == 0
    assert "final val accuracy of slimtrain" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "sweep-classify"
    for key in ("final_val_loss", "best_val_loss", "final_val_accuracy"):
        assert sorted(summary[key]) == ["adam", "slimtrain"]
        for grid in summary[key].values():
            assert len(grid) == 2 and all(len(row) == 1 for row in grid)
    for method, grid in summary["final_val_accuracy"].items():
        values = [v for row in grid for v in row]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert summary["accuracy_range"][method] == pytest.approx(max(values) - min(values))
    assert (out / "sweep.png").is_file() and (out / "sweep_error.png").is_file()
    with (out / "metrics.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 4


def test_run_classify_help_shows_its_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--epochs EPOCHS epochs (default: 10; 2 with --quick)",
                     "(default: 32)", "slimTik memory depth r (earlier batches kept) (default: 5)",
                     "(default: 0.001)", "--data", "cross-entropy"):
        assert expected in text, expected
