"""Deadlines, one policy end to end: fixed at admission, carried as Celery `expires`, checked last here.

Celery already drops a message whose `expires` has passed when a worker receives it and again before it
hands it to a pool process. `DeadlineTask` checks once more as the body is about to run (a message can
wait in a busy child process), marks the task REVOKED like Celery does, and never runs it late.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from tasks.logs import log_event
from tasks.metrics import EXPIRED

log = logging.getLogger(__name__)


def expires_at(deadline_ms: int) -> datetime:
    """Celery `expires` for an epoch-millisecond deadline: an aware UTC datetime, never relative
    seconds, so that clock skew between producer and worker cannot stretch it."""
    return datetime.fromtimestamp(deadline_ms / 1000, tz=UTC)


def parse_expires(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class DeadlineTask(Task):
    abstract = True
    # The result's repr in Celery's success log and task-succeeded event (Flower): a glimpse, not the whole
    # batch. Celery's 1,024 characters take a tenth of a worker's CPU for a batch of predictions.
    resultrepr_maxsize = 120

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        expires = parse_expires(getattr(self.request, "expires", None))
        if expires is not None and expires <= datetime.now(UTC):
            EXPIRED.labels("worker").inc()
            self.on_expired(self.request, "worker")
            raise Ignore()
        return super().__call__(*args, **kwargs)

    def on_expired(self, request: Any, source: str) -> None:
        """The task's deadline passed before it ran: log it, and mark it REVOKED (when Celery itself drops
        an expired message, source "queue", it marks the task)."""
        key = (request.kwargs or {}).get("claim_id") or request.id
        log_event(log, "ttl_expired", source=source, key=key, task_id=request.id)
        if source == "worker":
            self.backend.mark_as_revoked(request.id, reason="expired", request=request)
