"""SlimTrain / GradientTrainer / fit against autograd references, exact resume, bad input."""

from __future__ import annotations

import copy
import json
import logging
import math
import random

import numpy as np
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


def _conv_model(head: str) -> SeparableModel:
    torch.manual_seed(5)
    features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh())
    heads = {"conv2d": nn.Conv2d(4, 3, 3, stride=2, padding=1),
             "convtranspose2d": nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1)}
    return SeparableModel(features, heads[head]).double()


@pytest.mark.parametrize("head", ["conv2d", "convtranspose2d"])
def test_conv_head_step_gradient_and_w_equal_references(head):
    """For convolutional heads (BatchNorm in the features): W is slimTik on the explicit
    rows, and theta's gradient is the loss gradient with that W fixed."""
    model = _conv_model(head)
    trainer = SlimTrain(model, torch.optim.SGD(model.feature_parameters(), lr=0.0),
                        memory_depth=2)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, 2, 7, 7, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = torch.randn(model(x).shape, generator=gen, dtype=torch.float64)
    before = copy.deepcopy(model)
    solver = SlimTik(memory_depth=2)
    adapter = head_adapter(before.head)
    W_ref = adapter.get_weight(before.head)
    for _ in range(2):
        info = trainer.step(x, y)
        Z, C = adapter.design(before.head, before.features(x).detach(), y)
        W_ref, info_ref = solver.step(W_ref, Z, C, n_samples=x.shape[0])
        torch.testing.assert_close(adapter.get_weight(model.head), W_ref, rtol=1e-9, atol=1e-11)
        assert info["sum_lambda"] == pytest.approx(info_ref.sum_lambda, rel=1e-9)
    reference = copy.deepcopy(model)
    loss = squared_loss(reference(x), y)
    grads = torch.autograd.grad(loss, list(reference.features.parameters()))
    for p, g in zip(model.features.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    assert info["loss"] == pytest.approx(float(loss.detach()), rel=1e-10)


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


def _assert_same_run(full, full_history, resumed, resumed_history):
    """Bit-identical parameters and buffers, Lambda and history (but the timings)."""
    for (k, a), (_, b) in zip(full.model.state_dict().items(),
                              resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert full.sum_lambda == resumed.sum_lambda
    assert len(full_history.records) == len(resumed_history.records)
    for a, b in zip(full_history.records, resumed_history.records, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if k != "epoch_time":
                assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), k
    assert full_history.best_epoch == resumed_history.best_epoch
    assert full_history.best_val_loss == resumed_history.best_val_loss


def test_resume_restores_the_global_rng_that_dropout_draws_from(tmp_path):
    # Dropout draws its masks from the global torch RNG: unless the resume restores it, the
    # resumed epochs use other masks than the uninterrupted run.
    def build():
        torch.manual_seed(21)
        features = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Dropout(0.3), nn.Linear(12, 12),
                                 nn.Tanh())
        model = SeparableModel(features, nn.Linear(12, 3))
        trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-2))
        return trainer, *_loaders(seed=21, n_train=256)

    full, train, val = build()
    full_history = fit(full, train, val, epochs=3)
    ckpt = tmp_path / "dropout.pt"
    part, train, val = build()
    fit(part, train, val, epochs=1, callbacks=[Checkpoint(ckpt)])
    resumed, train, val = build()
    torch.manual_seed(999)  # disturb every global RNG after the model is built
    torch.rand(11)
    np.random.seed(3)  # noqa: NPY002
    random.seed(4)
    resumed_history = fit(resumed, train, val, epochs=3, resume=ckpt)
    _assert_same_run(full, full_history, resumed, resumed_history)


