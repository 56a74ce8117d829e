"""The command line end to end on tiny runs: options and their defaults from the registry,
options that do not apply, the output-folder rules (refuse, --resume, --overwrite), output-path
failures, and the launcher's checks. Each bad input is one clear line and a nonzero exit."""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from slimtrain import __version__, cli
from slimtrain.experiments import (
    METHODS,
    REGISTRY,
    Experiment,
    TrainingOptions,
    execute,
    report,
    run_methods,
)
from slimtrain.experiments import sweep as sweep_module
from slimtrain.experiments.inverse import InverseOptions
from slimtrain.experiments.kernel import KernelOptions
from slimtrain.experiments.runner import data_fingerprint
from slimtrain.experiments.setups import make_setup
from slimtrain.experiments.training import DataRunOptions, TrainingRunOptions
from slimtrain.training import distributed

pytestmark = pytest.mark.usefixtures("few_threads")

PEAKS = ["run", "peaks", "--quick", "--epochs", "1", "--batch-size", "40", "--no-progress"]


def run(*argv: str) -> int:
    return cli.main(list(argv))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def methods_of(out: Path) -> tuple[list[str], list[str]]:
    summary = json.loads((out / "summary.json").read_text())
    with (out / "metrics.csv").open(newline="") as handle:
        in_csv = sorted({row["method"] for row in csv.DictReader(handle)})
    return sorted(summary["methods"]), in_csv


