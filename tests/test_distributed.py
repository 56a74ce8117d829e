"""Two gloo processes on 127.0.0.1 match one process on the same global batches."""

from __future__ import annotations

import datetime
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from slimtrain import SeparableModel, SlimTrain
from slimtrain.heads import head_adapter
from slimtrain.training.distributed import (
    data_parallel,
    end_process,
    free_local_port,
    launched_world_size,
    leave_process_group,
    stats_message_bytes,
)

STEPS = 4
LOCAL = 12  # samples per rank and step
CLASSES = 4
# squared-loss heads, and cross-entropy heads whose working targets each rank forms from its
# own shard (a Conv2d head with one class per pixel: its rows are pixels)
LOSS = {"linear": "squared", "conv_transpose": "squared",
        "ce_linear": "cross_entropy", "ce_conv2d": "cross_entropy"}


def _model(kind: str) -> SeparableModel:
    torch.manual_seed(0)
    if kind in ("linear", "ce_linear"):
        features = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 9), nn.Tanh())
        head: nn.Module = nn.Linear(9, 3 if kind == "linear" else CLASSES)
    elif kind == "ce_conv2d":
        features = nn.Sequential(nn.Linear(5, 3 * 4 * 4), nn.Tanh(), nn.Unflatten(1, (3, 4, 4)))
        head = nn.Conv2d(3, CLASSES, 3, padding=1)
    else:
        features = nn.Sequential(nn.Linear(5, 4 * 5 * 5), nn.Tanh(), nn.Unflatten(1, (4, 5, 5)))
        head = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)
    return SeparableModel(features, head).double()


def _data(kind: str, n: int):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    if kind.startswith("ce_"):
        shape = (n,) if kind == "ce_linear" else (n, 4, 4)
        return x, torch.randint(0, CLASSES, shape, generator=gen)
    shape = (n, 3) if kind == "linear" else (n, 2, 10, 10)
    y = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return x, y


def _train(kind: str, world: int, rank: int):
    model = _model(kind)
    if world > 1:
        data_parallel(model)
    trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-2),
                        loss=LOSS[kind], memory_depth=2, debug_distributed=world > 1)
    x, y = _data(kind, STEPS * LOCAL * 2)
    glob = LOCAL * 2
    for s in range(STEPS):
        xb, yb = x[s * glob : (s + 1) * glob], y[s * glob : (s + 1) * glob]
        if world > 1:
            xb, yb = xb[rank * LOCAL : (rank + 1) * LOCAL], yb[rank * LOCAL : (rank + 1) * LOCAL]
        trainer.step(xb, yb)
    features = model.features.module if world > 1 else model.features
    return {
        "head": [p.detach().clone() for p in model.head.parameters()],
        "theta": [p.detach().clone() for p in features.parameters()],
        "sum_lambda": trainer.sum_lambda,
    }


def _worker(rank: int, world: int, port: int, kind: str, out: str) -> None:
    torch.set_num_threads(1)  # two processes on a small machine: no OpenMP oversubscription
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    finished = False
    try:
        torch.save(_train(kind, world, rank), Path(out) / f"rank{rank}.pt")
        finished = True
    finally:
        leave_process_group(wait=finished)
    end_process()  # not the interpreter's shutdown: see end_process



