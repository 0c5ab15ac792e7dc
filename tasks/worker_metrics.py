"""A worker node's /metrics: the pool processes' metrics merged (prometheus-client multiprocess mode).

`prepare()` must run before any metric is created (tasks.celery calls it first thing): it points
PROMETHEUS_MULTIPROC_DIR at a fresh directory for this node unless the operator set one. The node's main
process serves the merged view on WORKER_METRICS_PORT, limited to the worker's metrics
(tasks.metrics.EXPORTED["worker"]); a port already taken (several nodes on one host) is logged, not fatal.

`install(app)` adds the metric hooks: the worker's known label sets created at start-up (so they read 0),
and each task's queue wait observed as it starts (tasks/queue_wait.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from celery import Celery, signals

from tasks import queue_wait
from tasks.logs import log_event

# prometheus_client chooses between in-process and multiprocess values when it is first imported, so it
# is imported here only inside functions that run after prepare().

log = logging.getLogger(__name__)
ENV = "PROMETHEUS_MULTIPROC_DIR"
_created: list[str] = []


def prepare() -> None:
    if not os.environ.get(ENV):
        os.environ[ENV] = tempfile.mkdtemp(prefix="worker-metrics-")
        _created.append(os.environ[ENV])
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        # Imported already (the celery command line loads plugins that use it): switch the value class,
        # which every metric created from now on uses.
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]


def serve(host: str, port: int) -> None:
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    from tasks import metrics

    registry = CollectorRegistry()
    registry.register(metrics.Only(multiprocess.MultiProcessCollector(None), metrics.names(metrics.WORKER)))
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        log.warning("worker metrics not served on port %d: %s", port, error.strerror, extra={"event": "metrics_port_busy"})
        return
    log_event(log, "metrics_listening", port=port)


def install(app: Celery) -> None:
    settings = app.settings  # type: ignore[attr-defined]

    @signals.worker_init.connect(weak=False)
    def _initialise(**_: Any) -> None:
        from tasks import metrics

        metrics.initialise(metrics.WORKER, settings)  # in the main process: every pool process inherits them

    @signals.task_prerun.connect(weak=False)
    def _started(task: Any = None, **_: Any) -> None:
        from tasks import metrics

        request = getattr(task, "request", None)
        waited = queue_wait.waited_s(request, time.time())
        queue = (getattr(request, "delivery_info", None) or {}).get("routing_key")
        if waited is not None and queue:
            metrics.QUEUE_WAIT.labels(queue).observe(waited)


def process_exited(pid: int) -> None:
    from prometheus_client import multiprocess

    if os.environ.get(ENV):
        multiprocess.mark_process_dead(pid)


def cleanup() -> None:
    for path in _created:
        shutil.rmtree(path, ignore_errors=True)