def _spoil_checkpoint(data, how):
    if how == "no_records":
        del data["history"]["records"]
    elif how == "bad_record":
        data["history"]["records"][0]["train_loss"] = "low"
    elif how == "short_history":
        data["history"]["records"].pop()
    elif how == "no_numpy_rng":
        del data["rng"]["numpy"]
    elif how == "bad_torch_rng":
        data["rng"]["torch"] = data["rng"]["torch"][:10]
    elif how == "bad_python_rng":
        data["rng"]["python"][1] = data["rng"]["python"][1][:5]
    elif how == "bad_epoch":
        data["epoch"] = -1
    elif how == "bad_model_tensor":  # found only by the trainer's load, after the RNGs are set
        data["trainer"]["model"]["features.0.weight"] = torch.zeros(3, 3)
    return data


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("generators", "1 data-loader generator states but the loaders given have 0"),
        ("no_records", "malformed history.*'records'"),
        ("bad_record", "history record 0"),
        ("short_history", "history ends at epoch 0"),
        ("no_numpy_rng", "RNG state holds"),
        ("bad_torch_rng", "RNG state 'torch' is malformed"),
        ("bad_python_rng", "RNG state 'python' is malformed"),
        ("bad_epoch", "non-negative int"),
        ("bad_model_tensor", "does not fit this model"),
    ],
)
def test_resume_that_does_not_fit_changes_nothing(tmp_path, how, match):
    train, val = _loaders(seed=15, n_train=128)
    fit(_slimtrain(15), train, val, epochs=1, callbacks=[Checkpoint(tmp_path / "c.pt")])
    spoiled = tmp_path / "spoiled.pt"
    torch.save(_spoil_checkpoint(torch.load(tmp_path / "c.pt", weights_only=True), how), spoiled)
    if how == "generators":  # readable and intact, but written with a seeded shuffling loader
        train = DataLoader(train.dataset, batch_size=32, shuffle=False)
    fresh = _slimtrain(16)
    x, y = _regression_data(32, seed=16)
    fresh.step(x, y)  # an optimizer and solver state that a load would replace
    before = copy.deepcopy(fresh.state_dict())
    rng_before = torch.get_rng_state()
    with pytest.raises(ValueError, match=match):
        fit(fresh, train, val, epochs=2, resume=spoiled)
    _assert_state_equal(before, fresh.state_dict())
    assert torch.equal(torch.get_rng_state(), rng_before)


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


def _bn_first_model(seed: int) -> SeparableModel:
    torch.manual_seed(seed)
    features = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 12), nn.Tanh())
    return SeparableModel(features, nn.Linear(12, 3))


