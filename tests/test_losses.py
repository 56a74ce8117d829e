"""Classification heads (issue 13): the Böhning majorizer, its fixed point against scikit-learn,
the majorization property of one slimTik step, per-pixel Conv2d heads and bad targets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimtrain import GradientTrainer, SeparableModel, SlimTik, SlimTrain, fit
from slimtrain._threads import num_threads
from slimtrain.heads import head_adapter
from slimtrain.training.losses import CURVATURE, get_loss, working_targets

f64 = torch.float64



@pytest.fixture(autouse=True)
def _one_thread():
    """Small kernels on one thread: on shared cores torch's pool slows them down 10-100x."""
    with num_threads(1):
        yield

def _loss(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent reference: torch.nn.functional, mean over samples of the sum over outputs."""
    if name == "cross_entropy":
        return F.cross_entropy(logits, y, reduction="sum") / logits.shape[0]
    return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / logits.shape[0]


def _problem(seed: int, n: int, p: int, t: int, name: str, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, p, generator=gen, dtype=f64)
    W = scale * torch.randn(t, p, generator=gen, dtype=f64)
    if name == "cross_entropy":
        y = torch.randint(0, t, (n,), generator=gen)
    else:
        y = torch.randint(0, 2, (n, t), generator=gen).to(f64)
    return Z, W, y


# --------------------------------------------------------------------------- the majorizer


@pytest.mark.parametrize("name", ["cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("seed", range(4))
def test_majorizer_bounds_the_loss_touches_it_at_w_and_shares_its_gradient(name, seed):
    Z, W, y = _problem(seed, n=40, p=6, t=4, name=name, scale=1.0 + seed)
    b, n = CURVATURE[name], Z.shape[0]
    C = working_targets(Z @ W.T, y, name)
    L_W = _loss(name, Z @ W.T, y)

    def majorizer(Wp: torch.Tensor) -> torch.Tensor:
        # L(W) + (b / 2N) (||Z W'^T - C~||^2 - ||Z W^T - C~||^2)
        return L_W + b / (2 * n) * (((Z @ Wp.T - C) ** 2).sum() - ((Z @ W.T - C) ** 2).sum())

    gen = torch.Generator().manual_seed(100 + seed)
    for step in (1e-3, 1e-1, 1.0, 10.0):
        Wp = W + step * torch.randn(W.shape, generator=gen, dtype=f64)
        assert float(majorizer(Wp)) >= float(_loss(name, Z @ Wp.T, y)) - 1e-12
    torch.testing.assert_close(majorizer(W), L_W, rtol=1e-14, atol=0)
    Wa = W.clone().requires_grad_(True)
    (g_loss,) = torch.autograd.grad(_loss(name, Z @ Wa.T, y), Wa)
    Wm = W.clone().requires_grad_(True)
    (g_major,) = torch.autograd.grad(majorizer(Wm), Wm)
    torch.testing.assert_close(g_major, g_loss, rtol=1e-12, atol=1e-14)


def test_working_targets_with_classes_along_dim_1_of_a_pixel_map():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 5, generator=gen, dtype=f64)  # (N, classes, H, W)
    y = torch.randint(0, 4, (2, 3, 5), generator=gen)
    C = working_targets(logits, y, "cross_entropy", class_dim=1)
    rows = logits.permute(0, 2, 3, 1).reshape(-1, 4)  # one row per pixel
    ref = rows - 2 * (torch.softmax(rows, 1) - F.one_hot(y.reshape(-1), 4).to(f64))
    torch.testing.assert_close(C.permute(0, 2, 3, 1).reshape(-1, 4), ref)


# --------------------------------------------------------------------------- one slimTik step


def _regularized(name, Z, W, y, lam):
    b = CURVATURE[name]
    return float(_loss(name, Z @ W.T, y)) + b * lam / 2 * float((W * W).sum())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(3, 60),
    p=st.integers(2, 8),
    t=st.integers(2, 5),
    name=st.sampled_from(["cross_entropy", "binary_cross_entropy"]),
    scale=st.floats(0.0, 5.0),
    initial_lambda=st.floats(0.0, 2.0),
    lam=st.one_of(st.none(), st.floats(-1.0, 5.0)),
)
def test_one_update_never_increases_the_regularized_batch_loss(
    seed, n, p, t, name, scale, initial_lambda, lam
):
    # Memory depth 0, Lambda >= 0 before the step, fixed features (Z), any increment lam
    # (sGCV's choice, or a prescribed one, which slimTik clips so that Lambda_new >= lower).
    Z, W, y = _problem(seed, n, p, t, name, scale)
    solver = SlimTik(memory_depth=0, initial_lambda=initial_lambda)
    C = working_targets(Z @ W.T, y, name)
    W_new, info = solver.step(W, Z, C, lam=lam)
    before = _regularized(name, Z, W, y, info.lam)
    after = _regularized(name, Z, W_new, y, info.lam)
    assert after <= before + 1e-10 * max(1.0, abs(before))


@pytest.mark.parametrize("name", ["cross_entropy", "binary_cross_entropy"])
def test_a_step_minimizes_majorizer_plus_b_lam_and_b_lambda_proximal_terms(name):
    # The documented Lambda mapping: with increment lam from Lambda_old, slimTik's W_new is
    # argmin (b/2N)||Z W'^T - C~||^2 + (b lam / 2)||W'||^2 + (b Lambda_old / 2)||W' - W||^2,
    # here by brute force (lstsq on the stacked system). Absolute units, so that Lambda_old and
    # lam are the values in that objective (relative units multiply both by the data scale).
    Z, W, y = _problem(7, n=50, p=5, t=3, name=name, scale=2.0)
    b, n = CURVATURE[name], Z.shape[0]
    Lambda_old, lam = 0.3, 0.05
    solver = SlimTik(memory_depth=0, initial_lambda=Lambda_old, lambda_units="absolute")
    C = working_targets(Z @ W.T, y, name)
    W_new, info = solver.step(W, Z, C, lam=lam)
    assert info.lam == pytest.approx(lam)
    eye = torch.eye(Z.shape[1], dtype=f64)
    A = torch.cat([np.sqrt(b / n) * Z, np.sqrt(b * lam) * eye, np.sqrt(b * Lambda_old) * eye])
    rhs = torch.cat([np.sqrt(b / n) * C, torch.zeros_like(W.T), np.sqrt(b * Lambda_old) * W.T])
    ref = torch.linalg.lstsq(A, rhs).solution.T
    torch.testing.assert_close(W_new, ref, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- fixed point


def _logistic_data(n: int, d: int, t: int, seed: int):
    """Non-separable labels drawn from a softmax model with a weak signal (probabilities near
    1/t, where the bound b I is tight enough for a fast linear rate of the iteration)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    logits = 0.4 * X @ rng.standard_normal((d, t)) + rng.standard_normal(t) * 0.2
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    y = np.array([rng.choice(t, p=row) for row in probs])
    return X, y


def _fixed_feature_trainer(d: int, t: int, name: str) -> SlimTrain:
    features = nn.Linear(d, d).double()
    with torch.no_grad():
        features.weight.copy_(torch.eye(d, dtype=f64))
        features.bias.zero_()
    head = nn.Linear(d, t).double()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    model = SeparableModel(features, head)
    # lr 0: theta fixed. Memory depth 0 and a zero increment: Lambda is held fixed (at `lower`
    # after the first step clips 0 up to it), so Lambda only damps.
    return SlimTrain(model, torch.optim.SGD(model.feature_parameters(), lr=0.0), loss=name,
                     memory_depth=0, lambda_rule="constant", initial_lambda=0.0)


def _centered(W: np.ndarray) -> np.ndarray:
    return W - W.mean(axis=0, keepdims=True)


def test_full_batch_fixed_point_is_sklearn_unpenalized_multinomial_fit():
    X, y = _logistic_data(n=400, d=4, t=3, seed=0)
    trainer = _fixed_feature_trainer(4, 3, "cross_entropy")
    xb, yb = torch.from_numpy(X), torch.from_numpy(y)
    losses = [trainer.step(xb, yb)["loss"] for _ in range(60)]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False))  # monotone
    ref = LogisticRegression(C=np.inf, solver="lbfgs", tol=1e-12, max_iter=10_000).fit(X, y)
    W = trainer.adapter.get_weight(trainer.model.head).numpy()  # (t, d + 1), bias last
    W_ref = np.hstack([ref.coef_, ref.intercept_[:, None]])
    # softmax is invariant to a constant added to every class: compare the centered weights
    # (the update keeps the class-sum of W at its starting 0)
    np.testing.assert_allclose(W.sum(0), 0.0, atol=1e-12)
    assert np.linalg.norm(W - _centered(W_ref)) <= 1e-4 * np.linalg.norm(_centered(W_ref))


