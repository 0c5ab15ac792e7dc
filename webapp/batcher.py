"""Micro-batching in the API: single-row /predict requests share one Celery task and one model call.

A Celery round trip costs the API, the worker and Redis as much CPU as hundreds of single-row predictions,
and the same whether the message carries one row or thirty-two: batching is what makes a prediction
through the queue cheaper than one made in the view. The rows of concurrent requests gather into the open
batch, which is sent when any of these holds:

- it has `BATCH_SIZE` rows;
- its first row has waited `BATCH_TIMEOUT_MS`;
- arrivals have paused: nothing arrived for QUIET_GAPS mean gaps between arrivals (at least QUIET_MIN_S), so
  more rows are unlikely soon (a few clients each waiting for their answer before sending again);
- it is a lone request: no other request is inside the API (none waiting for its answer), so nobody is
  there to share the batch, and waiting would only add latency (one client at a time, or a quiet API).

There is no batching thread: the request thread whose row fills a batch sends it, and the request thread
of a batch's first row sends it when its timeout comes or arrivals pause. A row therefore costs no
hand-over to another thread and back, only the wait for its own result.

Each item keeps its own deadline (an item already expired when its batch goes is answered 504 and not
sent; the worker drops items that expire in the queue), gets its own result, and fails on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
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
    at: float = field(default_factory=time.monotonic)  # when it joined the open batch
    sent: bool = False  # taken from the open batch (sent, or failed to send)
    future: Future[tuple[float, str]] = field(default_factory=Future)
    batch: Sent | None = None


@dataclass
class Sent:
    """A batch handed to the workers: its outcome, and how to stop waiting for it."""

    task_id: str
    outcome: Future[Outcome]
    forget: Callable[[], None]
    latest_deadline_ms: int = 0


Sender = Callable[[list[Item]], Sent]

QUIET_MIN_S = 0.001
# Arrivals count as paused after this many mean gaps without one: open-loop arrivals (Poisson) pause that
# long once in ~150 gaps, clients waiting for their answers pause at once.
QUIET_GAPS = 5
GAP_WEIGHT = 0.1  # of the newest gap in the moving average of gaps between arrivals


class MicroBatcher:
    """Gathers single rows into batches (see the module's docstring); `submit` a row, then `wait` for it."""

    def __init__(self, send: Sender, *, size: int, timeout_ms: int) -> None:
        self.send = send
        self.size = size
        self.timeout_s = timeout_ms / 1000
        self._items: list[Item] = []
        self._inside = 0  # rows submitted whose request has not had its answer yet
        self._last_arrival = float("-inf")
        self._mean_gap_s = self.timeout_s
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Rows accepted but not yet sent: admission counts them as queued."""
        return len(self._items)

    def submit(self, row: list[Any], deadline_ms: int, item_id: str) -> Item:
        """Add a row to the open batch; send the batch now if it is full or the row is a lone request."""
        item = Item(row, deadline_ms, item_id)
        with self._lock:
            gap = item.at - self._last_arrival
            lone = not self._inside
            self._inside += 1
            self._mean_gap_s += GAP_WEIGHT * (min(gap, self.timeout_s) - self._mean_gap_s)
            self._last_arrival = item.at
            self._items.append(item)
            batch = self._take() if lone or len(self._items) >= self.size else None
        if batch:
            self._flush(batch)
        return item

    def wait(self, item: Item) -> tuple[float, str]:
        """The item's prediction and model version, waiting at most until its deadline; sends the open
        batch if the item is still in it when its batch timeout comes. Raises DeadlineExceeded,
        InvalidInput or the batch's failure."""
        try:
            return self._wait(item)
        finally:
            with self._lock:
                self._inside -= 1

    def _wait(self, item: Item) -> tuple[float, str]:
        flush_at = item.at + self.timeout_s
        while True:
            now = time.monotonic()
            until_deadline = (item.deadline_ms - now_ms()) / 1000
            wait = until_deadline if item.sent else min(until_deadline, self._flush_time(item, flush_at) - now)
            try:
                return item.future.result(timeout=max(0.0, wait))
            except FutureTimeout:
                pass
            if not item.sent and self._due(item, flush_at):
                with self._lock:
                    batch = self._take() if not item.sent else None
                if batch:
                    self._flush(batch)
                continue
            if now_ms() >= item.deadline_ms:
                self._give_up(item)
                raise DeadlineExceeded("no result before the deadline")

    def _paused_at(self) -> float:
        """When arrivals will count as paused, if none comes before."""
        return self._last_arrival + max(QUIET_MIN_S, QUIET_GAPS * self._mean_gap_s)

    def _due(self, item: Item, flush_at: float) -> bool:
        """Whether the open batch holding `item` should go now."""
        now = time.monotonic()
        items = self._items
        first = bool(items) and items[0] is item
        return now >= flush_at or (first and now >= self._paused_at())

    def _flush_time(self, item: Item, flush_at: float) -> float:
        """When the open batch holding `item` is due: at its timeout, or, for its first row's request, once
        arrivals have paused."""
        items = self._items
        if items and items[0] is item:
            # Looked at again at least four times per timeout: the pause it waits for shortens as arrivals speed up.
            return min(flush_at, self._paused_at(), time.monotonic() + self.timeout_s / 4)
        return flush_at

    def _take(self) -> list[Item]:
        """The open batch's first `size` items, marked sent (call with the lock held)."""
        batch, self._items = self._items[: self.size], self._items[self.size:]
        for item in batch:
            item.sent = True
        return batch

    def _give_up(self, item: Item) -> None:
        """Once every item of the item's batch is past its deadline, stop waiting for the batch's result (no
        worker took it, or it was lost): nobody will read it."""
        with self._lock:
            if not item.sent:
                self._items.remove(item)
                EXPIRED.labels("queue").inc()
                return
        batch = item.batch
        if batch is not None and now_ms() >= batch.latest_deadline_ms:
            batch.forget()

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
        sent.latest_deadline_ms = max(item.deadline_ms for item in live)
        for item in live:
            item.batch = sent
        BATCH_SIZE_METRIC.labels("api").observe(len(live))
        sent.outcome.add_done_callback(lambda done: self._resolve(live, done))

    def _resolve(self, items: list[Item], done: Future[Outcome]) -> None:
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
            item.future.set_result((result["prediction"], version)) if "prediction" in result \
                else item.future.set_exception(_item_failure(result))


def _item_failure(result: dict[str, Any]) -> Exception:
    """One item's failure from its entry in the batch's results."""
    if result.get("expired"):
        return DeadlineExceeded("the deadline passed while the batch was queued")
    error_info = result.get("error") or {}
    return input_error(error_info.get("code", "invalid_request"), error_info.get("message", "invalid input"))
