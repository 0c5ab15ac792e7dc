"""A prediction JSON cannot carry (an infinity or NaN, from finite inputs far outside the model's range) is a
422 `non_finite_prediction`, for a whole request and for one item of a micro-batch."""

import pytest

from tasks.errors import InvalidInput, UnscorableInput, input_error
from tasks.inference import check_predictions


def test_predictions_that_are_not_finite_numbers_are_422() -> None:
    assert check_predictions([1.0, -2.5]) == [1.0, -2.5]
    for value in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(UnscorableInput) as raised:
            check_predictions([1.0, value])
        assert (raised.value.status, raised.value.code) == (422, "non_finite_prediction")


def test_a_batch_items_error_keeps_its_status() -> None:
    assert isinstance(input_error("non_finite_prediction", "m"), UnscorableInput)
    other = input_error("wrong_feature_count", "m")
    assert (type(other), other.status, other.code) == (InvalidInput, 400, "wrong_feature_count")