@pytest.mark.parametrize("method", ["slimtrain", "gradient"])
def test_forward_failure_is_a_value_error_and_changes_nothing(method):
    model = _bn_first_model(18)
    if method == "slimtrain":
        trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-2))
    else:
        trainer = GradientTrainer(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    x, y = _regression_data(32, seed=18)
    trainer.step(x, y)
    before = copy.deepcopy(trainer.state_dict())
    # BatchNorm1d takes (N, C, L) and updates its running statistics; the Linear then fails.
    bad = x.unsqueeze(-1).expand(32, 4, 2).contiguous()
    with pytest.raises(ValueError, match=r"forward failed on x of shape \(32, 4, 2\)") as excinfo:
        trainer.step(bad, y)
    assert isinstance(excinfo.value.__cause__, RuntimeError)
    _assert_state_equal(before, trainer.state_dict())
    trainer.step(x, y)  # and the trainer still works


@pytest.mark.parametrize("where", ["solver", "loss"])
def test_any_failure_in_a_slimtrain_step_restores_buffers_w_and_solver(monkeypatch, where):
    trainer = _slimtrain(19)
    trainer.model.features.append(nn.BatchNorm1d(12))  # a buffer the forward updates
    x, y = _regression_data(32, seed=19)
    trainer.step(x, y)
    before = copy.deepcopy(trainer.state_dict())
    last_info = trainer.solver.last_info

    def boom(*args, **kwargs):
        raise FloatingPointError("boom")

    if where == "solver":
        monkeypatch.setattr(trainer.solver, "step_statistics", boom)
    else:  # after slimTik has updated W and its state
        monkeypatch.setattr("slimtrain.training.losses.squared_loss", boom)
    with pytest.raises(FloatingPointError, match="boom"):
        trainer.step(x * 0.5, y)
    _assert_state_equal(before, trainer.state_dict())
    assert trainer.solver.last_info == last_info


def test_non_ok_status_is_info_once_and_a_warning_when_it_persists(caplog):
    trainer = _slimtrain(17, memory_depth=0)  # p = 12 features + bias = 13 unknowns
    x, y = _regression_data(8, seed=17)  # 8 rows <= 13: degenerate
    name = "slimtrain.training.trainers"
    n = trainer.STATUS_WARN_STEPS
    with caplog.at_level(logging.DEBUG, logger=name):
        infos = [trainer.step(x, y) for _ in range(n + 5)]
    assert all(info["status_ok"] == 0.0 for info in infos)
    mine = [r for r in caplog.records if r.name == name]
    levels = [r.levelno for r in mine]
    assert levels[0] == logging.INFO  # the first occurrence: expected at the start of a run
    assert levels.count(logging.WARNING) == 1  # once it persisted for n steps, once only
    warning = next(r for r in mine if r.levelno == logging.WARNING)
    assert levels.index(logging.WARNING) == n - 1
    assert f"steps 1-{n}" in warning.getMessage()
    assert "memory_depth" in warning.getMessage()  # the status's advice reaches the user
    assert levels.count(logging.DEBUG) == n + 5 - 2
    ok = _slimtrain(17, lambda_rule="constant", initial_lambda=1e-3).step(
        *_regression_data(64, seed=17))
    assert ok["status_ok"] == 1.0


def test_a_transient_status_is_not_a_warning(caplog):
    trainer = _slimtrain(17, memory_depth=0)
    bad, good = _regression_data(8, seed=17), _regression_data(64, seed=18)
    with caplog.at_level(logging.DEBUG, logger="slimtrain.training.trainers"):
        for _ in range(3):
            for _ in range(trainer.STATUS_WARN_STEPS - 1):
                trainer.step(*bad)
            trainer.step(*good)  # breaks the streak of degenerate steps
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_gradient_trainer_keeps_parameters_frozen_by_the_user():
    def frozen_model():
        model = SeparableModel(_features(22), nn.Linear(12, 3))
        for p in model.features[0].parameters():
            p.requires_grad_(False)
        return model

    model = frozen_model()
    trainer = GradientTrainer(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    assert not any(p.requires_grad for p in model.features[0].parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    frozen = [p.clone() for p in model.features[0].parameters()]
    head, second = model.head.weight.clone(), model.features[2].weight.clone()
    trainer.step(*_regression_data(32, seed=22))
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.features[0].parameters(),
                                                 strict=True))
    assert not torch.equal(head, model.head.weight)
    assert not torch.equal(second, model.features[2].weight)
    # The frozen parameters need not be in the optimizer; the head's must.
    model = frozen_model()
    trained = [p for n, p in model.named_parameters() if not n.startswith("features.0.")]
    GradientTrainer(model, torch.optim.Adam(trained))
    model = frozen_model()
    with pytest.raises(ValueError, match="head.weight"):
        GradientTrainer(model, torch.optim.Adam(model.feature_parameters()))
    assert not any(p.requires_grad for p in model.head.parameters())  # nothing changed


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


def test_tensorboard_step_count_continues_after_resume(tmp_path):
    pytest.importorskip("tensorboard")  # an optional extra: slimtrain[tensorboard]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def steps(log_dir, tag):
        events = EventAccumulator(str(log_dir))
        events.Reload()
        return [event.step for event in events.Scalars(tag)]

    ckpt = tmp_path / "run.pt"
    train, val = _loaders(seed=23, n_train=128)  # 4 batches per epoch
    fit(_slimtrain(23), train, val, epochs=1,
        callbacks=[Checkpoint(ckpt), TensorBoardLogger(tmp_path / "first")])
    train, val = _loaders(seed=23, n_train=128)
    fit(_slimtrain(23), train, val, epochs=3, resume=ckpt,
        callbacks=[TensorBoardLogger(tmp_path / "second")])
    assert steps(tmp_path / "first", "train/step_loss") == [1, 2, 3, 4]
    assert steps(tmp_path / "second", "train/step_loss") == list(range(5, 13))
    assert steps(tmp_path / "second", "train/train_loss") == [2, 3]


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
