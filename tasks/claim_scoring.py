"""The claim task: score every row of a Parquet object and store the result, on the bulk lane.

A claim names a Parquet file of feature rows in object storage. The task reads it, checks its columns
against the served model's feature names, predicts all rows in one model call and writes

    BUCKET_LOGS: claims/<claim_id>.json   {"claim_id", "model_version", "rows", "predictions", "completed_at_ms"}

The bridge sends claims in batches (`tasks.score_claims`, up to BATCH_SIZE claims per message): an object
named by several claims of a batch is read and parsed once, and each claim's outcome is stored in the
result backend under the claim's own task id, `<topic>:<partition>:<offset>`, where the bridge awaits it.
Each claim keeps its deadline (an expired one is marked REVOKED, never run) and fails on its own.

Idempotent: a redelivered claim (same task id) whose successful result is still stored is not computed
again: one MGET per batch instead of a storage round trip per claim. A redelivery after the result
expired (`result_expires`) computes it again and writes the same object.

Errors: a missing object or wrong columns fail at once (permanent, `object_missing` / `schema_mismatch`);
unreachable storage or a model not loaded yet is retried with exponential backoff, STORAGE_RETRIES
times, then fails with its code. The bridge sends failures to the DLQ with `error.code`.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from celery import shared_task, states
from celery.exceptions import TaskRevokedError

from tasks.celery_config import CLAIM_TASK
from tasks.deadline import DeadlineTask
from tasks.errors import InferenceError, InvalidInput, ModelUnavailable, ObjectMissing, StorageUnavailable
from tasks.inference import LoadedModel
from tasks.logs import log_event, now_ms
from tasks.metrics import EXPIRED
from tasks.results import store_many
from tasks.runtime import WorkerRuntime, worker_runtime

log = logging.getLogger(__name__)

# Transient failures are retried 3 times after 0.5, 1 and 2 s: a storage blip of a few seconds is
# absorbed, a real outage sends the claim to the DLQ within ~4 s instead of holding a bridge slot.
STORAGE_RETRIES = 3
RETRY_BASE_S = 0.5
UPLOAD_THREADS = 4


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
    if not np.isfinite(predictions).all():  # no JSON form: the result object would not be valid JSON
        raise SchemaMismatch("the model's output for these rows is not a finite number (inputs far outside its range)")
    return predictions


class ClaimsTask(DeadlineTask):
    """A batch of claims. Each item's outcome is stored under the item's own task id, so a batch whose
    message expires in the queue marks every item REVOKED (one by one, as the bridge awaits them)."""

    abstract = True

    def on_expired(self, request: Any, source: str) -> None:
        # The message names its items in the `claim_items` header ([[task id, claim id], ...]): a message
        # Celery drops from the queue is never decoded, so its arguments are not at hand.
        expire(self.backend, [pair for pair in getattr(request, "claim_items", None) or () if len(pair) == 2], source)


def expire(backend: Any, items: list[tuple[str, str]], source: str) -> None:
    """Claims whose deadline passed, `(task id, claim id)`: logged `ttl_expired` and stored REVOKED
    under their own task ids, where the bridge awaits them."""
    for item_id, claim_id in items:
        log_event(log, "ttl_expired", source=source, key=claim_id, task_id=item_id)
    store_many(backend, [(item_id, states.REVOKED, TaskRevokedError("expired")) for item_id, _ in items])


@shared_task(bind=True, base=ClaimsTask, name=CLAIM_TASK, max_retries=STORAGE_RETRIES, ignore_result=True)
def score_claims(self: ClaimsTask, items: list[dict[str, Any]]) -> dict[str, int]:
    """Score a batch of claims. `items`: [{"id": "<topic>:<partition>:<offset>", "claim_id", "bucket",
    "object_key", "model_version"?, "deadline_ms"?}]. Every item gets its own result under its id:
    SUCCESS, FAILURE with its error code, or REVOKED when its deadline passed; an object named by several
    claims of the batch is read and parsed once. Transient failures (storage, model) retry the items they
    hit, with backoff, STORAGE_RETRIES times."""
    runtime = worker_runtime(self.app.settings)
    live = _live(items, self.backend)
    finished = _already_scored(runtime, self.backend, live)
    todo = [item for item in live if item["id"] not in finished]
    outcomes: list[tuple[str, str, Any]] = []
    transient: list[dict[str, Any]] = []
    error: InferenceError | None = None
    try:
        model = runtime.model.get()
    except ModelUnavailable as unavailable:
        transient, error = todo, unavailable
    else:
        matrices: dict[tuple[str, str], np.ndarray | InferenceError] = {}
        uploads: list[tuple[dict[str, Any], dict[str, Any], Future[None]]] = []
        for item in todo:
            try:
                body, result = _score_one(runtime, model, item, matrices)
            except StorageUnavailable as unavailable:
                transient.append(item)
                error = unavailable
                continue
            except InferenceError as failed:  # permanent: object missing, wrong columns
                outcomes.append((item["id"], states.FAILURE, failed))
                continue
            uploads.append((item, result, _uploader().submit(
                runtime.store.put_bytes, runtime.settings.bucket_logs, result_key(item["claim_id"]), body,
                "application/json")))
        for item, result, upload in uploads:
            try:
                upload.result()
            except StorageUnavailable as unavailable:
                transient.append(item)
                error = unavailable
            else:
                outcomes.append((item["id"], states.SUCCESS, result))
    store_many(self.backend, outcomes)
    if transient:
        assert error is not None
        if self.request.retries >= STORAGE_RETRIES:
            store_many(self.backend, [(item["id"], states.FAILURE, error) for item in transient])
        else:
            countdown = RETRY_BASE_S * 2 ** self.request.retries
            log.warning("%d claims: %s; retry %d of %d in %.1fs", len(transient), error.code, self.request.retries + 1,
                        STORAGE_RETRIES, countdown,
                        extra={"event": "claim_retry", "task_id": self.request.id,
                               "claim_ids": [item["claim_id"] for item in transient][:20]})
            raise self.retry(kwargs={"items": transient}, countdown=countdown, exc=error) from None
    return {"claims": len(items), "computed": len(outcomes), "already_scored": len(finished)}


def _live(items: list[dict[str, Any]], backend: Any) -> list[dict[str, Any]]:
    """The items still within their deadline; the others are marked REVOKED and logged, never run."""
    now = now_ms()
    live: list[dict[str, Any]] = []
    expired: list[dict[str, Any]] = []
    for item in items:
        (expired if item.get("deadline_ms") is not None and item["deadline_ms"] <= now else live).append(item)
    if expired:
        EXPIRED.labels("worker").inc(len(expired))
        expire(backend, [(item["id"], item["claim_id"]) for item in expired], "worker")
    return live


def _already_scored(runtime: WorkerRuntime, backend: Any, items: list[dict[str, Any]]) -> set[str]:
    """Items whose deterministic task id already holds a successful result: a redelivery after a crash
    or a rebalance. One MGET for the batch; the result stays as it is."""
    if not items:
        return set()
    stored: list[bytes | None] = runtime.redis.mget([backend.get_key_for_task(item["id"]) for item in items])  # type: ignore[assignment]
    done = {item["id"] for item, raw in zip(items, stored, strict=True)
            if raw is not None and backend.decode_result(raw)["status"] == states.SUCCESS}
    for item in items:
        if item["id"] in done:
            log_event(log, "claim_already_scored", task_id=item["id"], claim_id=item["claim_id"])
    return done


@functools.cache
def _uploader() -> ThreadPoolExecutor:
    """Result objects are written UPLOAD_THREADS at a time: a write is mostly waiting for the store, and
    one at a time leaves both the worker and the store idle half the time. Created in the process that
    uses it (a pool child), never before the fork."""
    return ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="claim-upload")


def _score_one(runtime: WorkerRuntime, model: LoadedModel, item: dict[str, Any],
               matrices: dict[tuple[str, str], np.ndarray | InferenceError]) -> tuple[bytes, dict[str, Any]]:
    """The claim's result object and its task result; the object is written by the caller."""
    source = (item["bucket"], item["object_key"])
    if source not in matrices:
        try:  # a storage outage is not remembered: the next claim on this object tries again
            matrices[source] = feature_matrix(runtime.store.get_bytes(*source), model.info.feature_names)
        except (InvalidInput, ObjectMissing) as permanent:
            matrices[source] = permanent
    rows = matrices[source]
    if isinstance(rows, InferenceError):
        raise rows
    claim_id = item["claim_id"]
    predictions = score(model, rows, item["id"], claim_id)
    body = {"claim_id": claim_id, "model_version": model.version, "rows": len(predictions),
            "predictions": predictions, "completed_at_ms": now_ms()}
    requested = item.get("model_version")
    if requested and requested != model.version:
        log_event(log, "claim_model_differs", task_id=item["id"], claim_id=claim_id, requested=requested,
                  served=model.version)
    return json.dumps(body).encode(), {"claim_id": claim_id, "computed": True, "rows": len(predictions),
                                       "model_version": model.version}
