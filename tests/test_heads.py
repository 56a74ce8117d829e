"""Head adapters against the native forward, autograd Jacobians and least squares."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev
from torch.nn.utils.parametrizations import weight_norm

import slimtrain.heads.transpose as transpose_module
from slimtrain.heads import (
    ConvTranspose2dAdapter,
    HeadAdapter,
    head_adapter,
)
from slimtrain.linalg.stats import GramStats, gram_statistics

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

f32, f64 = torch.float32, torch.float64
TOL: dict[torch.dtype, dict[str, Any]] = {
    f64: {"rtol": 1e-10, "atol": 1e-11},
    f32: {"rtol": 1e-4, "atol": 1e-5},
}


# ---------------------------------------------------------------------------------------------
# catalogue of head configurations: (builder, features shape)
# ---------------------------------------------------------------------------------------------

Case = tuple[Callable[[], nn.Module], tuple[int, ...]]


def _linear(p_in: int, t: int, bias: bool, shape: tuple[int, ...]) -> Case:
    return (lambda: nn.Linear(p_in, t, bias=bias)), shape


def _conv(c_in: int, c_out: int, hw: tuple[int, int], n: int = 2, **kw: Any) -> Case:
    return (lambda: nn.Conv2d(c_in, c_out, **kw)), (n, c_in, *hw)


def _convt(c_in: int, c_out: int, hw: tuple[int, int], n: int = 2, **kw: Any) -> Case:
    return (lambda: nn.ConvTranspose2d(c_in, c_out, **kw)), (n, c_in, *hw)


CASES: dict[str, Case] = {
    "linear-bias": _linear(5, 3, True, (7, 5)),
    "linear-nobias": _linear(5, 3, False, (7, 5)),
    "linear-3d-features": _linear(4, 2, True, (3, 5, 4)),
    "conv-k1": _conv(3, 2, (5, 6), kernel_size=1),
    "conv-k3-s1-p1": _conv(3, 4, (6, 7), kernel_size=3, padding=1),
    "conv-k3-s2-p0-nobias": _conv(2, 3, (7, 9), kernel_size=3, stride=2, bias=False),
    "conv-k2x3-s3-p2": _conv(3, 2, (8, 7), kernel_size=(2, 3), stride=3, padding=2),
    "conv-k3-d2-p2": _conv(2, 2, (8, 9), kernel_size=3, dilation=2, padding=2),
    "conv-k3x2-s2x1-d2x1-p1x0": _conv(
        3, 2, (9, 6), kernel_size=(3, 2), stride=(2, 1), dilation=(2, 1), padding=(1, 0)
    ),
    "conv-same-k4": _conv(2, 3, (5, 6), kernel_size=4, padding="same"),
    "conv-same-k3-d2": _conv(2, 2, (6, 5), kernel_size=3, padding="same", dilation=2),
    "conv-valid": _conv(2, 2, (5, 6), kernel_size=2, padding="valid", bias=False),
    "convt-k1": _convt(3, 2, (4, 5), kernel_size=1),
    "convt-k2-s2": _convt(3, 2, (4, 5), kernel_size=2, stride=2),
    "convt-autoencoder-small": _convt(4, 1, (5, 6), kernel_size=4, stride=2, padding=1),
    "convt-k3-s1-p1-nobias": _convt(2, 3, (5, 4), kernel_size=3, padding=1, bias=False),
    "convt-k3-s2-p1-op1": _convt(3, 2, (4, 5), kernel_size=3, stride=2, padding=1,
                                 output_padding=1),
    "convt-k3-s3-p0": _convt(2, 2, (3, 4), kernel_size=3, stride=3),
    "convt-k2-s3-p0-gaps": _convt(2, 2, (3, 4), kernel_size=2, stride=3, bias=False),
    "convt-k5-s3-p2-op2": _convt(2, 2, (3, 4), kernel_size=5, stride=3, padding=2,
                                 output_padding=2),
    "convt-k4-s2-p2-d2-op1": _convt(2, 3, (4, 5), kernel_size=4, stride=2, padding=2,
                                    dilation=2, output_padding=1),
    "convt-k3-s2-d2-p0": _convt(2, 2, (4, 3), kernel_size=3, stride=2, dilation=2),
    "convt-nonsquare": _convt(
        3, 2, (4, 3), kernel_size=(3, 5), stride=(3, 2), padding=(2, 1),
        output_padding=(1, 0), dilation=(2, 1),
    ),
    "convt-k3-s3-p2-crop": _convt(2, 1, (4, 4), kernel_size=3, stride=3, padding=2),
    "convt-k2-s1-d3": _convt(2, 2, (3, 4), kernel_size=2, dilation=3),
    # every output row sees only the bias: no tap pairs to scatter (crashed before)
    "convt-bias-only-rows": _convt(3, 2, (3, 4), kernel_size=(2, 3), stride=(2, 1),
                                   padding=(3, 0), dilation=(2, 3)),
}

# Every configuration is also checked against its autograd Jacobian.
JACOBIAN_CASES = list(CASES)


def _make(name: str, dtype: torch.dtype = f64, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """Head, features and random targets of the head's output shape."""
    builder, shape = CASES[name]
    torch.manual_seed(seed)
    head = builder().to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    with torch.no_grad():
        y = torch.randn(head(x).shape, generator=gen, dtype=dtype)
    return head, x, y


