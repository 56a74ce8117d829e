"""The experiment runner under torch.distributed and across an interruption: the device of each
rank, rank-0-only writing, and checkpoint/resume of ``run_methods``."""

from __future__ import annotations

import dataclasses
import math
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from slimtrain.experiments import kernel as kernel_experiment
from slimtrain.experiments import make_setup, runner
from slimtrain.experiments.runner import MethodResult, RunConfig, run_methods
from slimtrain.training import distributed as dist_utils

# ------------------------------------------------------------------------- device per rank


@pytest.mark.parametrize(
    ("device", "local_rank", "expected"),
    [("cuda", "3", "cuda:3"), ("cuda:0", "1", "cuda:1"), ("cuda:2", "0", "cuda:0"),
     ("cpu", "1", "cpu")],
)
def test_rank_device_is_the_local_rank_gpu_under_distributed(
    monkeypatch: pytest.MonkeyPatch, device: str, local_rank: str, expected: str
) -> None:
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: True)
    assert runner._rank_device(device) == expected


def test_rank_device_without_process_group_keeps_the_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: False)
    for device in ("cpu", "cuda", "cuda:1"):
        assert runner._rank_device(device) == device


def test_rank_device_rejects_a_bad_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(ValueError, match="LOCAL_RANK must be a non-negative int .* 'one'"):
        runner._rank_device("cuda")


def test_make_trainer_places_model_and_ddp_on_the_local_rank_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rank 2 of a CUDA run: model to cuda:2 and DDP device_ids=[2] (recorded, no GPU needed)."""
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(dist_utils, "is_distributed", lambda: True)
    placed: list[Any] = []
    wrapped: list[dict[str, Any]] = []

    def fake_to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        placed.append(args[0] if args else kwargs.get("device"))
        return self

    def fake_data_parallel(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
        wrapped.append(kwargs)
        return model

    monkeypatch.setattr(runner.SeparableModel, "to", fake_to)
    monkeypatch.setattr(dist_utils, "data_parallel", fake_data_parallel)
    config = RunConfig(epochs=1)
    object.__setattr__(config, "device", "cuda")  # RunConfig refuses CUDA on this machine
    features, head = make_setup("peaks", quick=True).build()
    runner.make_trainer("adam", features, head, config)
    assert placed == ["cuda:2"]
    assert wrapped == [{"device_ids": [2]}]


# ------------------------------------------------------------------------- kernel experiment


def test_kernel_experiment_computes_and_writes_on_rank_0_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(kernel_experiment, "is_main_process", lambda: False)
    monkeypatch.setattr(kernel_experiment, "rank", lambda: 1)

    def no_data(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("rank 1 loaded the data")

    monkeypatch.setattr(kernel_experiment, "load_kernel_dataset", no_data)
    out = tmp_path / "kernel"
    summary = kernel_experiment.run_kernel_experiment(out_dir=out, epochs=2, progress=False)
    assert summary["experiment"] == "kernel" and "rank 0 only" in summary["skipped"]
    assert not out.exists()
    with pytest.raises(ValueError, match="epochs must be a positive int"):  # checked everywhere
        kernel_experiment.run_kernel_experiment(out_dir=out, epochs=0)


# ------------------------------------------------------------------------- checkpoint / resume

METHODS = ("slimtrain", "adam")


def _config(epochs: int) -> RunConfig:
    return RunConfig(epochs=epochs, batch_size=20, lr=1e-2, memory_depth=2)


def _assert_same_records(a: list[dict[str, float]], b: list[dict[str, float]]) -> None:
    """Bitwise equal epoch records (NaN equals NaN), timing aside."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert set(ra) == set(rb)
        for key in ra:
            if key == "epoch_time":
                continue
            same = (math.isnan(ra[key]) and math.isnan(rb[key])) or ra[key] == rb[key]
            assert same, (key, ra, rb)


