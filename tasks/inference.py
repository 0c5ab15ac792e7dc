"""The inference core: input validation and batch prediction, knowing nothing of HTTP, Celery or Kafka."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tasks.errors import InvalidInput, UnscorableInput


@dataclass(frozen=True)
class ModelInfo:
    model_name: str
    version: str
    n_features: int
    feature_names: tuple[str, ...]

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["feature_names"] = list(self.feature_names)
        return data


def validate_rows(rows: Any, n_features: int) -> np.ndarray:
    """Check a batch of feature rows (a list of lists of finite numbers, n_features each) and return it as
    a float64 matrix. Raises InvalidInput with the precise code for the first problem found."""
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)) or len(rows) == 0:
        raise InvalidInput("instances must be a non-empty list of feature rows")
    for index, row in enumerate(rows):
        where = f"instance {index}" if len(rows) > 1 else "features"
        validate_row(row, n_features, where)
    return np.asarray(rows, dtype=np.float64)


def validate_row(row: Any, n_features: int, where: str = "features") -> None:
    if not isinstance(row, Sequence) or isinstance(row, (str, bytes)):
        raise InvalidInput(f"{where} must be a list of numbers")
    for value in row:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{where} must contain only numbers", code="invalid_feature_value")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond float range
            finite = False
        if not finite:
            raise InvalidInput(f"{where} contains a non-finite number", code="non_finite_number")
    if len(row) != n_features:
        raise InvalidInput(
            f"{where} has {len(row)} values; the model expects {n_features}", code="wrong_feature_count"
        )


def check_predictions(predictions: list[float], where: str = "the rows") -> list[float]:
    """`predictions`, if all are finite; UnscorableInput otherwise (an infinity or NaN has no JSON form)."""
    if not all(math.isfinite(value) for value in predictions):
        raise UnscorableInput(f"the model's output for {where} is not a finite number (an input far outside its range)")
    return predictions


class LoadedModel:
    """A model ready to predict: the estimator and what it expects."""

    def __init__(self, info: ModelInfo, estimator: Any) -> None:
        self.info = info
        self.estimator = estimator

    @property
    def version(self) -> str:
        return self.info.version

    def predict(self, rows: np.ndarray) -> list[float]:
        """One model call for the whole batch."""
        return [float(value) for value in np.ravel(self.estimator.predict(rows))]
