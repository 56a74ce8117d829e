"""Networks of the experiments: shapes, the exact head, seeded initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimtrain.problems.networks import (
    ResidualBlock,
    autoencoder_network,
    cdr_network,
    init_parameters,
    peaks_network,
)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cdr_network_shapes_and_forward_formula() -> None:
    features, head = cdr_network()
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (16, 72) and head.bias is not None
    x = torch.randn(5, 55, generator=torch.Generator().manual_seed(1))
    z = features(x)
    assert z.shape == (5, 16)
    assert head(z).shape == (5, 72)
    # forward = opening linear, then x + h tanh(K x + b) per block
    ref = features[0](x)
    blocks = [m for m in features if isinstance(m, ResidualBlock)]
    assert len(blocks) == 4
    for blk in blocks:
        ref = ref + 0.5 * torch.tanh(blk.linear.weight @ ref.T + blk.linear.bias[:, None]).T
    torch.testing.assert_close(z, ref)


def test_peaks_network_shapes() -> None:
    features, head = peaks_network()
    assert head(features(torch.zeros(7, 2))).shape == (7, 1)
    assert len([m for m in features if isinstance(m, ResidualBlock)]) == 8
    f2, h2 = peaks_network(width=4, depth=0)
    assert h2(f2(torch.zeros(3, 2))).shape == (3, 1)


def test_autoencoder_head_is_exact_spec_layer() -> None:
    features, head = autoencoder_network()
    assert type(head) is nn.ConvTranspose2d
    assert (head.in_channels, head.out_channels) == (16, 1)
    assert head.kernel_size == (4, 4) and head.stride == (2, 2) and head.padding == (1, 1)
    assert head.output_padding == (0, 0) and head.dilation == (1, 1) and head.groups == 1
    assert head.bias is not None
    assert head.weight.numel() + head.bias.numel() == 257  # 16*4*4 + 1 unknowns
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    z = features(x)
    assert z.shape == (2, 16, 14, 14)
    assert head(z).shape == (2, 1, 28, 28)


def test_autoencoder_layers_follow_spec() -> None:
    features, _ = autoencoder_network()
    kinds = [type(m) for m in features]
    assert kinds == [
        nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear,
        nn.Linear, nn.Unflatten, nn.BatchNorm2d, nn.ConvTranspose2d, nn.ReLU, nn.BatchNorm2d,
    ]
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [
        (1, 16, (2, 2)), (32 // 2, 32, (2, 2))
    ]
    linears = [m for m in features if isinstance(m, nn.Linear)]
    assert (linears[0].in_features, linears[0].out_features) == (32 * 7 * 7, 50)
    assert (linears[1].in_features, linears[1].out_features) == (50, 32 * 7 * 7)


def test_autoencoder_width_and_small_images() -> None:
    features, head = autoencoder_network(width=64)
    assert (head.in_channels, head.out_channels) == (64, 1)
    assert head.weight.numel() + 1 == 1025
    assert head(features(torch.zeros(2, 1, 28, 28))).shape == (2, 1, 28, 28)
    f8, h8 = autoencoder_network(image_size=8, latent=10)
    out = h8(f8(torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))))
    assert out.shape == (4, 1, 8, 8)


@pytest.mark.parametrize("builder", [cdr_network, peaks_network, autoencoder_network])
def test_deterministic_by_seed_and_global_rng_untouched(builder) -> None:
    state = torch.random.get_rng_state()
    a = builder(seed=3)[0], builder(seed=3)[1]
    assert torch.equal(state, torch.random.get_rng_state())  # global generator not used
    b = builder(seed=3)
    c = builder(seed=4)
    assert _same_state(a[0], b[0]) and _same_state(a[1], b[1])
    assert not _same_state(a[0], c[0])
    gen1, gen2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    d, e = builder(seed=gen1), builder(seed=gen2)
    assert _same_state(d[0], e[0]) and _same_state(d[1], e[1])


@torch.no_grad()
def test_init_matches_torch_default_distribution() -> None:
    features, head = autoencoder_network()
    for m in [*features.modules(), head]:
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
            bound = 1.0 / math.sqrt(fan_in)
            assert float(m.weight.abs().max()) <= bound
            assert float(m.weight.abs().max()) > 0.9 * bound or m.weight.numel() < 50
            assert m.bias is not None and float(m.bias.abs().max()) <= bound
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            assert m.num_batches_tracked is not None
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            assert torch.equal(m.running_var, torch.ones_like(m.running_var))
            assert int(m.num_batches_tracked) == 0


def test_init_parameters_rejects_unknown_layers() -> None:
    with pytest.raises(TypeError, match="LayerNorm"):
        init_parameters(nn.LayerNorm(4), torch.Generator())


@pytest.mark.parametrize(
    "kwargs",
    [{"image_size": 30}, {"image_size": 2}, {"width": 0}, {"latent": 0}, {"width": 1.5}],
)
def test_autoencoder_bad_sizes(kwargs: dict) -> None:
    with pytest.raises(TypeError if kwargs == {"width": 1.5} else ValueError):
        autoencoder_network(**kwargs)


def test_residual_bad_input() -> None:
    with pytest.raises(ValueError):
        cdr_network(depth=-1)
    with pytest.raises(ValueError):
        cdr_network(step_size=0.0)
    with pytest.raises(TypeError):
        cdr_network(seed="a")  # type: ignore[arg-type]
