"""Records on the model topics.

`model-selected` `{"model_name", "version", "bucket", "object_key"}`: make every worker serve that version
without a restart. The pointer is written through `ModelStore.promote` (which checks that the artifact
loads) unless it already names that version, then every `PromotedModel` holder is woken on the
promotions channel; a holder that missed the wake-up finds the pointer within its 2 s poll. Work that
already took the old model finishes on it.

`model-training` `{"run_id", "bucket", "object_key"}`: logged; what it triggers comes later.
"""

from __future__ import annotations

import json
import logging

import redis

from tasks.errors import InferenceError
from tasks.logs import log_event
from tasks.model_store import ModelStore, Pointer
from tasks.serving import announce_promotion

log = logging.getLogger(__name__)


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

    def training(self, value: bytes | None) -> None:
        data = _json_object(value) or {}
        log_event(log, "model_training_announced", run_id=str(data.get("run_id", ""))[:200] or None,
                  bucket=data.get("bucket") if isinstance(data.get("bucket"), str) else None)
