"""Worker process wiring: Celery signals that install the policies of docs/interface.md on a worker.

- logging: our JSON lines instead of Celery's (`setup_logging`);
- start-up: wait for Redis and object storage, else exit non-zero with one line (`worker_init`);
- each pool process: load and prewarm the model, then follow promotions (`worker_process_init`);
- drain rate: every finished task (run, failed or expired) is counted where its result is stored (tasks/results.py);
- readiness: a heartbeat per worker node in Redis, read by the API's /readyz (`worker_ready`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from typing import Any

import redis
from celery import signals

from tasks import metrics, worker_metrics
from tasks.celery_config import PREDICT_BATCH_TASK, InferenceCelery
from tasks.deadline import DeadlineTask
from tasks.heartbeat import Heartbeat
from tasks.logs import configure_logging, log_event
from tasks.queues import batch_received, completed_key
from tasks.runtime import worker_runtime
from tasks.startup import StartupFailed, announce, require_services

log = logging.getLogger(__name__)

def install(app: InferenceCelery) -> None:
    settings = app.settings
    beats: list[Heartbeat] = []

    @signals.setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        configure_logging("worker", settings)

    @signals.worker_init.connect(weak=False)
    def _startup(**_: Any) -> None:
        # Celery sends worker_init before setup_logging: without this, the announcement and a start-up
        # failure would go to the unconfigured root logger and be lost.
        configure_logging("worker", settings)
        announce("worker", settings)
        try:
            require_services(settings)
        except StartupFailed:
            os._exit(1)  # Celery swallows exceptions raised in signal handlers

    @signals.worker_process_init.connect(weak=False)
    def _process_init(**_: Any) -> None:
        runtime = worker_runtime(settings)
        if settings.inference_prewarm:
            runtime.prewarm()
        runtime.model.watch()

    def _left_queue(task_name: str, request: Any) -> None:
        """A batch message left the queue: its extra items no longer count towards the depth."""
        if request is not None and task_name == PREDICT_BATCH_TASK:
            queue = (request.delivery_info or {}).get("routing_key") or settings.celery_queue
            with contextlib.suppress(redis.RedisError):
                batch_received(worker_runtime(settings).redis, queue, request.id)

    @signals.task_received.connect(weak=False)
    def _received(request: Any = None, **_: Any) -> None:
        _left_queue(getattr(request, "name", ""), request)

    started: dict[str, float] = {}

    @signals.task_prerun.connect(weak=False)
    def _started(task_id: str = "", **_: Any) -> None:
        started[task_id] = time.perf_counter()

    @signals.task_postrun.connect(weak=False)
    def _finished(task: Any = None, task_id: str = "", state: str | None = None, **_: Any) -> None:
        began = started.pop(task_id, None)
        if began is not None:
            metrics.WORKER_TASK_DURATION.labels(task.name).observe(time.perf_counter() - began)
        metrics.WORKER_TASKS.labels(task.name, state or "unknown").inc()
        queue = (getattr(task.request, "delivery_info", None) or {}).get("routing_key")
        if queue and task.ignore_result:  # it stores no result, where the others are counted (tasks/results.py)
            with contextlib.suppress(redis.RedisError):
                worker_runtime(settings).redis.incr(completed_key(queue))

    @signals.task_revoked.connect(weak=False)
    def _revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
        # Celery drops a message that expired in the queue before `task_received`: without this its batch
        # items would count towards the depth until their hash entry expires (an hour), holding admission
        # and the cache's busy mode for requests that no longer exist.
        _left_queue(getattr(sender, "name", ""), request)  # `request` is the task's context here
        if expired and request is not None:
            metrics.EXPIRED.labels("queue").inc()
            if isinstance(sender, DeadlineTask):
                sender.on_expired(request, "queue")
            else:
                log_event(log, "ttl_expired", source="queue", key=request.id, task_id=request.id)

    @signals.worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        node = getattr(sender, "hostname", None) or f"worker@{socket.gethostname()}:{os.getpid()}"
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=2)
        beats.append(Heartbeat(client, node).start())
        worker_metrics.serve(settings.host, settings.worker_metrics_port)
        log_event(log, "worker_ready", node=node, queues=[settings.celery_queue, settings.celery_batch_queue])

    @signals.worker_process_shutdown.connect(weak=False)
    def _process_exit(pid: int | None = None, **_: Any) -> None:
        worker_metrics.process_exited(pid or os.getpid())

    @signals.worker_shutting_down.connect(weak=False)
    def _shutting_down(**_: Any) -> None:
        for beat in beats:
            beat.stop()

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        worker_metrics.cleanup()
