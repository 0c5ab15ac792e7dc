"""Records on the model topics: parsed first (pure, total: a value or `ClaimRejected`), then acted on.

`model-selected` `{"model_name", "version", "bucket", "object_key"}`: make every worker serve that version
without a restart. The pointer is written through `ModelStore.promote` (which checks that the artifact
loads) unless it already names that version, then every `PromotedModel` holder is woken on the
promotions channel; a holder that missed the wake-up finds the pointer within its 2 s poll. Work that
already took the old model finishes on it.

`model-training` `{"run_id", "bucket", "object_key"}`: a training task on the bulk lane (tasks.training), in
flight under the same bound as claims; it stores a candidate without promoting it. The task is one run of
its own, so a location the object store refuses fails that run alone: only the fields' shape is checked here.

What becomes of a record:
- it cannot be parsed, or names an artifact that is not stored: `ClaimRejected`, the loop dead-letters it;
- the object store or Redis does not answer: `ServiceUnavailable`, the loop holds it and reads it again;
- the artifact is stored but refused (checksum, features): logged `model_promotion_failed`, the promoted
  model stays, and the record is done (reading it again would refuse it again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import redis

from bridge.errors import ClaimRejected, ServiceUnavailable
from bridge.payload import MAX_OBJECT_KEY_BYTES, bucket_problem, json_object, object_key, text
from tasks.celery_config import TRAIN_TASK
from tasks.errors import InferenceError, ModelArtifactInvalid, StorageUnavailable
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


def parse_selected(value: object) -> Pointer:
    """A model-selected record's value as the pointer it asks to promote."""
    data = json_object(value)
    return Pointer(text(data, "model_name"), text(data, "version"), text(data, "bucket"), object_key(data))


def parse_training(value: object) -> Training:
    """A model-training record's value as the run it announces."""
    data = json_object(value)
    return Training(text(data, "run_id"), text(data, "bucket"), object_key(data))


class ModelRecords:
    def __init__(self, models: ModelStore, client: redis.Redis) -> None:
        self.models = models
        self.client = client

    def select(self, pointer: Pointer) -> None:
        """Promote `pointer` and wake every holder. Raises `ClaimRejected` (object_missing) when its artifact
        is not stored, `ServiceUnavailable` when the object store or Redis does not answer."""
        try:
            if self._current() != pointer:
                self._require_stored(pointer)
                self.models.promote(pointer)
        except StorageUnavailable as error:
            log_event(log, "model_promotion_failed", level=logging.WARNING, version=pointer.version,
                      error=error.code, error_message=error.message)
            raise ServiceUnavailable(error.message) from None
        except InferenceError as error:  # refused for good: reading the record again changes nothing
            log_event(log, "model_promotion_failed", level=logging.ERROR, version=pointer.version,
                      error=error.code, error_message=error.message)
            return
        try:
            listeners = announce_promotion(self.client, pointer)
        except redis.RedisError as error:
            # The pointer is written; the record is read again so that the wake-up goes out once Redis is back.
            log.warning("promotion not announced (%s); retrying", type(error).__name__,
                        extra={"event": "model_announce_failed", "version": pointer.version})
            raise ServiceUnavailable(f"Redis: {type(error).__name__}") from None
        log_event(log, "model_selected", model_name=pointer.model_name, version=pointer.version, listeners=listeners)

    def _current(self) -> Pointer | None:
        try:
            return self.models.current()
        except ModelArtifactInvalid:  # an unreadable pointer: promoting overwrites it
            return None

    def _require_stored(self, pointer: Pointer) -> None:
        problem = bucket_problem(pointer.bucket)
        if problem is not None:
            raise ClaimRejected("object_missing", f"model {pointer.version}: no such bucket ({problem})")
        store = self.models.store
        for key in (pointer.object_key, pointer.meta_key):
            if len(key.encode("utf-8")) > MAX_OBJECT_KEY_BYTES or not store.exists(pointer.bucket, key):
                raise ClaimRejected("object_missing", f"model {pointer.version}: {pointer.bucket}/{key} is not stored")

    def announced(self, training: Training) -> None:
        log_event(log, "model_training_announced", run_id=training.run_id, bucket=training.bucket)
