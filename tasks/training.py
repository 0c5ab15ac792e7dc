"""The training task: fit a candidate model on a Parquet file of feature rows plus `target`, store it in
BUCKET_MLFLOW with its metrics, and leave promotion to an operator (`python -m tasks.promote`).

Runs on the bulk lane, triggered by `model-training` records `{"run_id", "bucket", "object_key"}`.
The candidate's version is the run id, so a redelivered announcement finds it stored and does nothing.
"""

from __future__ import annotations

import io
import logging
import re
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from celery import shared_task
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tasks.celery_config import TRAIN_TASK
from tasks.errors import InvalidInput, StorageUnavailable
from tasks.inference import ModelInfo
from tasks.logs import log_event
from tasks.runtime import worker_runtime

log = logging.getLogger(__name__)

TARGET = "target"
MIN_ROWS = 10
DEFAULT_MODEL_NAME = "demand-forecast"


def candidate_version(run_id: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-")[:64]
    if not cleaned:
        raise InvalidInput("run_id has no usable characters", code="invalid_run")
    return f"run-{cleaned}"


def training_data(data: bytes) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:
        raise InvalidInput(f"not a readable Parquet file: {type(error).__name__}", code="schema_mismatch") from None
    if TARGET not in table.column_names:
        raise InvalidInput("training data has no 'target' column", code="schema_mismatch")
    features = tuple(name for name in table.column_names if name != TARGET)
    if not features or table.num_rows < MIN_ROWS:
        raise InvalidInput(f"training data needs feature columns and at least {MIN_ROWS} rows", code="schema_mismatch")
    try:
        x = np.column_stack([table.column(name).to_numpy(zero_copy_only=False).astype(np.float64) for name in features])
        y = table.column(TARGET).to_numpy(zero_copy_only=False).astype(np.float64)
    except (TypeError, ValueError, pa.ArrowException) as error:
        raise InvalidInput(f"training columns must be numeric: {type(error).__name__}", code="schema_mismatch") from None
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InvalidInput("training data contains missing or non-finite values", code="schema_mismatch")
    return x, y, features


def fit_candidate(x: np.ndarray, y: np.ndarray) -> tuple[Any, dict[str, float]]:
    split = max(1, int(len(y) * 0.8))
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x[:split], y[:split])
    holdout_x, holdout_y = (x[split:], y[split:]) if split < len(y) else (x, y)
    predicted = model.predict(holdout_x)
    metrics = {"mae_holdout": round(float(mean_absolute_error(holdout_y, predicted)), 6),
               "r2_holdout": round(float(r2_score(holdout_y, predicted)), 6) if len(holdout_y) > 1 else 0.0,
               "rows": float(len(y))}
    return model.fit(x, y), metrics


@shared_task(bind=True, name=TRAIN_TASK, max_retries=3, acks_late=True)
def train_candidate(self: Any, run_id: str, bucket: str, object_key: str) -> dict[str, Any]:
    runtime = worker_runtime(self.app.settings)
    version = candidate_version(run_id)
    current = runtime.models.current()
    model_name = current.model_name if current else DEFAULT_MODEL_NAME
    if runtime.models.stored(model_name, version) is not None:
        log_event(log, "candidate_exists", run_id=run_id, version=version)
        return {"run_id": run_id, "version": version, "trained": False}
    started = time.perf_counter()
    try:
        x, y, features = training_data(runtime.store.get_bytes(bucket, object_key))
    except StorageUnavailable as error:
        raise self.retry(exc=error, countdown=2 ** self.request.retries) from None
    estimator, metrics = fit_candidate(x, y)
    pointer = runtime.models.save(ModelInfo(model_name, version, len(features), features), estimator, metrics)
    log_event(log, "candidate_trained", run_id=run_id, version=version, metrics=metrics,
              duration_ms=round((time.perf_counter() - started) * 1000, 1), object_key=pointer.object_key)
    return {"run_id": run_id, "version": version, "trained": True, "metrics": metrics}
