"""The promoted model, kept current: reloaded when the pointer names a new version, without a restart.

A holder never serves a half-loaded or refused model: the new version is loaded aside and swapped in
with one assignment, so work that already took the old model finishes on it. A corrupt or
incompatible artifact is refused and logged, and the previous model stays in service.

Promotions reach every holder two ways: `watch` polls the pointer every `check_interval_s`, and also
listens on the Redis channel PROMOTIONS_CHANNEL, where `announce_promotion` (the bridge, on a
`model-selected` record) publishes right after writing the pointer, so workers switch within
milliseconds instead of seconds. The channel is only a wake-up: the pointer stays the truth.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import redis

from tasks.errors import InferenceError, ModelArtifactInvalid, ModelUnavailable
from tasks.logs import log_event
from tasks.metrics import MODEL_LOADED
from tasks.model_store import ModelStore, Pointer

T = TypeVar("T")
log = logging.getLogger(__name__)

PROMOTIONS_CHANNEL = "inference:model-promoted"


def announce_promotion(client: redis.Redis, pointer: Pointer) -> int:
    """Wake every watching holder to re-read the pointer; returns how many listeners got it."""
    return int(client.publish(PROMOTIONS_CHANNEL, json.dumps(pointer.as_json())))  # type: ignore[arg-type]


class PromotedModel(Generic[T]):
    def __init__(self, models: ModelStore, loader: Callable[[Pointer], T], *, loaded_event: str = "model_loaded",
                 check_interval_s: float = 2.0) -> None:
        self.models = models
        self.loader = loader
        self.loaded_event = loaded_event
        self.check_interval_s = check_interval_s
        self.current: T | None = None
        self.pointer: Pointer | None = None
        self.refused: Pointer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def get(self) -> T:
        current = self.current
        if current is None:
            self.refresh()
            current = self.current
        if current is None:
            raise ModelUnavailable("no model is loaded")
        return current

    def refresh(self, pointer: Pointer | None = None) -> bool:
        """Load the promoted version if it is not the one served; True when a new version was swapped in."""
        with self._lock:
            try:
                pointer = pointer or self.models.current()
            except InferenceError as error:
                log.warning("model pointer unreadable: %s", error, extra={"event": "model_pointer_unavailable"})
                return False
            if pointer is None or pointer == self.pointer or pointer == self.refused:
                return False
            started = time.perf_counter()
            try:
                loaded = self.loader(pointer)
            except ModelArtifactInvalid as error:
                self.refused = pointer
                log_event(log, "model_refused", level=logging.ERROR, version=pointer.version, error=str(error),
                          serving=self.pointer.version if self.pointer else None)
                return False
            except InferenceError as error:
                log.warning("model %s not loaded: %s", pointer.version, error, extra={"event": "model_load_failed"})
                return False
            if self.pointer is not None:
                MODEL_LOADED.labels(self.pointer.version).set(0)
            self.current, self.pointer, self.refused = loaded, pointer, None
            MODEL_LOADED.labels(pointer.version).set(1)
            log_event(log, self.loaded_event, version=pointer.version,
                      duration_ms=round((time.perf_counter() - started) * 1000, 2))
            return True

    def watch(self) -> threading.Thread:
        """Check the pointer every `check_interval_s` in a daemon thread, and at once on an announced
        promotion (a second daemon thread listening on PROMOTIONS_CHANNEL)."""
        def loop() -> None:
            while not self._stop.wait(self.check_interval_s):
                self.refresh()

        thread = threading.Thread(target=loop, name="model-watch", daemon=True)
        thread.start()
        threading.Thread(target=self._listen, name="model-announcements", daemon=True).start()
        return thread

    def _listen(self) -> None:
        settings = getattr(self.models, "settings", None)
        if settings is None:
            return
        while not self._stop.is_set():
            client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(PROMOTIONS_CHANNEL)
                while not self._stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        self.refresh()
                pubsub.close()
            except redis.RedisError:
                self._stop.wait(1.0)  # Redis is away: the pointer poll still works; listen again later
            finally:
                client.close()

    def stop(self) -> None:
        self._stop.set()

    def wait_until_loaded(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.current is None and time.monotonic() < deadline:
            self.refresh()
            if self.current is None:
                self._stop.wait(0.2)
        return self.current is not None