def test_full_batch_fixed_point_is_sklearn_unpenalized_binary_fit():
    X, y = _logistic_data(n=300, d=3, t=2, seed=1)
    trainer = _fixed_feature_trainer(3, 1, "binary_cross_entropy")
    xb, yb = torch.from_numpy(X), torch.from_numpy(y).to(f64)[:, None]
    losses = [trainer.step(xb, yb)["loss"] for _ in range(60)]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False))
    ref = LogisticRegression(C=np.inf, solver="lbfgs", tol=1e-12, max_iter=10_000).fit(X, y)
    W = trainer.adapter.get_weight(trainer.model.head).numpy()
    W_ref = np.hstack([ref.coef_, ref.intercept_[:, None]])
    assert np.linalg.norm(W - W_ref) <= 1e-4 * np.linalg.norm(W_ref)


# --------------------------------------------------------------------------- trainers


def _classifier(seed: int = 0, t: int = 3, bn: bool = False) -> SeparableModel:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 8), nn.Tanh()]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    return SeparableModel(nn.Sequential(*layers), nn.Linear(8, t)).double()


def test_slimtrain_cross_entropy_step_is_slimtik_on_working_targets_then_theta_on_the_loss():
    model = _classifier(1)
    reference = copy.deepcopy(model)
    trainer = SlimTrain(model, torch.optim.SGD(model.feature_parameters(), lr=0.1),
                        loss="cross_entropy", memory_depth=2)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(32, 4, generator=gen, dtype=f64)
    y = torch.randint(0, 3, (32,), generator=gen)
    out = trainer.step(x, y)
    # reference: explicit rows, the working targets by hand, the solver, then autograd
    solver = SlimTik(memory_depth=2)
    feats = reference.features(x)
    Z = torch.cat([feats.detach(), torch.ones(32, 1, dtype=f64)], 1)
    W = torch.cat([reference.head.weight, reference.head.bias[:, None]], 1).detach()
    logits = Z @ W.T
    C = logits - 2 * (torch.softmax(logits, 1) - F.one_hot(y, 3).to(f64))
    W_new, info = solver.step(W, Z, C)
    with torch.no_grad():
        reference.head.weight.copy_(W_new[:, :-1])
        reference.head.bias.copy_(W_new[:, -1])
    new_logits = reference.head(feats)
    loss = nn.CrossEntropyLoss()(new_logits, y)
    loss.backward()
    loss = loss.detach()
    with torch.no_grad():
        for p in reference.features.parameters():
            p -= 0.1 * p.grad
    torch.testing.assert_close(trainer.adapter.get_weight(model.head), W_new)
    for a, b in zip(model.features.parameters(), reference.features.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert out["loss"] == pytest.approx(float(loss), rel=1e-12)
    assert out["sum_lambda"] == pytest.approx(info.sum_lambda)
    expected = float((new_logits.argmax(1) == y).double().mean())
    assert out["accuracy"] == pytest.approx(expected)


def test_gradient_trainer_cross_entropy_step_matches_autograd():
    model = _classifier(2)
    reference = copy.deepcopy(model)
    trainer = GradientTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                              loss="cross_entropy")
    for p in reference.head.parameters():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(16, 4, generator=gen, dtype=f64)
    y = torch.randint(0, 3, (16,), generator=gen)
    out = trainer.step(x, y)
    logits = reference(x)
    loss = nn.CrossEntropyLoss()(logits, y)
    loss.backward()
    loss, logits = loss.detach(), logits.detach()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert out["loss"] == pytest.approx(float(loss), rel=1e-12)
    assert out["accuracy"] == pytest.approx(float((logits.argmax(1) == y).double().mean()))


