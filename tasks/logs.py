"""Structured logging: one JSON object a line on stderr, with the event vocabulary of docs/interface.md.

Every process calls `configure_logging(service, settings)` once; code logs events with
`log_event(logger, "queue_enqueued", depth=3, ...)`. Ids travel as fields, never inside messages.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from settings import Settings

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if not hasattr(record, "event"):
            record.event = "log"
        return True


class _NoPayloads(logging.Filter):
    """Celery's task trace lines carry the task's arguments and return value: keep ids, drop payloads."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = record.__dict__.get("data")
        if isinstance(data, dict) and {"args", "kwargs", "return_value"} & data.keys():
            kept = {k: v for k, v in data.items() if k not in {"args", "kwargs", "return_value"}}
            record.__dict__["data"] = kept
            record.msg, record.args = "%s", (kept.get("description") or kept.get("name", "task"),)
        return True


class _JsonLines(JsonFormatter):
    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["ts"] = round(record.created, 3)
        log_record["level"] = record.levelname.lower()
        log_record["pid"] = record.process  # which copy of a process wrote it (pool processes, HTTP_PROCESSES)
        if log_record.get("message") in ("", record.__dict__.get("event")):
            log_record.pop("message", None)


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and k not in {"service", "event"}}
        fields = " ".join(f"{k}={v}" for k, v in extra.items())
        return f"{base} {fields}".rstrip()


def configure_logging(service: str, settings: Settings, level: int = logging.INFO, *, background: bool = False) -> None:
    """Log to stderr through the project's formatter. `background`: callers only enqueue their records
    and one thread formats and writes them (the API's request threads otherwise contend for the
    handler's lock and pay for JSON encoding and the write while holding it); flushed at exit."""
    # The logging HOWTO's "Optimization": the lines carry none of the caller's file, line, function or thread,
    # so do not look them up for every record (a stack walk and a thread lookup, per request under load).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler: logging.Handler = _stream_handler(service, settings)
    if background:
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        listener = logging.handlers.QueueListener(records, handler)
        listener.start()
        atexit.register(listener.stop)
        handler = _Enqueue(records)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # waitress warns "Task queue depth is N" on every request it queues under load: that is our
    # admission's job to report (queue_* events and metrics), not a warning per request.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    # Celery logs every task success at INFO (with its return value): our own events say it better.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)  # "Received task", per task
    for noisy in ("kafka", "urllib3", "botocore", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Enqueue(logging.handlers.QueueHandler):
    """Hands the record itself to the listener, in this process: `QueueHandler.prepare` formats the
    message and copies the record for a queue that crosses processes, and the listener formats it again."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def _stream_handler(service: str, settings: Settings) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ServiceFilter(service))
    handler.addFilter(_NoPayloads())
    if settings.log_format == "json":
        handler.setFormatter(_JsonLines("%(service)s %(event)s %(message)s", reserved_attrs=list(_RESERVED - {"message"})))
    else:
        handler.setFormatter(_Text("%(asctime)s %(levelname)s %(service)s %(event)s %(message)s"))
    return handler


def log_event(logger: logging.Logger, event: str, /, level: int = logging.INFO, **fields: Any) -> None:
    """Log one docs/interface.md event; the message is the event name, the fields carry the data."""
    logger.log(level, event, extra={"event": event, **fields})


class LogBudget:
    """At most `burst` lines of one event per `per_s` seconds: under overload a line per refused request
    is thousands of lines a second, and writing them takes the CPU the refusals need. `take()` answers
    whether this occurrence is logged and, if it is, how many were left out since the last line logged
    (the metrics still count every one)."""

    def __init__(self, burst: int = 100, per_s: float = 1.0) -> None:
        self.burst = burst
        self.per_s = per_s
        self._window_ends = 0.0
        self._left = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        now = time.monotonic()
        with self._lock:
            if now >= self._window_ends:
                self._window_ends, self._left = now + self.per_s, self.burst
            if self._left <= 0:
                self._suppressed += 1
                return None
            self._left -= 1
            suppressed, self._suppressed = self._suppressed, 0
            return suppressed


def now_ms() -> int:
    return int(time.time() * 1000)
