"""check_features (nlanalysis/adapters/registry.py): NaN and inf refused, finite inputs whose sum overflows accepted."""
from __future__ import annotations

import math

import pytest
import torch

from nlanalysis.adapters import check_features


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    x = torch.randn(2, 3, 4, 5)
    x[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        check_features(x)


def test_finite_values_whose_sum_overflows_are_accepted() -> None:
    x = torch.full((1, 4, 3, 3), 3e38)  # every value finite, their float32 sum inf
    assert not math.isfinite(float(x.sum()))
    check_features(x)
    x[0, 0, 0, 0] = -math.inf  # inf - inf: a NaN sum, and a value that is not finite
    with pytest.raises(ValueError, match="NaN or inf"):
        check_features(x)


def test_shape_and_type_are_checked() -> None:
    with pytest.raises(ValueError, match="4-D"):
        check_features(torch.zeros(3, 4, 5))
    with pytest.raises(TypeError):
        check_features([1.0])


def test_an_input_that_requires_grad_is_read_without_a_warning() -> None:
    import warnings

    x = torch.randn(1, 2, 3, 3, requires_grad=True)  # a block input in a forward with autograd on
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_features(x)
    x = torch.full((1, 2, 3, 3), math.nan, requires_grad=True)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="NaN or inf"):
        warnings.simplefilter("error")
        check_features(x)