def one_error_line(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("slimtrain")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- options from the registry --------------------------------------------------------------


def test_run_peaks_uses_the_experiment_defaults(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert run("run", "peaks", "--quick", "--epochs", "1", "--method", "slimtrain", "--out",
               str(out), "--no-progress") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["slimtrain"]
    training = summary["config"]["training"]
    assert training["epochs"] == 1
    assert training["batch_size"] == REGISTRY["peaks"].quick["batch_size"]  # type: ignore[index]
    defaults = TrainingOptions()
    for key in ("lr", "alpha", "device"):
        assert training[key] == getattr(defaults, key), key
    assert training["slimtik"]["memory_depth"] == defaults.slimtik.memory_depth
    printed = capsys.readouterr().out
    assert "slimtrain" in printed and "best val loss" in printed and str(out) in printed
    # no terminal: one line per epoch and method (defect 5)
    assert "peaks/slimtrain epoch 1/1: train loss" in printed


def test_help_shows_each_experiments_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in ((["run", "cdr"], "(default: 50; 4 with --quick)"),
                           (["run", "inverse"], "(default: 64)"),
                           (["sweep", "peaks"], "(default: 20; 3 with --quick)"),
                           (["demo"], "--overwrite")):
        with pytest.raises(SystemExit):
            run(*argv, "--help")
        assert expected in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        run("--version")
    assert capsys.readouterr().out.strip() == f"slimtrain {__version__}"


def test_options_built_from_the_command_line() -> None:
    def options(*argv: str) -> Any:
        return cli._options(cli.build_parser().parse_args(list(argv)))[2]

    assert options("run", "inverse") == InverseOptions()
    assert options("run", "inverse", "--memory-depth", "3", "--epochs", "2") == InverseOptions(
        memory_depth=3, epochs=2)
    assert options("run", "kernel") == KernelOptions()
    assert options("run", "kernel", "--kernel", "laplacian").kernel == "laplacian"
    cdr = options("run", "cdr", "--quick", "--memory-depth", "2")
    assert cdr == TrainingRunOptions(experiment="cdr", quick=True, training=TrainingOptions(
        epochs=4, batch_size=5, slimtik=TrainingOptions().slimtik.__class__(memory_depth=2)))
    assert options("run", "peaks", "--method", "adam, slimtrain").methods == ("adam",
                                                                             "slimtrain")
    assert options("run", "peaks", "--method", "all").methods == METHODS
    sweep = options("sweep", "autoencoder", "--quick")
    assert (sweep.experiment, sweep.training.epochs, sweep.training.batch_size) == (
        "autoencoder", 2, 32)


def test_a_bad_method_list_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("run", "peaks", "--method", "adam,bogus")
    assert exit_info.value.code == 2
    assert "bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag", "where"),
    [
        (["run", "inverse", "--lr", "0.1"], "--lr", "run inverse"),
        (["run", "inverse", "--method", "adam"], "--method", "run inverse"),
        (["run", "inverse", "--alpha", "0.5"], "--alpha", "run inverse"),
        (["run", "inverse", "--quick"], "--quick", "run inverse"),
        (["run", "inverse", "--resume"], "--resume", "run inverse"),
        (["run", "kernel", "--method", "all"], "--method", "run kernel"),
        (["run", "kernel", "--memory-depth", "3"], "--memory-depth", "run kernel"),
        (["sweep", "peaks", "--lr", "0.1"], "--lr", "sweep peaks"),
        (["sweep", "peaks", "--alpha", "0.1"], "--alpha", "sweep peaks"),
        (["run", "peaks", "--data", "somewhere"], "--data", "run peaks"),
        (["run", "cdr", "--kernel", "laplacian"], "--kernel", "run cdr"),
    ],
)
def test_options_that_do_not_apply_are_refused(
    argv: list[str], flag: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert f"{flag} does not apply to 'slimtrain {where}'" in capsys.readouterr().err


def test_autoencoder_without_data_says_so_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 5: it trained on 8x8 digits without a word."""
    notice = REGISTRY["autoencoder"].notice
    assert notice is not None and "8x8 digits" in str(notice(DataRunOptions(
        experiment="autoencoder")))
    assert notice(DataRunOptions(experiment="autoencoder", data=tmp_path)) is None

    def fake(*args: Any, **kwargs: Any) -> Any:
        return report.Result({"experiment": "autoencoder"}, [], {}, "TABLE")

    monkeypatch.setattr(cli, "run_experiment", fake)
    assert run("run", "autoencoder", "--out", str(tmp_path / "ae"), "--no-progress") == 0
    printed = capsys.readouterr().out.splitlines()
    assert "8x8 digits" in printed[0] and "--data" in printed[0]


def test_missing_data_folder_is_one_line(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert run("run", "autoencoder", "--data", "/nonexistent", "--out", str(tmp_path / "o"),
               "--no-progress") == 2
    one_error_line(capsys, "/nonexistent", "does not exist")


# --- the output folder ----------------------------------------------------------------------


def test_resume_continues_a_run_exactly(tmp_path: Path) -> None:
    def train(out: Path, epochs: int, *extra: str) -> dict[str, Any]:
        assert run("run", "peaks", "--quick", "--epochs", str(epochs), "--method",
                   "slimtrain,adam", "--out", str(out), "--no-progress", *extra) == 0
        return json.loads((out / "summary.json").read_text())["methods"]

    interrupted = tmp_path / "interrupted"
    train(interrupted, 1)
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir()) == [
        "adam.pt", "slimtrain.pt"]
    resumed = train(interrupted, 2, "--resume")
    straight = train(tmp_path / "straight", 2)
    for method in ("slimtrain", "adam"):
        assert resumed[method]["val_loss"] == straight[method]["val_loss"]
        assert resumed[method]["train_loss"] == straight[method]["train_loss"]
    assert resumed["slimtrain"]["sum_lambda"] == straight["slimtrain"]["sum_lambda"]


def test_resume_needs_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("run", "peaks", "--resume", "--no-progress") == 2
    one_error_line(capsys, "--resume continues the run in --out")


def test_results_are_never_lost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defects 2 and 3: a second run, a resume on other data, a resumed subset of methods."""
    out = tmp_path / "rs"
    assert run(*PEAKS, "--method", "slimtrain,adam", "--out", str(out)) == 0
    before = snapshot(out)
    capsys.readouterr()
    # a second run into the folder without --resume: refused, nothing changed
    assert run(*PEAKS, "--method", "slimtrain,adam", "--out", str(out)) == 2
    one_error_line(capsys, "already holds the results", "--resume", "--overwrite")
    # --resume with --quick dropped (other data): refused, nothing changed
    assert run("run", "peaks", "--epochs", "2", "--batch-size", "40", "--no-progress",
               "--resume", "--out", str(out)) == 2
    one_error_line(capsys, "quick")
    assert run(*PEAKS, "--seed", "3", "--resume", "--out", str(out)) == 2
    one_error_line(capsys, "seed")
    assert snapshot(out) == before
    # resuming one method keeps the other's results
    assert run(*PEAKS[:4], "2", *PEAKS[5:], "--method", "slimtrain", "--resume", "--out",
               str(out)) == 0
    assert methods_of(out) == (["adam", "slimtrain"], ["adam", "slimtrain"])
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["methods"]["slimtrain"]["val_loss"]) == 3
    assert len(summary["methods"]["adam"]["val_loss"]) == 2
    # --overwrite replaces the run
    assert run(*PEAKS, "--method", "adam", "--overwrite", "--out", str(out)) == 0
    assert methods_of(out) == (["adam"], ["adam"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["adam.pt"]


def test_a_resume_on_other_data_is_refused(tmp_path: Path) -> None:
    """Defect 2: the checkpoint's identity holds a fingerprint of the data."""
    quick, full = make_setup("peaks", quick=True), make_setup("peaks")
    assert data_fingerprint(quick) == data_fingerprint(make_setup("peaks", quick=True))
    assert data_fingerprint(quick) != data_fingerprint(full)
    options = TrainingOptions(epochs=1, batch_size=40)
    run_methods(quick, ("adam",), options, checkpoint_dir=tmp_path,
                identity={"data": data_fingerprint(quick)})
    with pytest.raises(ValueError, match="data=.* \\(now .*\\)"):
        run_methods(full, ("adam",), TrainingOptions(epochs=2, batch_size=40),
                    checkpoint_dir=tmp_path, resume=True,
                    identity={"data": data_fingerprint(full)})


def test_output_path_failures_are_one_line_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 4: a file as --out, an unwritable place, a checkpoint path that is a folder."""
    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("trained before the output folder was checked")

    monkeypatch.setitem(REGISTRY, "peaks", dataclasses.replace(REGISTRY["peaks"], run=no_training))
    afile = tmp_path / "afile"
    afile.write_text("x")
    start = time.perf_counter()
    assert run(*PEAKS, "--out", str(afile)) == 2
    one_error_line(capsys, "is a file")
    assert time.perf_counter() - start < 10
    assert run(*PEAKS, "--out", str(afile / "below")) == 2
    one_error_line(capsys, "cannot write")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert run(*PEAKS, "--out", str(locked / "run")) == 2
        one_error_line(capsys, "cannot write", "choose another --out")
    blocked = tmp_path / "blocked"
    (blocked / "checkpoints" / "adam.pt").mkdir(parents=True)
    assert run(*PEAKS, "--method", "adam", "--resume", "--out", str(blocked)) == 2
    one_error_line(capsys, "adam.pt", "not files")


def test_a_failed_write_is_one_line_and_stale_temporaries_go(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 4: a full disk; a killed checkpoint write left a ``.tmp`` file for ever."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / ".summary.json.abc.tmp", out / "checkpoints" / ".adam.pt.xyz.tmp"]
    for path in stale:
        path.write_bytes(b"partial")

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(execute, "write_result", full)
    assert run(*PEAKS, "--method", "adam", "--resume", "--out", str(out)) == 1
    one_error_line(capsys, "No space left on device", "--out")
    assert not any(path.exists() for path in stale)


def test_sweep_refuses_a_file_and_resumes_cell_by_cell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 3: the sweep trained the grid, then died on --out naming a file; no resume."""
    argv = ["sweep", "peaks", "--quick", "--epochs", "1", "--batch-size", "40", "--lrs",
            "0.001,0.01", "--regs", "0", "--no-progress"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert run(*argv, "--out", str(afile)) == 2
    one_error_line(capsys, "is a file")
    out = tmp_path / "sweep"
    assert run(*argv, "--out", str(out)) == 0
    first = json.loads((out / "summary.json").read_text())
    assert len(list((out / "checkpoints").glob("cell-*.json"))) == 2

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(sweep_module, "run_methods", no_training)
    capsys.readouterr()
    assert run(*argv, "--out", str(out), "--resume") == 0
    assert json.loads((out / "summary.json").read_text())["final_val_loss"] == first[
        "final_val_loss"]


# --- the launcher ---------------------------------------------------------------------------


def test_nproc_checks_the_batch_before_launching(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 5: ``run cdr --nproc 2`` failed inside torchrun (batch 5 is odd)."""
    def no_launch(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torchrun was started")

    monkeypatch.setattr(cli.subprocess, "Popen", no_launch)
    assert run("run", "cdr", "--nproc", "2", "--out", str(tmp_path / "o")) == 2
    one_error_line(capsys, "--batch-size 5 is not divisible by --nproc 2")
    assert not (tmp_path / "o").exists()


class _Ended(Exception):
    """Raised by the stand-in for end_process (the real one would end pytest)."""


@pytest.mark.parametrize(("world", "ended"), [("2", True), ("1", False), ("two", False)])
def test_a_torchrun_process_ends_through_end_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    world: str, ended: bool
) -> None:
    """Under torchrun (WORLD_SIZE above 1) the status goes to end_process instead of the
    interpreter's exit, which can abort a finished gloo run; elsewhere main returns it."""
    codes: list[int] = []

    def fake_end_process(code: int) -> None:
        codes.append(code)
        raise _Ended

    monkeypatch.setattr(distributed, "end_process", fake_end_process)
    monkeypatch.setenv("WORLD_SIZE", world)
    argv = ("run", "cdr", "--nproc", "0", "--out", str(tmp_path / "o"))  # refused: status 2
    if ended:
        with pytest.raises(_Ended):
            run(*argv)
        assert codes == [2]
    else:
        assert run(*argv) == 2
        assert codes == []
    one_error_line(capsys, "--nproc must be >= 1, found 0")  # was run as --nproc 1
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")
@pytest.mark.parametrize("argv", [
    ["run", "peaks", "--quick", "--epochs", "1", "--batch-size", "40"],
    # issue 11's acceptance command: the CDR network in float32, 2 epochs of batch 8
    ["run", "cdr", "--epochs", "2", "--batch-size", "8"],
], ids=["peaks", "cdr"])
def test_nproc_2_gives_the_single_process_losses(
    argv: list[str], tmp_path: Path, cdr_cache: Path
) -> None:
    """Defect 6 from the command line: the same global batches under --nproc 2, so the
    validation losses of every epoch agree to 1e-4 relative (float32 rounding only)."""
    argv = [*argv, "--method", "slimtrain,adam", "--no-progress"]
    assert run(*argv, "--out", str(tmp_path / "one")) == 0
    assert run(*argv, "--nproc", "2", "--out", str(tmp_path / "two")) == 0
    one, two = (json.loads((tmp_path / name / "summary.json").read_text())["methods"]
                for name in ("one", "two"))
    for method in ("slimtrain", "adam"):
        torch.testing.assert_close(two[method]["val_loss"], one[method]["val_loss"],
                                   rtol=1e-4, atol=0)


# --- a new experiment is one declaration ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ToyOptions:
    epochs: int = dataclasses.field(default=3, metadata={"help": "passes"})
    scale: float = dataclasses.field(default=0.5, metadata={"help": "a factor"})


def _run_toy(options: _ToyOptions, session: Any) -> Any:
    values = [options.scale * k for k in range(options.epochs)]
    return report.Result({"experiment": "toy", "values": values},
                         [{"epoch": k, "value": v} for k, v in enumerate(values)], {}, "TOY")


def test_a_declared_experiment_is_a_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(REGISTRY, "toy", Experiment("toy", "a toy", _ToyOptions, _run_toy))
    with pytest.raises(SystemExit):
        run("run", "toy", "--help")
    assert "a factor (default: 0.5)" in " ".join(capsys.readouterr().out.split())
    out = tmp_path / "toy"
    assert run("run", "toy", "--epochs", "2", "--scale", "2", "--out", str(out)) == 0
    assert json.loads((out / "summary.json").read_text())["values"] == [0.0, 2.0]
    assert json.loads((out / "run.json").read_text()) == {"declared": "toy", "epochs": 2,
                                                          "scale": 2.0}
    assert "TOY" in capsys.readouterr().out
    assert run("run", "toy", "--out", str(out)) == 2  # the folder rules hold for it too
