"""slimTik in relative units does not depend on the units of the data (issue 12).

``Z -> a Z``, ``C -> b C`` must give ``W -> (b / a) W``: the same predictions up to ``b``, the
same relative errors and the same statuses, for scales from 1e-8 to 1e8. Absolute units keep the
old behaviour (checked to fail the acceptance case, so the test can fail).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimtrain import SlimTik, SlimTikStatus

f64 = torch.float64


def _problem(seed: int, steps: int, p: int = 20, t: int = 3, rows: int = 64):
    """The issue's problem: p = 20, t = 3, batches of 64 rows, column scales 0.1 to 2."""
    gen = torch.Generator().manual_seed(seed)
    W_true = torch.randn(t, p, generator=gen, dtype=f64)
    columns = torch.linspace(0.1, 2.0, p, dtype=f64)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        Z = torch.randn(n, p, generator=gen, dtype=f64) * columns
        return Z, Z @ W_true.T + 0.05 * torch.randn(n, t, generator=gen, dtype=f64)

    return [batch(rows) for _ in range(steps)], batch(1000)


def _train(batches, a: float, b: float, **options):
    solver = SlimTik(memory_depth=5, **options)
    W = torch.zeros(batches[0][1].shape[1], batches[0][0].shape[1], dtype=f64)
    infos = []
    for Z, C in batches:
        W, info = solver.step(W, a * Z, b * C)
        infos.append(info)
    return W, infos


def _rel_error(W, validation, a: float, b: float) -> float:
    Z, C = validation
    return float(torch.linalg.norm((a * Z) @ W.T - b * C) / torch.linalg.norm(b * C))


@pytest.mark.parametrize(("a", "b"), [(1e-4, 1.0), (1e4, 1.0), (1e-3, 1e3)])
def test_acceptance_scaled_features_give_the_same_validation_error(a, b):
    """Issue 12 acceptance: within 1.5x of scale 1, sGCV and default options."""
    batches, validation = _problem(seed=0, steps=40)
    W1, _ = _train(batches, 1.0, 1.0)
    Wa, _ = _train(batches, a, b)
    e1, ea = _rel_error(W1, validation, 1.0, 1.0), _rel_error(Wa, validation, a, b)
    assert e1 < 2e-2  # the problem is learnable
    assert ea <= 1.5 * e1 and e1 <= 1.5 * ea


def test_absolute_units_still_depend_on_the_scale():
    """The old behaviour, kept as an option: features x 1e-4 put Lambda on its floor 1e-7,
    which then regularizes 10x more than at scale 1, and the floor says so."""
    batches, validation = _problem(seed=0, steps=40)
    W1, _ = _train(batches, 1.0, 1.0, lambda_units="absolute")
    Wa, infos = _train(batches, 1e-4, 1.0, lambda_units="absolute")
    e1, ea = _rel_error(W1, validation, 1.0, 1.0), _rel_error(Wa, validation, 1e-4, 1.0)
    assert ea > 5 * e1
    assert SlimTikStatus.LAMBDA_AT_LOWER in {i.status for i in infos}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    log_a=st.floats(-8.0, 8.0),
    log_b=st.floats(-8.0, 8.0),
    seed=st.integers(0, 2**16),
    rule=st.sampled_from(["sgcv", "constant"]),
)
def test_any_units_give_the_same_fit_and_statuses(log_a, log_b, seed, rule):
    a, b = 10.0**log_a, 10.0**log_b
    batches, validation = _problem(seed=seed, steps=8)
    W1, infos1 = _train(batches, 1.0, 1.0, lambda_rule=rule)
    Wa, infosa = _train(batches, a, b, lambda_rule=rule)
    assert [i.status for i in infosa] == [i.status for i in infos1]
    torch.testing.assert_close(Wa * (a / b), W1, rtol=1e-6, atol=1e-9)
    assert _rel_error(Wa, validation, a, b) == pytest.approx(
        _rel_error(W1, validation, 1.0, 1.0), rel=1e-6
    )
    for i1, ia in zip(infos1, infosa, strict=True):
        assert ia.scale == pytest.approx(i1.scale * a * a, rel=1e-9)
        assert ia.sum_lambda == pytest.approx(i1.sum_lambda * a * a, rel=1e-6)
        assert ia.rel_residual == pytest.approx(i1.rel_residual, rel=1e-6, abs=1e-12)


def test_gram_overflow_is_named_as_such():
    """Finite features around 1e200: the Gram overflows; the message says so and what to do."""
    Z = torch.full((10, 3), 1e200, dtype=f64)
    C = torch.ones(10, 1, dtype=f64)
    solver = SlimTik()
    with pytest.raises(ValueError, match="overflowed.*Rescale"):
        solver.step(torch.zeros(1, 3, dtype=f64), Z, C)
    assert solver.n_steps == 0


def test_slimtrain_forwards_the_units_and_engineering_options():
    from torch import nn

    from slimtrain import SeparableModel, SlimTrain

    model = SeparableModel(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.feature_parameters(), lr=1e-3)
    trainer = SlimTrain(model, optimizer, lambda_units="absolute", cpu_eigh_max_size=64)
    assert trainer.solver.config.lambda_units == "absolute"
    assert trainer.solver.cpu_eigh_max_size == 64
    with pytest.raises(ValueError, match="lambda_units"):
        SlimTik(lambda_units="percent")
    with pytest.raises(ValueError, match="cpu_eigh_max_size"):
        SlimTik(cpu_eigh_max_size=-1)


def test_symmetric_eigh_matches_torch_on_the_cpu():
    from slimtrain.linalg.eigh import symmetric_eigh

    gen = torch.Generator().manual_seed(2)
    X = torch.randn(3, 9, 9, generator=gen, dtype=f64)
    A = X @ X.transpose(1, 2)
    s, V = symmetric_eigh(A, cpu_max_size=100)  # on the CPU already: nothing moves
    torch.testing.assert_close(V @ torch.diag_embed(s) @ V.transpose(1, 2), A)
    s_ref, _ = torch.linalg.eigh(A)
    torch.testing.assert_close(s, s_ref)
