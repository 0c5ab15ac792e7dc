"""Queue wait: how long a task message waited between its enqueue and a worker starting it.

Every producer (the API, the bridge, a task retrying itself) stamps each message it publishes with the
publish time in the ENQUEUED_HEADER message header, through Celery's `before_task_publish` signal, so no
producer can forget it; the worker observes start time minus that stamp per queue, as the task starts
(tasks/worker_metrics.py). A message with an ETA (a retry's countdown) counts from its ETA. Producer and
worker clocks must agree (NTP): skew adds to the measure, and a negative wait counts as 0.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from celery import signals

ENQUEUED_HEADER = "enqueued_at_ms"


def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[ENQUEUED_HEADER] = int(time.time() * 1000)


def stamp_messages() -> None:
    """Stamp every task message this process publishes from now on (idempotent)."""
    signals.before_task_publish.connect(_stamp, weak=False, dispatch_uid=ENQUEUED_HEADER)


def waited_s(request: Any, now_s: float) -> float | None:
    """Seconds the task of `request` (a task's request context) waited in its queue; None when its message
    carries no stamp (published by a producer that does not stamp)."""
    enqueued = getattr(request, ENQUEUED_HEADER, None)
    if not isinstance(enqueued, int | float) or isinstance(enqueued, bool):
        return None
    since_s = enqueued / 1000
    eta = getattr(request, "eta", None)
    if eta:
        try:
            since_s = max(since_s, (eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))).timestamp())
        except ValueError:
            pass
    return max(0.0, now_s - since_s)
