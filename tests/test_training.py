"""SlimTrain / GradientTrainer / fit against autograd references, exact resume, bad input."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimtrain import (
    Checkpoint,
    CSVLogger,
    GradientTrainer,
    JSONLogger,
    SeparableModel,
    SlimTik,
    SlimTrain,
    TensorBoardLogger,
    fit,
)
from slimtrain.heads import head_adapter
from slimtrain.training import ProgressBar, squared_loss


def _features(seed: int, d_in: int = 4, width: int = 12, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()).to(
        dtype
    )


def _regression_data(n: int, seed: int = 0, d_in: int = 4, t: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d_in, generator=gen) * 2 - 1
    A = torch.randn(d_in, t, generator=gen)
    y = torch.sin(2 * x @ A) + 0.5 * (x**2) @ torch.ones(d_in, t) / d_in
    return x, y


def _loaders(seed: int = 0, n_train: int = 512, n_val: int = 256, batch: int = 32):
    x, y = _regression_data(n_train + n_val, seed)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=batch, shuffle=True,
                       generator=gen)
    val = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=128)
    return train, val


def _slimtrain(seed: int = 0, lr: float = 1e-3, **options) -> SlimTrain:
    model = SeparableModel(_features(seed), nn.Linear(12, 3))
    opt = torch.optim.Adam(model.feature_parameters(), lr=lr)
    return SlimTrain(model, opt, **options)


def test_head_parameters_are_solved_not_optimized():
    model = SeparableModel(_features(0), nn.Linear(12, 3))
    assert all(not p.requires_grad for p in model.head.parameters())
    with pytest.raises(ValueError, match="feature_parameters"):
        SlimTrain(model, torch.optim.Adam(model.parameters()))
    trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters()))
    held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not held & {id(p) for p in model.head.parameters()}
    with pytest.raises(TypeError, match="SeparableModel"):
        SlimTrain(nn.Linear(2, 2), torch.optim.Adam(nn.Linear(2, 2).parameters()))
    with pytest.raises(TypeError, match="Linear"):
        SeparableModel(_features(0), nn.Conv1d(12, 3, 1))


def test_step_gradient_equals_gradient_with_new_w_fixed():
    trainer = _slimtrain(0)
    trainer.optimizer = torch.optim.SGD(trainer.model.feature_parameters(), lr=0.0)
    x, y = _regression_data(64, seed=1)
    before = copy.deepcopy(trainer.model)
    info = trainer.step(x, y)
    # theta is unchanged (lr 0), W is the slimTik solution: recompute the gradient by hand.
    reference = copy.deepcopy(trainer.model)
    reference.zero_grad(set_to_none=True)
    for p in reference.features.parameters():
        p.grad = None
    loss = squared_loss(reference(x), y)
    grads = torch.autograd.grad(loss, list(reference.features.parameters()))
    for p, g in zip(trainer.model.features.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g)
    assert info["loss"] == pytest.approx(float(loss.detach()), rel=1e-6)
    # and W is exactly what SlimTik gives on the explicit rows of this batch
    solver = SlimTik()
    feats = before.features(x)
    adapter = head_adapter(before.head)
    Z, C = adapter.design(before.head, feats.detach(), y)
    W_ref, info_ref = solver.step(adapter.get_weight(before.head).double(), Z.double(), C.double())
    torch.testing.assert_close(adapter.get_weight(trainer.model.head).double(), W_ref,
                               rtol=1e-5, atol=1e-6)
    assert info["sum_lambda"] == pytest.approx(info_ref.sum_lambda, rel=1e-6)


def test_slimtrain_beats_adam_after_one_epoch_and_both_decrease():
    results = {}
    for method in ("slimtrain", "adam"):
        train, val = _loaders(seed=3)
        if method == "slimtrain":
            trainer = _slimtrain(3)
        else:
            model = SeparableModel(_features(3), nn.Linear(12, 3))
            trainer = GradientTrainer(model, torch.optim.Adam(model.parameters(), lr=1e-3))
        results[method] = fit(trainer, train, val, epochs=4).column("val_loss")
    slim, adam = results["slimtrain"], results["adam"]
    assert slim[1] < adam[1]
    for curve in (slim, adam):  # both keep improving after the first epoch
        assert min(curve[2:]) < curve[1] < curve[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resume_is_bit_identical(tmp_path, dtype):
    def run(epochs, resume=None, ckpt=None):
        torch.manual_seed(123)  # global RNG must be restored from the checkpoint on resume
        train, val = _loaders(seed=5)
        model = SeparableModel(_features(5, dtype=dtype), nn.Linear(12, 3).to(dtype))
        trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-2))
        callbacks = [Checkpoint(ckpt)] if ckpt else []
        history = fit(trainer, train, val, epochs=epochs, callbacks=callbacks, resume=resume)
        return trainer, history

    full, full_history = run(4)
    ckpt = tmp_path / "run.pt"
    run(2, ckpt=ckpt)
    for _ in range(3):  # disturb every RNG the resumed run must not depend on
        torch.rand(7)
    resumed, resumed_history = run(4, resume=ckpt)
    for (k, a), (_, b) in zip(full.model.state_dict().items(),
                              resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert full.sum_lambda == resumed.sum_lambda
    strip = [{k: v for k, v in r.items() if k != "epoch_time"} for r in full_history.records]
    strip2 = [{k: v for k, v in r.items() if k != "epoch_time"} for r in resumed_history.records]
    assert strip == strip2 or all(
        all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)
        for a, b in zip(strip, strip2, strict=True)
    )
    assert full_history.best_epoch == resumed_history.best_epoch


def test_checkpoint_loads_weights_only_and_corrupt_file_is_rejected(tmp_path):
    train, val = _loaders(seed=6, n_train=128)
    trainer = _slimtrain(6)
    ckpt = tmp_path / "c.pt"
    fit(trainer, train, val, epochs=1, callbacks=[Checkpoint(ckpt)])
    data = torch.load(ckpt, weights_only=True)
    assert data["epoch"] == 1 and "solver" in data["trainer"]
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file

    fresh = _slimtrain(7)
    before = copy.deepcopy(fresh.state_dict())
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(ValueError, match="could not be read"):
        fit(fresh, train, val, epochs=2, resume=corrupt)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit(fresh, train, val, epochs=2, resume=tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="expected the keys"):
        fit(fresh, train, val, epochs=2, resume=foreign)
    _assert_state_equal(before, fresh.state_dict())


def _assert_state_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_state_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _assert_state_equal(u, v)
    else:
        assert a == b


@pytest.mark.parametrize(
    ("make_batch", "error", "match"),
    [
        (lambda x, y: (x.index_fill(0, torch.tensor([0]), float("nan")), y), ValueError, "x must"),
        (lambda x, y: (x, y.index_fill(0, torch.tensor([1]), float("inf"))), ValueError, "y must"),
        (lambda x, y: (x, y[:-1]), ValueError, "batch"),
        (lambda x, y: (x, y[:, :2]), ValueError, "targets"),
        (lambda x, y: (x, y.long()), TypeError, "floating"),
    ],
)
def test_bad_batch_leaves_everything_unchanged(make_batch, error, match):
    trainer = _slimtrain(8)
    trainer.model.features.append(nn.BatchNorm1d(12))  # a buffer the forward would update
    trainer.model.features[-1].to(torch.float32)
    x, y = _regression_data(32, seed=8)
    trainer.step(x, y)
    before = copy.deepcopy(trainer.state_dict())
    with pytest.raises(error, match=match):
        trainer.step(*make_batch(x.clone(), y.clone()))
    _assert_state_equal(before, trainer.state_dict())


def test_gradient_trainer_needs_every_parameter_and_trains_the_head():
    model = SeparableModel(_features(9), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="lacks"):
        GradientTrainer(model, torch.optim.Adam(model.feature_parameters()))
    trainer = GradientTrainer(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    head_before = model.head.weight.clone()
    x, y = _regression_data(32, seed=9)
    trainer.step(x, y)
    assert not torch.equal(head_before, model.head.weight)


@pytest.mark.parametrize("name", ["prodigy", "schedulefree"])
def test_learning_rate_free_baselines_run_through_fit(name):
    import prodigyopt
    import schedulefree

    train, val = _loaders(seed=10, n_train=256)
    model = SeparableModel(_features(10), nn.Linear(12, 3))
    if name == "prodigy":
        opt = prodigyopt.Prodigy(model.parameters(), lr=1.0)
    else:
        opt = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-3)
    history = fit(GradientTrainer(model, opt), train, val, epochs=3)
    losses = history.column("val_loss")
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_slimtrain_with_prodigy_on_theta():
    import prodigyopt

    train, val = _loaders(seed=11, n_train=256)
    model = SeparableModel(_features(11), nn.Linear(12, 3))
    trainer = SlimTrain(model, prodigyopt.Prodigy(model.feature_parameters(), lr=1.0))
    losses = fit(trainer, train, val, epochs=2).column("val_loss")
    assert losses[-1] < losses[0]


def test_callbacks_write_files(tmp_path):
    train, val = _loaders(seed=12, n_train=128)
    trainer = _slimtrain(12)
    history = fit(
        trainer, train, val, epochs=2,
        callbacks=[ProgressBar(disable=True), CSVLogger(tmp_path / "m.csv", {"method": "slim"}),
                   JSONLogger(tmp_path / "h.json"), TensorBoardLogger(tmp_path / "tb")],
    )
    lines = (tmp_path / "m.csv").read_text().strip().splitlines()
    assert lines[0].startswith("method,epoch,train_loss")
    assert len(lines) == 1 + 3  # epochs 0, 1, 2
    payload = json.loads((tmp_path / "h.json").read_text())
    assert len(payload["records"]) == 3
    assert payload["best_epoch"] == history.best_epoch
    assert payload["records"][2]["sum_lambda"] == pytest.approx(trainer.sum_lambda)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert trainer.best_state_dict is not None


def test_best_state_is_the_best_validation_iterate():
    train, val = _loaders(seed=13, n_train=256)
    trainer = _slimtrain(13, lr=5e-2)
    history = fit(trainer, train, val, epochs=3)
    model = copy.deepcopy(trainer.model)
    model.load_state_dict(trainer.best_state_dict)
    trainer.model = model
    from slimtrain.training import evaluate

    loss, _ = evaluate(trainer, val)
    assert loss == pytest.approx(history.best_val_loss, rel=1e-6)
    assert history.best_val_loss == min(history.column("val_loss"))


def test_float64_network():
    train, val = _loaders(seed=14, n_train=128)
    model = SeparableModel(_features(14, dtype=torch.float64), nn.Linear(12, 3).double())
    trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-3))
    history = fit(trainer, train, val, epochs=1)
    assert model.head.weight.dtype == torch.float64
    assert history.records[1]["val_loss"] < history.records[0]["val_loss"]
