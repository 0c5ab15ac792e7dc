"""The claims task against real Redis and S3: the task body runs in-process (Celery's apply), reading and
writing real objects; each claim's outcome is read back from the result backend under its own task id."""

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
from celery.app.task import Context
from celery.result import AsyncResult

import tasks.runtime
from devtools.services import free_port
from settings import Settings
from tasks.celery_config import InferenceCelery, create_celery
from tasks.claim_scoring import SchemaMismatch, result_key, score_claims
from tasks.demo_model import FEATURES, SAMPLE_KEY, SAMPLE_ROWS
from tasks.errors import ModelUnavailable, ObjectMissing, StorageUnavailable
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


def item(claim_id: str, bucket: str, object_key: str, deadline_ms: int | None = None) -> dict[str, object]:
    return {"id": f"claims-test:0:{uuid.uuid4().int % 10**9}", "claim_id": claim_id, "bucket": bucket,
            "object_key": object_key, "deadline_ms": deadline_ms}


def run_batch(items: list[dict[str, object]]) -> list[AsyncResult]:
    score_claims.apply(kwargs={"items": items}, task_id=f"{items[0]['id']}+{len(items)}")
    return [AsyncResult(str(entry["id"]), app=score_claims.app) for entry in items]


def run(claim_id: str, bucket: str, object_key: str) -> AsyncResult:
    return run_batch([item(claim_id, bucket, object_key)])[0]


def test_scores_every_row_and_stores_the_result(app: InferenceCelery, store: ObjectStore, base_settings: Settings,
                                                demo_model: str, caplog: pytest.LogCaptureFixture) -> None:
    # Given a claim on the demo Parquet sample
    claim_id = f"it-{uuid.uuid4().hex[:8]}"
    # When the task runs twice with the same task id (a redelivery)
    claim = item(claim_id, base_settings.bucket_processed, SAMPLE_KEY)
    with caplog.at_level(logging.INFO):
        first = run_batch([claim])[0]
        second = run_batch([claim])[0]
    # Then the result object holds one prediction per row, from the served model
    assert first.state == states.SUCCESS, first.result
    body = json.loads(store.get_bytes(base_settings.bucket_logs, result_key(claim_id)))
    assert set(body) == {"claim_id", "model_version", "rows", "predictions", "completed_at_ms"}
    assert (body["claim_id"], body["model_version"], body["rows"]) == (claim_id, demo_model, SAMPLE_ROWS)
    assert len(body["predictions"]) == SAMPLE_ROWS and all(isinstance(p, float) for p in body["predictions"])
    # And the redelivery is not computed again
    assert second.state == states.SUCCESS and second.result["computed"] is True
    starts = [r for r in caplog.records if getattr(r, "event", None) == "predict_inference_start"
              and getattr(r, "claim_id", None) == claim_id]
    assert len(starts) == 1 and starts[0].batch_size == SAMPLE_ROWS
    assert [r.claim_id for r in caplog.records if getattr(r, "event", None) == "claim_already_scored"] == [claim_id]


def test_each_claim_of_a_batch_has_its_own_outcome(app: InferenceCelery, store: ObjectStore,
                                                   base_settings: Settings) -> None:
    # Given a batch mixing valid claims (two on one object), a missing object, wrong columns and a claim
    # whose deadline has passed
    bad_key = f"it/{uuid.uuid4().hex[:8]}.parquet"
    store.put_bytes(base_settings.bucket_processed, bad_key, parquet({"a": [1.0]}))
    processed = base_settings.bucket_processed
    ids = [f"it-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    items = [item(ids[0], processed, SAMPLE_KEY), item(ids[1], processed, "nowhere/missing.parquet"),
             item(ids[2], processed, bad_key), item(ids[3], processed, SAMPLE_KEY, deadline_ms=1),
             item(ids[4], processed, SAMPLE_KEY)]
    # When it runs
    results = run_batch(items)
    # Then the valid ones are stored, the failures carry their codes, the expired one was not run
    assert [r.state for r in results] == [states.SUCCESS, states.FAILURE, states.FAILURE, states.REVOKED,
                                          states.SUCCESS]
    assert results[1].result.code == "object_missing" and results[2].result.code == "schema_mismatch"
    stored = {i for i in ids if store.exists(base_settings.bucket_logs, result_key(i))}
    assert stored == {ids[0], ids[4]}


