"""The shared input checks: finiteness (fast path and entrywise fallback)."""

from __future__ import annotations

import pytest
import torch

from slimtrain._validation import check_finite


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_any_non_finite_entry_is_found(dtype, bad):
    x = torch.ones(7, 3, dtype=dtype)
    x[4, 1] = bad
    with pytest.raises(ValueError, match=r"found 1 NaN or Inf value\(s\) out of 21"):
        check_finite("x", x)


def test_opposite_infinities_and_counts():
    x = torch.tensor([float("inf"), 1.0, -float("inf"), float("nan")])
    with pytest.raises(ValueError, match=r"found 3 NaN or Inf"):
        check_finite("x", x)


@pytest.mark.parametrize(("dtype", "big"), [(torch.float16, 6e4), (torch.float32, 3e38),
                                           (torch.float64, 1e308)])
def test_huge_finite_values_whose_sum_overflows_pass(dtype, big):
    # The sum overflows to inf; the entrywise fallback then finds nothing wrong.
    x = torch.full((8,), big, dtype=dtype)
    assert not torch.isfinite(x.sum())
    check_finite("x", x)


def test_empty_tensor_passes():
    check_finite("empty", torch.empty(0, 3))
