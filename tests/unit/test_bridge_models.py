"""Model-topic parsing: a model-selected record becomes a Pointer, a model-training record a Training run,
or a ClaimRejected with the code its DLQ entry carries."""

from __future__ import annotations

import json

import pytest

from bridge.errors import ClaimRejected
from bridge.models import Training, parse_selected, parse_training
from tasks.model_store import Pointer

pytestmark = pytest.mark.unit

SELECTED = {"model_name": "demand-forecast", "version": "v2", "bucket": "mlflow", "object_key": "models/m/v2/model.joblib"}
TRAINING = {"run_id": "r1", "bucket": "b", "object_key": "k"}


def value(data: object) -> bytes:
    return json.dumps(data).encode()


def test_a_model_selected_record_is_the_pointer_it_names() -> None:
    assert parse_selected(value({**SELECTED, "promoted_at_ms": 1})) == Pointer("demand-forecast", "v2", "mlflow",
                                                                               "models/m/v2/model.joblib")


def test_a_model_training_record_is_the_run_it_announces() -> None:
    # The bucket is the training task's business (one run of its own): only its shape is checked here
    assert parse_training(value(TRAINING)) == Training("r1", "b", "k")


POISON = [
    (None, "invalid_json"),
    (b"not json", "invalid_json"),
    (b"\xff", "invalid_json"),
    (b"[" * 50_000 + b"]" * 50_000, "invalid_json"),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "invalid_json"),
    (b"1" * 5_000, "invalid_json"),
    (b"[]", "invalid_claim"),
    (b'"text"', "invalid_claim"),
]


@pytest.mark.parametrize(("raw", "code"), [
    *POISON,
    (value({**SELECTED, "version": 2}), "invalid_claim"),  # the old parser took str(2)
    (value({**SELECTED, "model_name": ""}), "invalid_claim"),
    (value({k: v for k, v in SELECTED.items() if k != "bucket"}), "invalid_claim"),
    (value({**SELECTED, "object_key": "m/../x"}), "invalid_claim"),
    (value({**SELECTED, "version": "v\x00"}), "invalid_claim"),
    (value({**SELECTED, "version": "\udfff"}), "invalid_claim"),
    (value({**SELECTED, "version": "v" * 100_000}), "invalid_claim"),
])
def test_bad_model_selected_records_get_their_code(raw: bytes | None, code: str) -> None:
    with pytest.raises(ClaimRejected) as rejected:
        parse_selected(raw)
    assert rejected.value.code == code


@pytest.mark.parametrize(("raw", "code"), [
    *POISON,
    (value({**TRAINING, "run_id": None}), "invalid_claim"),
    (value({**TRAINING, "run_id": "r" * 201}), "invalid_claim"),
    (value({**TRAINING, "bucket": ["b"]}), "invalid_claim"),
    (value({**TRAINING, "object_key": " "}), "invalid_claim"),
    (b'{"run_id": "r1", "bucket": "b", "object_key": "k", "run_id": 7}', "invalid_claim"),
])
def test_bad_model_training_records_get_their_code(raw: bytes | None, code: str) -> None:
    with pytest.raises(ClaimRejected) as rejected:
        parse_training(raw)
    assert rejected.value.code == code
