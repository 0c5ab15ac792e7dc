"""The claim task: score every row of a Parquet object and store the result, on the bulk lane.

A claim names a Parquet file of feature rows in object storage. The task reads it, checks its columns
against the served model's feature names, predicts all rows in one model call and writes

    BUCKET_LOGS: claims/<claim_id>.json   {"claim_id", "model_version", "rows", "predictions", "completed_at_ms"}

Idempotent: the bridge gives each claim the task id `<topic>:<partition>:<offset>`, and a claim whose result
object already exists is not computed again (a redelivery after a crash costs one stat call).

Errors: a missing object or wrong columns fail at once (permanent, `object_missing` / `schema_mismatch`);
unreachable storage or a model not loaded yet is retried with exponential backoff, STORAGE_RETRIES
times, then fails with its code. The bridge sends failures to the DLQ with `error.code`.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from celery import shared_task

from tasks.celery_app import CLAIM_TASK
from tasks.deadline import DeadlineTask
from tasks.errors import InvalidInput, ModelUnavailable, StorageUnavailable
from tasks.inference import LoadedModel
from tasks.logs import log_event, now_ms
from tasks.runtime import worker_runtime

log = logging.getLogger(__name__)

# Transient failures are retried 3 times after 0.5, 1 and 2 s: a storage blip of a few seconds is
# absorbed, a real outage sends the claim to the DLQ within ~4 s instead of holding a bridge slot.
STORAGE_RETRIES = 3
RETRY_BASE_S = 0.5


class SchemaMismatch(InvalidInput):
    """The Parquet object's columns are not the model's features (or not numbers): permanent."""

    code = "schema_mismatch"


def result_key(claim_id: str) -> str:
    return f"claims/{claim_id}.json"


def feature_matrix(data: bytes, feature_names: tuple[str, ...]) -> np.ndarray:
    """The rows of a Parquet file as a float64 matrix in the model's feature order."""
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:
        raise SchemaMismatch(f"not a readable Parquet file: {type(error).__name__}") from None
    columns = table.column_names
    if sorted(columns) != sorted(feature_names):
        missing = sorted(set(feature_names) - set(columns))
        extra = sorted(set(columns) - set(feature_names))
        raise SchemaMismatch(
            f"columns do not match the model's features (missing {missing[:5]}, unexpected {extra[:5]})")
    try:
        rows = np.column_stack([table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                                for name in feature_names]) if table.num_rows else np.empty((0, len(feature_names)))
    except (TypeError, ValueError, pa.ArrowException) as error:
        raise SchemaMismatch(f"feature columns must be numeric: {type(error).__name__}") from None
    if not np.isfinite(rows).all():
        raise SchemaMismatch("feature columns contain missing or non-finite values")
    return rows


def score(model: LoadedModel, rows: np.ndarray, task_id: str, claim_id: str) -> list[float]:
    if len(rows) == 0:
        return []
    log_event(log, "predict_inference_start", task_id=task_id, batch_size=len(rows), claim_id=claim_id)
    started = time.perf_counter()
    predictions = model.predict(rows)
    log_event(log, "predict_inference_end", task_id=task_id, batch_size=len(rows), claim_id=claim_id,
              duration_ms=round((time.perf_counter() - started) * 1000, 3))
    return predictions


@shared_task(bind=True, base=DeadlineTask, name=CLAIM_TASK, max_retries=STORAGE_RETRIES)
def score_claim(self: DeadlineTask, claim_id: str, bucket: str, object_key: str,
                model_version: str | None = None) -> dict[str, Any]:
    runtime = worker_runtime(self.app.settings)
    logs_bucket = runtime.settings.bucket_logs
    task_id = self.request.id
    try:
        if runtime.store.exists(logs_bucket, result_key(claim_id)):
            log_event(log, "claim_already_scored", task_id=task_id, claim_id=claim_id)
            return {"claim_id": claim_id, "computed": False}
        model = runtime.model.get()
        rows = feature_matrix(runtime.store.get_bytes(bucket, object_key), model.info.feature_names)
        predictions = score(model, rows, task_id, claim_id)
        body = {"claim_id": claim_id, "model_version": model.version, "rows": len(predictions),
                "predictions": predictions, "completed_at_ms": now_ms()}
        runtime.store.put_bytes(logs_bucket, result_key(claim_id), json.dumps(body).encode(), "application/json")
    except (StorageUnavailable, ModelUnavailable) as error:
        if self.request.retries >= STORAGE_RETRIES:
            raise  # out of retries: the claim fails with the error's code
        countdown = RETRY_BASE_S * 2 ** self.request.retries
        log.warning("claim %s: %s; retry %d of %d in %.1fs", claim_id, error.code, self.request.retries + 1,
                    STORAGE_RETRIES, countdown,
                    extra={"event": "claim_retry", "task_id": task_id, "claim_id": claim_id})
        raise self.retry(exc=error, countdown=countdown) from None
    if model_version and model_version != model.version:
        log_event(log, "claim_model_differs", task_id=task_id, claim_id=claim_id, requested=model_version,
                  served=model.version)
    return {"claim_id": claim_id, "computed": True, "rows": len(predictions), "model_version": model.version}