def _rows_to_output(pred: Tensor, like: Tensor) -> Tensor:
    """Rows ``(rows, t)`` back to the layout of the native output ``like``."""
    if like.ndim == 4:  # (N, t, H, W), rows ordered (n, oy, ox)
        n, t, h, w = like.shape
        return pred.reshape(n, h, w, t).permute(0, 3, 1, 2)
    return pred.reshape(like.shape)


def _native_to_matrix(head: nn.Module, weight: Tensor) -> Tensor:
    """Map the trailing weight dims of ``weight`` to W's documented ``(t, p_weight)`` layout.

    Written independently of slimtrain.heads: Conv2d ``(t, c, kh, kw)`` flattens as is;
    ConvTranspose2d ``(c, t, kh, kw)`` is flipped and channel-swapped, so column
    ``c * kh * kw + a * kw + b`` is ``w[c, :, kh - 1 - a, kw - 1 - b]``.
    """
    native = head.get_parameter("weight")
    lead = weight.shape[: weight.ndim - native.ndim]
    if isinstance(head, nn.Linear):
        return weight
    if isinstance(head, nn.ConvTranspose2d):
        weight = weight.flip(-2, -1).transpose(-4, -3)
    return weight.reshape(*lead, weight.shape[-4], -1)


# ---------------------------------------------------------------------------------------------
# rows reproduce the head
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [f64, f32])
@pytest.mark.parametrize("name", CASES)
def test_design_reproduces_native_forward(name: str, dtype: torch.dtype) -> None:
    head, x, y = _make(name, dtype)
    adapter = head_adapter(head)
    Z, C = adapter.design(head, x, y)
    W = adapter.get_weight(head)
    out = head(x).detach()
    rows = math.prod(out.shape) // adapter.num_outputs(head)
    assert Z.shape == (rows, adapter.num_features(head))
    assert C.shape == (rows, adapter.num_outputs(head))
    assert Z.dtype == dtype and W.dtype == dtype
    torch.testing.assert_close(_rows_to_output(Z @ W.T, out), out, **TOL[dtype])
    torch.testing.assert_close(_rows_to_output(C, out), y, rtol=0, atol=0)
    assert adapter.output_shape(head, x.shape) == tuple(out.shape)


@pytest.mark.parametrize("method", ["auto", "correlation", "gather"])
@pytest.mark.parametrize("name", CASES)
def test_statistics_match_explicit_design(name: str, method: str) -> None:
    head, x, y = _make(name)
    adapter = head_adapter(head)
    Z, C = adapter.design(head, x, y)
    ref = gram_statistics(Z, C, n_samples=x.shape[0])
    fast = adapter.statistics(head, x, y, method=method)
    assert isinstance(fast, GramStats)
    assert (fast.n_samples, fast.n_rows) == (x.shape[0], Z.shape[0])
    for got, want in zip(fast[:3], ref[:3], strict=True):
        assert got.dtype == f64
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # symmetric, as a Gram matrix must be
    torch.testing.assert_close(fast.ztz, fast.ztz.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["linear-bias", "conv-k3-s1-p1", "convt-autoencoder-small",
                                  "convt-nonsquare", "convt-k2-s3-p0-gaps"])
