"""The claim task against real Redis and S3: the task body runs in-process (Celery's apply), reading and
writing real objects."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from celery import states

import tasks.runtime
from devtools.services import free_port
from settings import Settings
from tasks.celery_app import InferenceCelery, create_celery
from tasks.claims import SchemaMismatch, result_key, score_claim
from tasks.demo_model import FEATURES, SAMPLE_KEY, SAMPLE_ROWS
from tasks.errors import ObjectMissing, StorageUnavailable
from tasks.storage import ObjectStore

pytestmark = pytest.mark.integration


@pytest.fixture
def app(base_settings: Settings, demo_model: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[InferenceCelery]:
    monkeypatch.setattr(tasks.runtime, "_runtime", None)  # a runtime built from this test's settings
    yield create_celery(base_settings, main="claims-test")


@pytest.fixture
def store(base_settings: Settings) -> ObjectStore:
    return ObjectStore(base_settings)


def parquet(columns: dict[str, list[float]]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def run(claim_id: str, bucket: str, object_key: str) -> object:
    return score_claim.apply(kwargs={"claim_id": claim_id, "bucket": bucket, "object_key": object_key},
                             task_id=f"claims-test:0:{uuid.uuid4().int % 10**6}")


def test_scores_every_row_and_stores_the_result(app: InferenceCelery, store: ObjectStore, base_settings: Settings,
                                                demo_model: str, caplog: pytest.LogCaptureFixture) -> None:
    # Given a claim on the demo Parquet sample
    claim_id = f"it-{uuid.uuid4().hex[:8]}"
    # When the task runs twice (a redelivery)
    with caplog.at_level(logging.INFO):
        first = run(claim_id, base_settings.bucket_processed, SAMPLE_KEY)
        second = run(claim_id, base_settings.bucket_processed, SAMPLE_KEY)
    # Then the result object holds one prediction per row, from the served model
    assert first.state == states.SUCCESS, first.result
    body = json.loads(store.get_bytes(base_settings.bucket_logs, result_key(claim_id)))
    assert set(body) == {"claim_id", "model_version", "rows", "predictions", "completed_at_ms"}
    assert (body["claim_id"], body["model_version"], body["rows"]) == (claim_id, demo_model, SAMPLE_ROWS)
    assert len(body["predictions"]) == SAMPLE_ROWS and all(isinstance(p, float) for p in body["predictions"])
    # And the redelivery is not computed again
    assert second.state == states.SUCCESS and second.result["computed"] is False
    starts = [r for r in caplog.records if getattr(r, "event", None) == "predict_inference_start"
              and getattr(r, "claim_id", None) == claim_id]
    assert len(starts) == 1 and starts[0].batch_size == SAMPLE_ROWS


def test_missing_object_fails_at_once(app: InferenceCelery, store: ObjectStore, base_settings: Settings) -> None:
    claim_id = f"it-{uuid.uuid4().hex[:8]}"
    result = run(claim_id, base_settings.bucket_processed, "nowhere/missing.parquet")
    assert result.state == states.FAILURE
    assert isinstance(result.result, ObjectMissing) and result.result.code == "object_missing"
    assert not store.exists(base_settings.bucket_logs, result_key(claim_id))


@pytest.mark.parametrize("columns", [
    {"a": [1.0], "b": [2.0]},                                              # other names
    {name: [1.0] for name in FEATURES[:-1]},                               # one missing
    {**{name: [1.0] for name in FEATURES}, "extra": [0.0]},                # one too many
    {**{name: [1.0] for name in FEATURES[:-1]}, FEATURES[-1]: ["text"]},   # not numbers
])
def test_wrong_columns_are_a_schema_mismatch(app: InferenceCelery, store: ObjectStore, base_settings: Settings,
                                             columns: dict[str, list[float]]) -> None:
    key = f"it/{uuid.uuid4().hex[:8]}.parquet"
    store.put_bytes(base_settings.bucket_processed, key, parquet(columns))
    result = run(f"it-{uuid.uuid4().hex[:8]}", base_settings.bucket_processed, key)
    assert result.state == states.FAILURE
    assert isinstance(result.result, SchemaMismatch) and result.result.code == "schema_mismatch"


def test_columns_in_another_order_are_reordered(app: InferenceCelery, store: ObjectStore,
                                                base_settings: Settings) -> None:
    key = f"it/{uuid.uuid4().hex[:8]}.parquet"
    store.put_bytes(base_settings.bucket_processed, key, parquet({name: [0.5, 1.5] for name in reversed(FEATURES)}))
    claim_id = f"it-{uuid.uuid4().hex[:8]}"
    assert run(claim_id, base_settings.bucket_processed, key).state == states.SUCCESS
    assert json.loads(store.get_bytes(base_settings.bucket_logs, result_key(claim_id)))["rows"] == 2


def test_unreachable_storage_is_retried_then_fails(base_settings: Settings, demo_model: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # Given a worker whose object store does not answer
    monkeypatch.setattr(tasks.runtime, "_runtime", None)
    create_celery(base_settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{free_port()}"}), main="claims-down")
    # When a claim runs
    with caplog.at_level(logging.WARNING):
        result = run(f"it-{uuid.uuid4().hex[:8]}", base_settings.bucket_processed, SAMPLE_KEY)
    # Then it was retried a bounded number of times, and failed as storage_unavailable
    assert result.state == states.FAILURE
    assert isinstance(result.result, StorageUnavailable) and result.result.code == "storage_unavailable"
    retries = [r for r in caplog.records if getattr(r, "event", None) == "claim_retry"]
    assert len(retries) == 3