def test_a_batch_dropped_from_the_queue_marks_every_claim_revoked(app: InferenceCelery) -> None:
    # Given a batch message that Celery dropped as expired (its arguments never decoded)
    entries = [item(f"it-{uuid.uuid4().hex[:8]}", "b", "k") for _ in range(3)]
    request = Context(id="batch", claim_items=[[e["id"], e["claim_id"]] for e in entries])
    # When the worker reports it
    score_claims.on_expired(request, "queue")
    # Then every claim is REVOKED under its own id, for the bridge awaiting it
    assert [AsyncResult(str(e["id"]), app=app).state for e in entries] == [states.REVOKED] * 3


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


def test_rows_whose_prediction_is_not_finite_are_a_schema_mismatch(app: InferenceCelery, store: ObjectStore,
                                                                   base_settings: Settings) -> None:
    # Given finite feature values far outside the model's range (its output overflows)
    key = f"it/{uuid.uuid4().hex[:8]}.parquet"
    store.put_bytes(base_settings.bucket_processed, key, parquet({name: [1e308, -1e308] for name in FEATURES}))
    claim_id = f"it-{uuid.uuid4().hex[:8]}"
    # Then the claim fails for good instead of storing a result with Infinity or NaN (not JSON)
    result = run(claim_id, base_settings.bucket_processed, key)
    assert result.state == states.FAILURE
    assert isinstance(result.result, SchemaMismatch) and result.result.code == "schema_mismatch"
    assert not store.exists(base_settings.bucket_logs, result_key(claim_id))


def test_columns_in_another_order_are_reordered(app: InferenceCelery, store: ObjectStore,
                                                base_settings: Settings) -> None:
    key = f"it/{uuid.uuid4().hex[:8]}.parquet"
    store.put_bytes(base_settings.bucket_processed, key, parquet({name: [0.5, 1.5] for name in reversed(FEATURES)}))
    claim_id = f"it-{uuid.uuid4().hex[:8]}"
    assert run(claim_id, base_settings.bucket_processed, key).state == states.SUCCESS
    assert json.loads(store.get_bytes(base_settings.bucket_logs, result_key(claim_id)))["rows"] == 2


def test_unreachable_storage_is_retried_then_fails(app: InferenceCelery, base_settings: Settings,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # Given a worker serving a model, whose object store then stops answering
    runtime = tasks.runtime.worker_runtime(base_settings)
    runtime.model.get()
    runtime.store = ObjectStore(base_settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{free_port()}"}))
    # When a claim runs
    with caplog.at_level(logging.WARNING):
        result = run(f"it-{uuid.uuid4().hex[:8]}", base_settings.bucket_processed, SAMPLE_KEY)
    # Then it was retried a bounded number of times, and failed as storage_unavailable
    assert result.state == states.FAILURE
    assert isinstance(result.result, StorageUnavailable) and result.result.code == "storage_unavailable"
    retries = [r for r in caplog.records if getattr(r, "event", None) == "claim_retry"]
    assert len(retries) == 3


def test_no_model_is_retried_then_fails(base_settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    # Given a worker that cannot load a model (its object store does not answer)
    monkeypatch.setattr(tasks.runtime, "_runtime", None)
    create_celery(base_settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{free_port()}"}), main="claims-down")
    # When a claim runs
    with caplog.at_level(logging.WARNING):
        result = run(f"it-{uuid.uuid4().hex[:8]}", base_settings.bucket_processed, SAMPLE_KEY)
    # Then it was retried a bounded number of times, and failed as model_unavailable
    assert result.state == states.FAILURE
    assert isinstance(result.result, ModelUnavailable) and result.result.code == "model_unavailable"
    assert len([r for r in caplog.records if getattr(r, "event", None) == "claim_retry"]) == 3