def test_statistics_accumulate_in_requested_dtype(name: str) -> None:
    head, x, y = _make(name, f32)
    adapter = head_adapter(head)
    ref = gram_statistics(*adapter.design(head, x.double(), y.double()), n_samples=x.shape[0])
    for dtype, tol in ((f64, 1e-12), (f32, 1e-5)):
        stats = adapter.statistics(head, x, y, dtype=dtype)
        for got, want in zip(stats[:3], ref[:3], strict=True):
            assert got.dtype == dtype
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["correlation", "gather"])
@pytest.mark.parametrize("name", ["conv-k3-s1-p1", "conv-k3x2-s2x1-d2x1-p1x0",
                                  "convt-autoencoder-small", "convt-nonsquare"])
def test_statistics_in_chunks_equal_one_block(name: str, method: str) -> None:
    head, x, y = _make(name)
    x, y = torch.cat([x, 2 * x, -x]), torch.cat([y, y, 3 * y])  # 6 samples
    adapter = head_adapter(head)
    whole = adapter.statistics(head, x, y, method=method)
    # one sample at a time
    chunked = adapter.statistics(head, x, y, max_block_elements=1, method=method)
    for got, want in zip(chunked, whole, strict=True):
        if isinstance(want, Tensor):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        else:
            assert got == want


