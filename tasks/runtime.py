"""What a worker process holds: its clients and the promoted model. Built once per process, after fork."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import redis
import sklearn

from settings import Settings
from tasks.inference import LoadedModel
from tasks.logs import log_event
from tasks.model_store import ModelStore
from tasks.serving import PromotedModel
from tasks.storage import ObjectStore

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        # Inputs are validated finite before they reach a model (tasks.inference), so scikit-learn's own
        # finiteness scan of every batch is skipped.
        sklearn.set_config(assume_finite=True)
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        self.store = ObjectStore(settings)
        self.models = ModelStore(settings, self.store)
        self.model: PromotedModel[LoadedModel] = PromotedModel(self.models, self.models.load)

    def prewarm(self) -> None:
        """Load the promoted model and run one prediction, so the first real request pays neither."""
        started = time.perf_counter()
        if not self.model.refresh() and self.model.current is None:
            log.warning("no model to prewarm yet; it is loaded when one is promoted", extra={"event": "model_missing"})
            return
        model = self.model.get()
        model.predict(np.zeros((1, model.info.n_features)))
        log_event(log, "model_prewarmed", version=model.version,
                  duration_ms=round((time.perf_counter() - started) * 1000, 2))


_runtime: WorkerRuntime | None = None
_pid = 0


def worker_runtime(settings: Settings) -> WorkerRuntime:
    """This process's runtime; a forked child builds its own instead of sharing its parent's sockets, and
    other settings (tests running tasks in-process) get their own."""
    global _runtime, _pid
    if _runtime is None or _pid != os.getpid() or _runtime.settings is not settings:
        _runtime, _pid = WorkerRuntime(settings), os.getpid()
    return _runtime