def _assert_same_run(a: MethodResult, b: MethodResult) -> None:
    """Bitwise: parameters, records (losses, Lambda; all but timing), Lambda trace, best state."""
    ha, hb = a.history, b.history
    _assert_same_records(ha.records, hb.records)
    assert (ha.best_epoch, ha.best_val_loss) == (hb.best_epoch, hb.best_val_loss)
    assert a.lambda_trace == b.lambda_trace
    sa, sb = a.trainer.model.state_dict(), b.trainer.model.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    best_a, best_b = a.trainer.best_state_dict, b.trainer.best_state_dict
    assert best_a is not None and best_b is not None
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_resumed_run_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    setup = make_setup("peaks", quick=True)
    straight = run_methods(setup, METHODS, _config(3), progress=False)
    first = run_methods(setup, METHODS, _config(2), progress=False, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adam.pt", "slimtrain.pt"]
    assert all(len(r.history.records) == 3 for r in first.values())  # epochs 0..2
    resumed = run_methods(setup, METHODS, _config(3), progress=False, checkpoint_dir=tmp_path,
                          resume=True)
    for method in METHODS:
        assert len(resumed[method].history.records) == 4  # epochs 0..3
        _assert_same_run(resumed[method], straight[method])
    assert len(resumed["slimtrain"].lambda_trace) == 3 * 400 // 20
    # the checkpoint now holds epoch 3; resuming at the end trains nothing and changes nothing
    again = run_methods(setup, ("slimtrain",), _config(3), progress=False,
                        checkpoint_dir=tmp_path, resume=True)
    _assert_same_run(again["slimtrain"], straight["slimtrain"])


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path: Path) -> None:
    setup = make_setup("peaks", quick=True)
    fresh = run_methods(setup, ("adam",), _config(1), progress=False,
                        checkpoint_dir=tmp_path / "new", resume=True)
    plain = run_methods(setup, ("adam",), _config(1), progress=False)
    _assert_same_run(fresh["adam"], plain["adam"])
    assert (tmp_path / "new" / "adam.pt").is_file()


def test_resume_refuses_another_run(tmp_path: Path) -> None:
    setup = make_setup("peaks", quick=True)
    run_methods(setup, ("adam",), _config(1), progress=False, checkpoint_dir=tmp_path)
    other = dataclasses.replace(_config(2), lr=5e-3, seed=1)
    with pytest.raises(ValueError, match=r"written with lr=0.01 \(now 0.005\), seed=0 \(now 1\)"):
        run_methods(setup, ("adam",), other, progress=False, checkpoint_dir=tmp_path,
                    resume=True)
    (tmp_path / "slimtrain.pt").write_bytes((tmp_path / "adam.pt").read_bytes())
    with pytest.raises(ValueError, match="holds method 'adam' on 1 process.*'slimtrain'"):
        run_methods(setup, ("slimtrain",), _config(2), progress=False,
                    checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        run_methods(setup, ("adam",), _config(2), progress=False, resume=True)


# ------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _summary(result: MethodResult) -> dict[str, Any]:
    model = result.trainer.model
    return {
        "records": [{k: v for k, v in r.items() if k != "epoch_time"}
                    for r in result.history.records],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)  # two processes on a small machine: no OpenMP oversubscription
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        out = Path(folder)
        setup = make_setup("peaks", quick=True)
        methods = ("slimtrain",)
        report: dict[str, Any] = {}
        straight = run_methods(setup, methods, _config(2), progress=False)
        # a folder per rank: only rank 0's gets a file, and resuming from it is refused
        own = out / f"own{rank}"
        run_methods(setup, methods, _config(1), progress=False, checkpoint_dir=own)
        try:
            run_methods(setup, methods, _config(2), progress=False, checkpoint_dir=own,
                        resume=True)
        except ValueError as error:
            report["refused"] = str(error)
        shared = out / "shared"
        run_methods(setup, methods, _config(1), progress=False, checkpoint_dir=shared)
        resumed = run_methods(setup, methods, _config(2), progress=False,
                              checkpoint_dir=shared, resume=True)
        report["straight"] = _summary(straight["slimtrain"])
        report["resumed"] = _summary(resumed["slimtrain"])
        torch.save(report, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_processes_write_on_rank_0_and_resume_in_the_same_configuration(
    tmp_path: Path,
) -> None:
    """DDP's ``features.module.*`` keys round-trip; only rank 0 writes the checkpoint."""
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["own0/slimtrain.pt", "rank0.pt", "rank1.pt", "shared/slimtrain.pt"]
    saved = torch.load(tmp_path / "shared" / "slimtrain.pt", weights_only=True)
    assert saved["run"]["world_size"] == 2 and saved["epoch"] == 2
    assert any(k.startswith("features.module.") for k in saved["trainer"]["model"])
    for result in results:
        assert "exists on 1 of 2 processes" in result["refused"]
        _assert_same_records(result["resumed"]["records"], result["straight"]["records"])
        for key, value in result["straight"]["state"].items():
            assert torch.equal(result["resumed"]["state"][key], value), key
    for key, value in results[0]["resumed"]["state"].items():  # every rank holds the same model
        assert torch.equal(results[1]["resumed"]["state"][key], value), key