def test_conv2d_head_with_cross_entropy_classifies_pixels_as_rows():
    torch.manual_seed(5)
    features = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh()).double()
    head = nn.Conv2d(3, 4, 3, padding=1).double()  # 4 classes per pixel
    model = SeparableModel(features, head)
    reference_head = copy.deepcopy(head)
    trainer = SlimTrain(model, torch.optim.SGD(model.feature_parameters(), lr=0.0),
                        loss="cross_entropy", memory_depth=0)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 2, 6, 6, generator=gen, dtype=f64)
    y = torch.randint(0, 4, (5, 6, 6), generator=gen)
    feats = features(x).detach()
    out = trainer.step(x, y)
    # reference: unfold -> rows (n, oy, ox), logits per row, working targets per row
    adapter = head_adapter(reference_head)
    Z, _ = adapter.design(reference_head, feats, torch.zeros(5, 4, 6, 6, dtype=f64))
    W = adapter.get_weight(reference_head)
    rows = Z @ W.T  # (5 * 36, 4)
    labels = y.reshape(-1)  # (n, oy, ox) order
    C = rows - 2 * (torch.softmax(rows, 1) - F.one_hot(labels, 4).to(f64))
    W_ref, _ = SlimTik(memory_depth=0).step(W, Z, C, n_samples=5)
    torch.testing.assert_close(trainer.adapter.get_weight(model.head), W_ref)
    new_rows = Z @ W_ref.T
    loss = F.cross_entropy(new_rows, labels, reduction="sum") / 5  # summed over pixels
    assert out["loss"] == pytest.approx(float(loss), rel=1e-10)
    assert out["accuracy"] == pytest.approx(float((new_rows.argmax(1) == labels).double().mean()))