def test_statistics_of_autoencoder_head() -> None:
    """The SPEC's final layer ConvTranspose2d(16 -> 1, 4, 2, 1) on (N, 16, 14, 14)."""
    torch.manual_seed(0)
    head = nn.ConvTranspose2d(16, 1, 4, 2, 1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 16, 14, 14, generator=gen)
    y = torch.randn(4, 1, 28, 28, generator=gen)
    adapter = head_adapter(head)
    assert isinstance(adapter, ConvTranspose2dAdapter)
    assert adapter.num_features(head) == 257 and adapter.num_outputs(head) == 1
    stats = adapter.statistics(head, x, y)
    ref = gram_statistics(*adapter.design(head, x, y), n_samples=4)
    assert (stats.n_samples, stats.n_rows) == (4, 4 * 784)
    for got, want in zip(stats[:3], ref[:3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# independent references: autograd Jacobian, least squares
# ---------------------------------------------------------------------------------------------


def _jacobian(head: nn.Module, x: Tensor) -> Tensor:
    """d output / d W from autograd, as ``(rows, output channel, row of W, p)``."""
    adapter = head_adapter(head)
    params = {k: v.detach() for k, v in head.named_parameters()}
    jac = jacrev(lambda p: functional_call(head, p, (x,)))(params)
    out_shape = head(x).shape
    t = adapter.num_outputs(head)
    parts = [_native_to_matrix(head, jac["weight"])]  # (*out_shape, t, p_weight)
    if "bias" in jac:
        parts.append(jac["bias"].unsqueeze(-1))  # (*out_shape, t, 1)
    J = torch.cat(parts, dim=-1)
    if len(out_shape) == 4:  # (N, t, H, W, t', p) -> rows (n, oy, ox), output channel, t', p
        J = J.permute(0, 2, 3, 1, 4, 5)
    return J.reshape(-1, t, t, adapter.num_features(head))


def _target_rows(y: Tensor, t: int) -> Tensor:
    """Targets in row order (n, oy, ox), written independently of slimtrain.heads."""
    return (y.permute(0, 2, 3, 1) if y.ndim == 4 else y).reshape(-1, t)


@pytest.mark.parametrize("name", JACOBIAN_CASES)
def test_design_rows_are_the_jacobian_wrt_W(name: str) -> None:
    head, x, y = _make(name)
    adapter = head_adapter(head)
    Z, _ = adapter.design(head, x, y)
    t = adapter.num_outputs(head)
    J = _jacobian(head, x)
    expected = torch.eye(t, dtype=f64)[None, :, :, None] * Z[:, None, None, :]
    torch.testing.assert_close(J, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", JACOBIAN_CASES)
def test_slimtik_update_from_statistics_equals_update_from_jacobian_rows(name: str) -> None:
    """The W a head's statistics give equals the W of slimTik on autograd-built rows."""
    from slimtrain import SlimTik

    head, x, y = _make(name)
    adapter = head_adapter(head)
    t = adapter.num_outputs(head)
    Z = _jacobian(head, x)[:, 0, 0, :]  # the rows: d output_0 / d W_0
    fast, reference = SlimTik(memory_depth=1), SlimTik(memory_depth=1)
    W_fast = W_ref = adapter.get_weight(head)
    for k in range(3):
        target = y * (1.0 + 0.5 * k) - 0.1 * k
        W_fast, info_fast = fast.step_statistics(W_fast, adapter.statistics(head, x, target))
        W_ref, info_ref = reference.step(W_ref, Z, _target_rows(target, t),
                                         n_samples=x.shape[0])
        torch.testing.assert_close(W_fast, W_ref, rtol=1e-8, atol=1e-10)
        assert info_fast.status == info_ref.status
        assert info_fast.sum_lambda == pytest.approx(info_ref.sum_lambda, rel=1e-8)
    adapter.set_weight(head, W_fast)  # written back, the native forward uses the solved W
    out = head(x).detach()
    torch.testing.assert_close(_rows_to_output(Z @ W_ref.T, out), out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", JACOBIAN_CASES + ["conv-k2x3-s3-p2", "convt-k3-s3-p2-crop"])
def test_least_squares_weights_reproduce_prediction(name: str) -> None:
    head, x, y = _make(name)
    adapter = head_adapter(head)
    Z, C = adapter.design(head, x, y)
    W = torch.linalg.lstsq(Z, C, driver="gelsd").solution.T  # (t, p)
    adapter.set_weight(head, W)
    out = head(x).detach()
    torch.testing.assert_close(out, _rows_to_output(Z @ W.T, out), rtol=1e-10, atol=1e-10)
    # the normal equations hold with the fast statistics, too
    stats = adapter.statistics(head, x, y)
    residual = stats.ztz @ W.T - stats.ztc
    assert float(residual.abs().max()) < 1e-8 * max(1.0, float(stats.ztz.abs().max()))


# ---------------------------------------------------------------------------------------------
# weights in and out
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_get_set_weight_round_trip(name: str) -> None:
    head, _, _ = _make(name, f32)
    adapter = head_adapter(head)
    W = adapter.get_weight(head)
    assert W.shape == (adapter.num_outputs(head), adapter.num_features(head))
    before = {k: v.detach().clone() for k, v in head.state_dict().items()}
    adapter.set_weight(head, W)
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k])
    # a new W (float64) lands in the float32 parameters, which keep dtype, device and flags
    for p in head.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(3)
    W_new = torch.randn(W.shape, generator=gen, dtype=f64)
    ids = [id(p) for p in head.parameters()]
    adapter.set_weight(head, W_new)
    assert [id(p) for p in head.parameters()] == ids
    for p in head.parameters():
        assert p.dtype == f32 and p.device.type == "cpu" and not p.requires_grad
    assert torch.equal(adapter.get_weight(head), W_new.float())
    assert torch.equal(adapter.get_weight(head, dtype=f64), W_new.float().double())
    # get_weight returns a copy, not a view of the parameters
    W_copy = adapter.get_weight(head)
    W_copy.zero_()
    assert torch.equal(adapter.get_weight(head), W_new.float())


def test_set_weight_keeps_requires_grad_true() -> None:
    head = nn.Conv2d(2, 3, 3)
    adapter = head_adapter(head)
    adapter.set_weight(head, torch.zeros(3, 19, dtype=f64))
    assert head.weight.requires_grad and head.bias is not None and head.bias.requires_grad
    assert head.weight.grad_fn is None and float(head.weight.detach().abs().sum()) == 0.0


def test_set_weight_rejects_bad_W_and_leaves_the_head_unchanged() -> None:
    head = nn.Linear(4, 2)
    adapter = head_adapter(head)
    before = adapter.get_weight(head)
    with pytest.raises(ValueError, match=r"W has shape \(2, 4\).*needs \(2, 5\)"):
        adapter.set_weight(head, torch.zeros(2, 4))
    bad = torch.zeros(2, 5)
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match="W must be finite"):
        adapter.set_weight(head, bad)
    with pytest.raises(TypeError, match="W must be a torch.Tensor"):
        adapter.set_weight(head, [[0.0] * 5] * 2)  # type: ignore[arg-type]
    assert torch.equal(adapter.get_weight(head), before)


# ---------------------------------------------------------------------------------------------
# unsupported heads and bad input
# ---------------------------------------------------------------------------------------------


class _ScaledLinear(nn.Linear):
    def forward(self, input: Tensor) -> Tensor:
        return 2 * super().forward(input)


@pytest.mark.parametrize(
    ("head", "error", "match"),
    [
        (nn.Conv1d(2, 3, 3), TypeError, r"Conv1d heads are not supported.*nn\.Conv2d"),
        (nn.Conv3d(2, 3, 3), TypeError, r"Conv3d.*only 2-d convolutions"),
        (nn.ConvTranspose1d(2, 3, 3), TypeError, r"ConvTranspose1d"),
        (nn.Sequential(nn.Linear(2, 2)), TypeError,
         r"unsupported head Sequential.*nn\.Linear, nn\.Conv2d, nn\.ConvTranspose2d"),
        (nn.ReLU(), TypeError, r"unsupported head ReLU"),
        ("linear", TypeError, r"must be an nn\.Module.*found str"),
        (_ScaledLinear(2, 2), TypeError, r"overrides forward"),
        (nn.Conv2d(4, 4, 3, groups=2), ValueError, r"groups=2.*use groups=1"),
        (nn.ConvTranspose2d(4, 4, 3, groups=4), ValueError, r"groups=4"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), ValueError,
         r"padding_mode='reflect'"),
        (nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2), ValueError,
         r"output_padding=\(2, 2\) must be smaller than stride or dilation"),
        (nn.LazyLinear(3), ValueError, r"uninitialised \(lazy\)"),
        (weight_norm(nn.Conv2d(2, 2, 3)), ValueError, r"computed \(a parametrization"),
    ],
)
def test_unsupported_heads_are_rejected(head: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        head_adapter(head)


def _bad_inputs() -> list[Any]:
    nan_x = torch.randn(2, 3, 5, 6)
    nan_x[1, 2, 3, 4] = float("nan")
    inf_y = torch.randn(2, 4, 5, 6)
    inf_y[0, 0, 0, 0] = float("inf")
    conv = nn.Conv2d(3, 4, 3, padding=1)
    convt = nn.ConvTranspose2d(3, 2, 4, 2, 1)
    linear = nn.Linear(5, 2)
    return [
        pytest.param(conv, torch.randn(2, 3, 5, 6), torch.randn(3, 4, 5, 6), ValueError,
                     r"features has 2 samples but targets has 3", id="batch-mismatch"),
        pytest.param(conv, torch.randn(2, 2, 5, 6), torch.randn(2, 4, 5, 6), ValueError,
                     r"features has 2 channels.*in_channels=3", id="channels"),
        pytest.param(conv, torch.randn(2, 3, 5, 6), torch.randn(2, 4, 5, 5), ValueError,
                     r"targets has shape \(2, 4, 5, 5\).*produces \(2, 4, 5, 6\)",
                     id="target-size"),
        pytest.param(convt, torch.randn(2, 3, 4, 5), torch.randn(2, 2, 8, 9), ValueError,
                     r"targets has shape \(2, 2, 8, 9\).*produces \(2, 2, 8, 10\)",
                     id="convt-target-size"),
        pytest.param(conv, torch.randn(3, 5, 6), torch.randn(4, 5, 6), ValueError,
                     r"must have shape \(n_samples, 3, H, W\).*3 dims", id="unbatched"),
        pytest.param(conv, nan_x, torch.randn(2, 4, 5, 6), ValueError,
                     r"features must be finite, found 1 NaN", id="nan-features"),
        pytest.param(conv, torch.randn(2, 3, 5, 6), inf_y, ValueError,
                     r"targets must be finite", id="inf-targets"),
        pytest.param(nn.Conv2d(3, 1, 7), torch.randn(2, 3, 5, 6), torch.randn(2, 1, 1, 1),
                     ValueError, r"smaller than the dilated kernel", id="too-small"),
        pytest.param(linear, torch.randn(4, 6), torch.randn(4, 2), ValueError,
                     r"6 features.*in_features=5", id="linear-features"),
        pytest.param(linear, torch.randn(4, 5), torch.randn(4, 3), ValueError,
                     r"targets has shape \(4, 3\).*\(4, 2\)", id="linear-targets"),
        pytest.param(linear, torch.randn(5), torch.randn(2), ValueError,
                     r"add a batch dimension", id="linear-unbatched"),
        pytest.param(linear, torch.zeros(0, 5), torch.zeros(0, 2), ValueError,
                     r"no samples", id="empty"),
        pytest.param(linear, torch.ones(4, 5, dtype=torch.int64), torch.randn(4, 2), TypeError,
                     r"features must have a floating-point dtype", id="integer"),
        pytest.param(linear, torch.randn(4, 5).numpy(), torch.randn(4, 2), TypeError,
                     r"features must be a torch.Tensor", id="numpy"),
    ]


@pytest.mark.parametrize(("head", "x", "y", "error", "match"), _bad_inputs())
def test_bad_input_raises_clear_errors(
    head: nn.Module, x: Any, y: Any, error: type[Exception], match: str
) -> None:
    adapter = head_adapter(head)
    with pytest.raises(error, match=match):
        adapter.design(head, x, y)
    with pytest.raises(error, match=match):
        adapter.statistics(head, x, y)


def test_statistics_method_must_be_known() -> None:
    head, x, y = _make("conv-k1")
    with pytest.raises(ValueError, match="method must be one of"):
        head_adapter(head).statistics(head, x, y, method="fft")


@pytest.mark.parametrize("name", ["convt-autoencoder-small", "convt-nonsquare"])
def test_auto_method_falls_back_to_gather_when_products_exceed_the_block(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block limit below one shift's products (positions x c x c) takes the gather path."""
    head, x, y = _make(name)
    adapter = head_adapter(head)
    ref = gram_statistics(*adapter.design(head, x, y), n_samples=x.shape[0])

    def no_correlation(*args: object) -> Tensor:
        raise RuntimeError("correlation path taken")

    # the transposed convolution's correlation path looks window_gram_blocks up in its module
    monkeypatch.setattr(transpose_module, "window_gram_blocks", no_correlation)
    got = adapter.statistics(head, x, y, max_block_elements=10)
    torch.testing.assert_close(got.ztz, ref.ztz, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="correlation path taken"):
        adapter.statistics(head, x, y, max_block_elements=10**6)


def test_accumulation_dtype_must_be_floating() -> None:
    head = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="accumulation dtype"):
        head_adapter(head).statistics(head, torch.randn(4, 3), torch.randn(4, 2),
                                      dtype=torch.int64)


def test_adapter_is_found_per_type_and_is_stateless() -> None:
    a, b = nn.Conv2d(2, 2, 3), nn.Conv2d(3, 1, 1, bias=False)
    adapter = head_adapter(a)
    assert adapter is head_adapter(b)
    assert isinstance(adapter, HeadAdapter)
    assert (adapter.num_features(a), adapter.num_features(b)) == (19, 3)
    assert "Conv2dAdapter" in repr(adapter)
    with pytest.raises(TypeError, match="handles nn.Conv2d heads, found Linear"):
        adapter.num_features(nn.Linear(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["linear-bias", "conv-k3x2-s2x1-d2x1-p1x0",
                                  "convt-autoencoder-small", "convt-nonsquare"])
def test_cuda_statistics_match_cpu(name: str) -> None:
    head, x, y = _make(name, f32)
    adapter = head_adapter(head)
    cpu = adapter.statistics(head, x, y)
    head_cuda = head.cuda()
    gpu = adapter.statistics(head_cuda, x.cuda(), y.cuda())
    for got, want in zip(gpu[:3], cpu[:3], strict=True):
        assert got.device.type == "cuda" and got.dtype == f64
        torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-10)
    W = torch.randn(adapter.num_outputs(head), adapter.num_features(head), dtype=f64)
    adapter.set_weight(head_cuda, W)  # W on the CPU, parameters on the GPU
    assert head_cuda.weight.device.type == "cuda" and head_cuda.weight.dtype == f32
    torch.testing.assert_close(adapter.get_weight(head_cuda).cpu(), W.float())
