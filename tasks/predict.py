"""The interactive predict tasks: thin layers over the inference core.

`tasks.predict` scores one request's rows. `tasks.predict_batch` scores a micro-batch of single-row
requests gathered by the API: one model call for all of them, with each item keeping its own deadline
(an expired item is dropped, not run), its own result, and its own failure (an invalid item, or one whose
prediction is not a finite number, fails alone). The batch message expires with its latest item; earlier ones are dropped here, item by item.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
from celery import shared_task

from tasks.celery_config import PREDICT_BATCH_TASK, PREDICT_TASK
from tasks.deadline import DeadlineTask
from tasks.errors import InvalidInput, UnscorableInput
from tasks.inference import LoadedModel, check_predictions, validate_row, validate_rows
from tasks.logs import log_event, now_ms
from tasks.metrics import BATCH_SIZE, EXPIRED
from tasks.runtime import worker_runtime

log = logging.getLogger(__name__)


def _predict_logged(model: LoadedModel, rows: np.ndarray, task_id: str) -> list[float]:
    log_event(log, "predict_inference_start", task_id=task_id, batch_size=len(rows))
    started = time.perf_counter()
    predictions = model.predict(rows)
    log_event(log, "predict_inference_end", task_id=task_id, batch_size=len(rows),
              duration_ms=round((time.perf_counter() - started) * 1000, 3))
    return predictions


# `throws`: a caller's bad input is an expected outcome, logged without a traceback.
@shared_task(bind=True, base=DeadlineTask, name=PREDICT_TASK, throws=(InvalidInput,))
def predict(self: DeadlineTask, instances: list[list[float]]) -> dict[str, Any]:
    model = worker_runtime(self.app.settings).model.get()
    rows = validate_rows(instances, model.info.n_features)
    predictions = check_predictions(_predict_logged(model, rows, self.request.id))
    return {"predictions": predictions, "model_version": model.version}


@shared_task(bind=True, base=DeadlineTask, name=PREDICT_BATCH_TASK)
def predict_batch(self: DeadlineTask, items: list[dict[str, Any]]) -> dict[str, Any]:
    """`items`: [{"id": str, "row": [number, ...], "deadline_ms": int | None}, ...]. Returns per item
    {"prediction": float}, {"expired": true} or {"error": {"code", "message"}}, in the same order."""
    model = worker_runtime(self.app.settings).model.get()
    now = now_ms()
    results: list[dict[str, Any]] = [{} for _ in items]
    live: list[int] = []
    for index, item in enumerate(items):
        deadline = item.get("deadline_ms")
        if deadline is not None and deadline <= now:
            results[index] = {"expired": True}
            EXPIRED.labels("worker").inc()
            log_event(log, "ttl_expired", source="worker", key=item.get("id") or f"{self.request.id}#{index}",
                      task_id=self.request.id)
            continue
        try:
            validate_row(item.get("row"), model.info.n_features)
        except InvalidInput as error:
            results[index] = {"error": {"code": error.code, "message": error.message}}
            continue
        live.append(index)
    BATCH_SIZE.labels("worker").observe(len(items))
    if live:
        rows = np.asarray([items[index]["row"] for index in live], dtype=np.float64)
        for index, value in zip(live, _predict_logged(model, rows, self.request.id), strict=True):
            results[index] = {"prediction": value} if math.isfinite(value) else {"error": {
                "code": UnscorableInput.code, "message": "the model's output for these features is not a finite number"}}
    return {"model_version": model.version, "results": results}