# --------------------------------------------------------------------------- bad targets


def _state(trainer):
    return copy.deepcopy(trainer.state_dict())


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _assert_same(u, v)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize(
    ("loss", "make_y", "error", "match"),
    [
        ("cross_entropy", lambda n: torch.zeros(n), TypeError, "class indices"),
        ("cross_entropy", lambda n: torch.full((n,), 3), ValueError, r"class 3 .* 3 outputs"),
        ("cross_entropy", lambda n: torch.full((n,), -1), ValueError, ">= 0"),
        ("cross_entropy", lambda n: torch.zeros(n, 3, dtype=torch.long), ValueError, "shape"),
        ("binary_cross_entropy", lambda n: torch.full((n, 3), 2.0), ValueError, r"\[0, 1\]"),
        ("binary_cross_entropy", lambda n: torch.zeros(n), ValueError, "shape"),
    ],
)
@pytest.mark.parametrize("kind", ["slimtrain", "gradient"])
def test_bad_targets_raise_clear_errors_and_change_nothing(loss, make_y, error, match, kind):
    model = _classifier(3, bn=True)
    if kind == "slimtrain":
        trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters()), loss=loss)
    else:
        trainer = GradientTrainer(model, torch.optim.Adam(model.parameters()), loss=loss)
    x = torch.randn(12, 4, dtype=f64)
    good = torch.zeros(12, dtype=torch.long) if loss == "cross_entropy" else torch.zeros(12, 3)
    trainer.step(x, good)
    before = _state(trainer)
    with pytest.raises(error, match=match):
        trainer.step(x, make_y(12))
    _assert_same(before, _state(trainer))


