"""The interactive predict task: a thin layer over the inference core."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task

from tasks.celery_app import PREDICT_TASK
from tasks.deadline import DeadlineTask
from tasks.inference import validate_rows
from tasks.logs import log_event
from tasks.runtime import worker_runtime

log = logging.getLogger(__name__)


@shared_task(bind=True, base=DeadlineTask, name=PREDICT_TASK)
def predict(self: DeadlineTask, instances: list[list[float]]) -> dict[str, Any]:
    model = worker_runtime(self.app.settings).model.get()
    rows = validate_rows(instances, model.info.n_features)
    task_id = self.request.id
    log_event(log, "predict_inference_start", task_id=task_id, batch_size=len(rows))
    started = time.perf_counter()
    predictions = model.predict(rows)
    log_event(log, "predict_inference_end", task_id=task_id, batch_size=len(rows),
              duration_ms=round((time.perf_counter() - started) * 1000, 3))
    return {"predictions": predictions, "model_version": model.version}
