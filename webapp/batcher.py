"""Micro-batching in the API: single-row /predict requests share one Celery task and one model call.

One Celery round trip costs as much as hundreds of single-row predictions, so one task per request caps
throughput at the round-trip rate. Request threads hand their row to `MicroBatcher.submit` and wait on
their own future; one thread gathers rows and sends a batch when any of these holds:

- it has `BATCH_SIZE` rows;
- the first row has waited `BATCH_TIMEOUT_MS`;
- fewer than `max_in_flight` batches are out at the workers (an idle pipeline gets work at once, so a
  lone request pays no batching delay; under load batches grow while earlier ones are being computed).

Each item keeps its own deadline (an item already expired at flush is answered 504 and not sent; the
worker drops items that expire in the queue), gets its own result, and fails on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tasks.errors import DeadlineExceeded, InferenceError, input_error
from tasks.logs import now_ms
from tasks.metrics import BATCH_SIZE as BATCH_SIZE_METRIC
from tasks.metrics import EXPIRED
from tasks.results import Outcome

log = logging.getLogger(__name__)


@dataclass
class Item:
    row: list[Any]
    deadline_ms: int
    id: str
    future: Future[tuple[float, str]] = field(default_factory=Future)


@dataclass
class Sent:
    """A batch handed to the workers: its outcome, and how to stop waiting for it."""

    task_id: str
    outcome: Future[Outcome]
    forget: Callable[[], None]


Sender = Callable[[list[Item]], Sent]


class MicroBatcher:
    def __init__(self, send: Sender, *, size: int, timeout_ms: int, max_in_flight: int) -> None:
        self.send = send
        self.size = size
        self.timeout_s = timeout_ms / 1000
        self.max_in_flight = max_in_flight
        self._items: list[Item] = []
        self._first_at = 0.0
        self._in_flight: dict[str, tuple[int, list[Item], Sent]] = {}
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)

    def start(self) -> MicroBatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._thread.join(timeout=2)

    @property
    def pending(self) -> int:
        """Rows accepted but not yet sent: admission counts them as queued."""
        return len(self._items)

    def submit(self, row: list[Any], deadline_ms: int, item_id: str) -> Future[tuple[float, str]]:
        item = Item(row, deadline_ms, item_id)
        with self._cv:
            if not self._items:
                self._first_at = time.monotonic()
            self._items.append(item)
            self._cv.notify()
        return item.future

    def _ready(self) -> bool:
        return bool(self._items) and (
            len(self._items) >= self.size
            or len(self._in_flight) < self.max_in_flight
            or time.monotonic() - self._first_at >= self.timeout_s
        )

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and not self._ready():
                    wait = self.timeout_s - (time.monotonic() - self._first_at) if self._items else 0.1
                    self._cv.wait(timeout=max(wait, 0.0005))
                    self._sweep()
                if self._stopped:
                    return
                batch, self._items = self._items[: self.size], self._items[self.size:]
                self._first_at = time.monotonic()
            self._flush(batch)

    def _sweep(self) -> None:
        """Give up on batches whose every item is past its deadline (no worker took them): their
        callers have had their 504 already; stop polling for a result that may never come."""
        now = now_ms()
        for task_id, (deadline_ms, items, sent) in list(self._in_flight.items()):
            if deadline_ms < now:
                del self._in_flight[task_id]
                sent.forget()
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(DeadlineExceeded("no result before the deadline"))

    def _flush(self, batch: list[Item]) -> None:
        now = now_ms()
        live = []
        for item in batch:
            if item.deadline_ms <= now:
                EXPIRED.labels("queue").inc()
                item.future.set_exception(DeadlineExceeded("the deadline passed before the batch was sent"))
            else:
                live.append(item)
        if not live:
            return
        try:
            sent = self.send(live)
        except BaseException as error:  # noqa: BLE001 - every waiting request must hear about it
            for item in live:
                item.future.set_exception(error)
            return
        BATCH_SIZE_METRIC.labels("api").observe(len(live))
        with self._cv:
            self._in_flight[sent.task_id] = (max(item.deadline_ms for item in live), live, sent)
        sent.outcome.add_done_callback(lambda done: self._resolve(sent.task_id, live, done))

    def _resolve(self, task_id: str, items: list[Item], done: Future[Outcome]) -> None:
        with self._cv:
            self._in_flight.pop(task_id, None)
            self._cv.notify()
        try:
            outcome = done.result()
        except BaseException as error:  # noqa: BLE001
            for item in items:
                item.future.set_exception(error)
            return
        if outcome.expired:
            for item in items:
                item.future.set_exception(DeadlineExceeded("the deadline passed while the batch was queued"))
            return
        if not outcome.ok:
            failure = outcome.result if isinstance(outcome.result, Exception) else InferenceError("inference failed")
            for item in items:
                item.future.set_exception(failure)
            return
        version = outcome.result["model_version"]
        for item, result in zip(items, outcome.result["results"], strict=True):
            if "prediction" in result:
                item.future.set_result((result["prediction"], version))
            elif result.get("expired"):
                item.future.set_exception(DeadlineExceeded("the deadline passed while the batch was queued"))
            else:
                error_info = result.get("error") or {}
                item.future.set_exception(input_error(error_info.get("code", "invalid_request"),
                                                      error_info.get("message", "invalid input")))