def test_a_head_with_one_output_is_rejected_for_cross_entropy():
    torch.manual_seed(0)
    model = SeparableModel(nn.Sequential(nn.Linear(4, 8), nn.Tanh()), nn.Linear(8, 1)).double()
    trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters()),
                        loss="cross_entropy")
    with pytest.raises(ValueError, match="1 output.*binary_cross_entropy"):
        trainer.step(torch.randn(12, 4, dtype=f64), torch.zeros(12, dtype=torch.long))
    assert trainer.solver.n_steps == 0


def test_unknown_loss_names_are_rejected():
    model = _classifier()
    with pytest.raises(ValueError, match="loss must be one of"):
        SlimTrain(model, torch.optim.Adam(model.feature_parameters()), loss="hinge")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss must be a string"):
        get_loss(nn.CrossEntropyLoss())


# --------------------------------------------------------------------------- fit


def test_fit_reports_accuracy_for_classification_and_keeps_the_squared_loss_columns():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(96, 4, generator=gen, dtype=f64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=10)
    model = _classifier(4)
    trainer = SlimTrain(model, torch.optim.Adam(model.feature_parameters(), lr=1e-2),
                        loss="cross_entropy")
    history = fit(trainer, train, val, epochs=2)
    record = history.records[-1]
    with torch.no_grad():
        logits = model(x[64:])
    accuracy = float((logits.argmax(1) == y[64:]).double().mean())
    assert record["val_accuracy"] == pytest.approx(accuracy)
    assert record["val_loss"] == pytest.approx(float(nn.CrossEntropyLoss()(logits, y[64:])))
    assert np.isnan(record["val_rel_error"]) and 0 <= record["train_accuracy"] <= 1
    # without a training evaluation: the running mean of the steps' accuracies
    history = fit(trainer, train, val, epochs=1, eval_train=False)
    assert 0 <= history.records[-1]["train_accuracy"] <= 1
    # the squared loss keeps its columns exactly
    model = _classifier(5)
    regression = SlimTrain(model, torch.optim.Adam(model.feature_parameters()))
    xr = torch.randn(32, 4, dtype=f64)
    history = fit(regression, DataLoader(TensorDataset(xr, torch.sin(xr[:, :3])), batch_size=16),
                  epochs=1)
    assert list(history.records[-1]) == [
        "epoch", "train_loss", "train_rel_error", "val_loss", "val_rel_error", "sum_lambda",
        "lam", "epoch_time", "steps",
    ]


def test_linear_head_on_sequence_features_classifies_every_position():
    # nn.Linear on (N, L, p) features: logits (N, L, t), classes along the last dim, rows are
    # the N * L positions; targets (N, L).
    torch.manual_seed(9)
    model = SeparableModel(nn.Sequential(nn.Linear(3, 5), nn.Tanh()), nn.Linear(5, 4)).double()
    trainer = SlimTrain(model, torch.optim.SGD(model.feature_parameters(), lr=0.0),
                        loss="cross_entropy", memory_depth=0)
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(6, 7, 3, generator=gen, dtype=f64)
    y = torch.randint(0, 4, (6, 7), generator=gen)
    Z = torch.cat([model.features(x).detach().reshape(42, 5), torch.ones(42, 1, dtype=f64)], 1)
    W = trainer.adapter.get_weight(model.head)
    rows = Z @ W.T
    C = rows - 2 * (torch.softmax(rows, 1) - F.one_hot(y.reshape(-1), 4).to(f64))
    W_ref, _ = SlimTik(memory_depth=0).step(W, Z, C, n_samples=6)
    out = trainer.step(x, y)
    torch.testing.assert_close(trainer.adapter.get_weight(model.head), W_ref)
    new_rows = Z @ W_ref.T
    assert out["loss"] == pytest.approx(
        float(F.cross_entropy(new_rows, y.reshape(-1), reduction="sum")) / 6, rel=1e-10)
    assert out["accuracy"] == pytest.approx(
        float((new_rows.argmax(1) == y.reshape(-1)).double().mean()))
