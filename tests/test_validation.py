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


def test_check_int_accepts_integers_and_rejects_bools_floats_and_out_of_range():
    import numpy as np

    from slimtrain._validation import check_int

    assert check_int("n", 3) == 3
    assert check_int("n", np.int64(4), minimum=4) == 4
    with pytest.raises(TypeError, match="n must be an integer, found True"):
        check_int("n", True)
    with pytest.raises(TypeError, match="found 2.0"):
        check_int("n", 2.0)
    with pytest.raises(ValueError, match="n must be >= 1, found 0"):
        check_int("n", 0, minimum=1)
    with pytest.raises(ValueError, match="n must be <= 5, found 6"):
        check_int("n", 6, maximum=5)


def test_check_real_bounds_and_finiteness():
    from slimtrain._validation import check_real

    assert check_real("x", 2) == 2.0
    assert isinstance(check_real("x", 2), float)
    with pytest.raises(TypeError, match="x must be a real number"):
        check_real("x", "1.0")
    with pytest.raises(TypeError):
        check_real("x", False)
    with pytest.raises(ValueError, match="x must be finite, found nan"):
        check_real("x", float("nan"))
    with pytest.raises(ValueError, match="x must be finite, found an integer beyond"):
        check_real("x", 10**400)
    with pytest.raises(ValueError, match="x must be > 0.0, found 0.0"):
        check_real("x", 0.0, minimum=0.0, strict_minimum=True)
    assert check_real("x", 0.0, minimum=0.0) == 0.0
    with pytest.raises(ValueError, match="x must be <= 1.0"):
        check_real("x", 1.5, maximum=1.0)


def test_num_threads_sets_and_restores_the_caller_setting():
    import torch

    from slimtrain._threads import num_threads, threads_per_local_process

    before = torch.get_num_threads()
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), num_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    assert threads_per_local_process(1) >= threads_per_local_process(2) >= 1
    assert threads_per_local_process(10**6) == 1