@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", list(LOSS))
def test_two_processes_match_one(tmp_path, kind, free_port):
    single = _train(kind, 1, 0)
    mp.spawn(_worker, args=(2, free_port, kind, str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        multi = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert multi["sum_lambda"] == pytest.approx(single["sum_lambda"], rel=1e-10)
        for a, b in zip(multi["head"], single["head"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(multi["theta"], single["theta"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_message_size_formula():
    # p = 257, t = 1 (the autoencoder head): upper triangle + cross products + 3 scalars.
    assert stats_message_bytes(257, 1) == 8 * (257 * 258 // 2 + 257 + 3)
    # With its phase structure only the four 64 x 64 blocks' upper triangles and the bias
    # column (257 entries, corner included) travel.
    head = nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1)
    x = torch.randn(2, 16, 14, 14)
    structure = head_adapter(head).statistics(head, x, head(x).detach()).structure
    assert structure is not None
    assert stats_message_bytes(257, 1, structure) == 8 * (4 * 64 * 65 // 2 + 257 + 257 + 3)


def _bad_shard_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=30))
    finished = False
    try:
        model = data_parallel(_model("linear"))
        trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-2),
                            memory_depth=2)
        x, y = _data("linear", 3 * LOCAL * 2)
        shard = [(x[i : i + LOCAL], y[i : i + LOCAL]) for i in range(rank * LOCAL, len(x),
                                                                     2 * LOCAL)]
        trainer.step(*shard[0])
        before = {k: v.clone() for k, v in model.state_dict().items()}
        lam_before = trainer.sum_lambda
        xb, yb = shard[1]
        if rank == 1:
            yb = yb.clone()
            yb[0, 0] = float("nan")
        try:
            trainer.step(xb, yb)
            message = "no error"
        except ValueError as error:
            message = str(error)
        unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        trainer.step(*shard[2])  # both ranks go on together after the rejected step
        torch.save({"message": message, "unchanged": unchanged,
                    "lambda_kept": trainer.solver.n_steps == 2 and lam_before > 0},
                   Path(out) / f"rank{rank}.pt")
        finished = True
    finally:
        leave_process_group(wait=finished)
    end_process()  # not the interpreter's shutdown: see end_process


@pytest.mark.timeout(120)
def test_a_bad_shard_on_one_rank_stops_every_rank_without_hanging(tmp_path, free_port):
    mp.spawn(_bad_shard_worker, args=(2, free_port, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert "process 1 rejected" in results[0]["message"]
    assert "non-finite" in results[1]["message"] or "NaN" in results[1]["message"]
    assert all(r["unchanged"] and r["lambda_kept"] for r in results)


def test_misuse_under_a_process_group_is_caught(monkeypatch, caplog):
    """Built before init_process_group (no reducer): an error before anything changes; a
    feature extractor without DDP: a warning, once."""
    from slimtrain.training import distributed

    model = _model("linear")
    trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters()))  # no group yet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match="built before init_process_group"):
        trainer.step(*_data("linear", LOCAL))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.solver.n_steps == 0
    trainer.solver.reducer = lambda stats: stats  # a reducer, but theta not in DDP
    monkeypatch.setattr(distributed, "agree_batch_ok", lambda error, device=None: None)
    with caplog.at_level("WARNING", logger="slimtrain.training.trainers"):
        trainer.step(*_data("linear", LOCAL))
        trainer.step(*_data("linear", LOCAL))
    warnings = [r for r in caplog.records if "DistributedDataParallel" in r.getMessage()]
    assert len(warnings) == 1


def test_end_process_flushes_and_skips_the_interpreter_shutdown(tmp_path):
    """The status is the one given, buffered output and log records are written, atexit
    handlers (the interpreter's shutdown) do not run."""
    log = tmp_path / "worker.log"
    script = (
        "import atexit, logging, sys\n"
        "from slimtrain.training.distributed import end_process\n"
        f"logging.basicConfig(filename={str(log)!r}, level=logging.INFO)\n"
        "logging.getLogger('worker').info('all written')\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "sys.stdout.write('no newline yet')\n"
        "end_process(3)\n"
        "print('after end_process')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "no newline yet"
    assert "all written" in log.read_text()


@pytest.mark.parametrize(("code", "error"), [(256, ValueError), (-1, ValueError),
                                             ("0", TypeError), (True, TypeError)])
def test_end_process_refuses_a_bad_status_before_ending_anything(code, error):
    with pytest.raises(error, match="code"):
        end_process(code)  # still running: the check comes first


@pytest.mark.parametrize(("value", "size"), [(None, 1), ("1", 1), ("4", 4)])
def test_launched_world_size_reads_torchruns_variable(monkeypatch, value, size):
    if value is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", value)
    assert launched_world_size() == size


@pytest.mark.parametrize("value", ["0", "-2", "two", ""])
def test_launched_world_size_refuses_a_bad_variable(monkeypatch, value):
    monkeypatch.setenv("WORLD_SIZE", value)
    with pytest.raises(ValueError, match=f"WORLD_SIZE must be a positive integer.*{value!r}"):
        launched_world_size()


def test_free_local_port_can_be_bound():
    port = free_local_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # OSError (address in use) if it was not free
