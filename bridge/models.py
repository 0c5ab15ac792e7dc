"""Records on the model topics.

`model-selected` `{"model_name", "version", "bucket", "object_key"}`: make every worker serve that version
without a restart. The pointer is written through `ModelStore.promote` (which checks that the artifact
loads) unless it already names that version, then every `PromotedModel` holder is woken on the
promotions channel; a holder that missed the wake-up finds the pointer within its 2 s poll. Work that
already took the old model finishes on it.

`model-training` `{"run_id", "bucket", "object_key"}`: a training task on the bulk lane (tasks.training), in
flight under the same bound as claims; it stores a candidate without promoting it. A record without those
fields is logged and skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import redis

from tasks.celery_app import TRAIN_TASK
from tasks.errors import InferenceError
from tasks.logs import log_event
from tasks.model_store import ModelStore, Pointer
from tasks.serving import announce_promotion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Training:
    """A training announcement as bridge work: the same shape as a claim for dispatch and tracking."""

    run_id: str
    bucket: str
    object_key: str
    deadline_ms: None = None
    task_name: ClassVar[str] = TRAIN_TASK

    @property
    def claim_id(self) -> str:  # the key it is logged under
        return self.run_id

    def task_kwargs(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "bucket": self.bucket, "object_key": self.object_key}


def _json_object(value: bytes | None) -> dict[str, object] | None:
    try:
        data = json.loads(value or b"")
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class ModelRecords:
    def __init__(self, models: ModelStore, client: redis.Redis) -> None:
        self.models = models
        self.client = client

    def selected(self, value: bytes | None) -> bool:
        """Promote the named version; True when workers were told to switch."""
        try:
            data = _json_object(value)
            if data is None:
                raise ValueError("not a JSON object")
            pointer = Pointer.parse(data)
        except (ValueError, InferenceError) as error:
            log.warning("model-selected record ignored: %s", error, extra={"event": "model_selected_invalid"})
            return False
        try:
            if self.models.current() != pointer:
                self.models.promote(pointer)
        except InferenceError as error:
            log_event(log, "model_promotion_failed", level=logging.ERROR, version=pointer.version,
                      error=error.code, error_message=error.message)
            return False
        try:
            listeners = announce_promotion(self.client, pointer)
        except redis.RedisError as error:
            listeners = 0
            log.warning("promotion not announced (%s); workers find it within their poll", type(error).__name__,
                        extra={"event": "model_announce_failed"})
        log_event(log, "model_selected", model_name=pointer.model_name, version=pointer.version, listeners=listeners)
        return True

    def training(self, value: bytes | None) -> Training | None:
        data = _json_object(value) or {}
        fields = [data.get(name) for name in ("run_id", "bucket", "object_key")]
        if not all(isinstance(field, str) and field for field in fields):
            log.warning("model-training record ignored: it needs run_id, bucket and object_key",
                        extra={"event": "model_training_invalid"})
            return None
        run_id, bucket, object_key = (str(field) for field in fields)
        log_event(log, "model_training_announced", run_id=run_id[:200], bucket=bucket)
        return Training(run_id[:200], bucket, object_key)
