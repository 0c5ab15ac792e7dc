"""Claims to Celery tasks on the bulk lane, and their results back to the poll thread.

Every result is collected by ONE `ResultCollector` thread (batched MGETs, no pub/sub subscription per task)
and handed to the poll thread through `events`, a queue: the poll thread alone touches the consumer and the
offset tracker. Result keys are left in Redis, to expire after `result_expires`: task ids are deterministic,
and after a rebalance another bridge may be waiting on the same ones.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kafka import TopicPartition

from bridge.claim import Claim
from bridge.models import Training
from tasks.celery_config import CLAIM_TASK
from tasks.deadline import expires_at
from tasks.results import Outcome, ResultCollector

# A claim whose result has not come after this long is sent again under the same task id (its worker was
# lost, or its message was). Well above a claim's run time plus its wait behind QUEUE_MAXSIZE others at
# the slowest drain seen, so that it fires for lost work, not slow work; at most MAX_ATTEMPTS sends.
RESULT_TIMEOUT_S = 120.0
MAX_ATTEMPTS = 3
# How often the collector polls the result keys: the latency it adds to every claim, on average half of
# it. Bulk work does not need the API's 2 ms, and every poll is an MGET of up to QUEUE_MAXSIZE keys.
COLLECT_INTERVAL_S = 0.02

# docs/interface.md's codes; anything else (a model that could not be loaded, a bug) is `task_failed`.
DLQ_CODES = {"object_missing", "schema_mismatch", "storage_unavailable"}
_BY_CLASS = {"ObjectMissing": "object_missing", "SchemaMismatch": "schema_mismatch",
             "StorageUnavailable": "storage_unavailable"}


@dataclass(frozen=True)
class Record:
    """What the bridge keeps of a Kafka record while its claim is in flight (for the DLQ)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @classmethod
    def of(cls, record: Any) -> Record:
        return cls(record.topic, record.partition, record.offset, record.key, record.value, list(record.headers or []))


@dataclass
class InFlight:
    task_id: str
    record: Record
    claim: Claim | Training
    sent_at: float = field(default_factory=time.monotonic)
    attempts: int = 1


@dataclass(frozen=True)
class ResultArrived:
    task_id: str
    outcome: Outcome


def failure_code(error: Any) -> str:
    """The DLQ code of a failed claim task (its exception as the result backend rebuilt it)."""
    code = getattr(error, "code", None)
    if code in DLQ_CODES:
        return str(code)
    return _BY_CLASS.get(type(error).__name__, "task_failed")


class Dispatcher:
    def __init__(self, celery: Celery, collector: ResultCollector, bulk_queue: str, events: queue.SimpleQueue[Any],
                 *, honour_deadlines: bool = True) -> None:
        self.celery = celery
        self.collector = collector
        self.bulk_queue = bulk_queue
        self.events = events
        self.honour_deadlines = honour_deadlines

    def send(self, task_id: str, work: Training) -> None:
        """Enqueue a training run and watch for its result. Raises whatever kombu raises when Redis is gone."""
        self.celery.send_task(work.task_name, kwargs=work.task_kwargs(), task_id=task_id, queue=self.bulk_queue,
                              argsrepr="()", kwargsrepr=f"{{'run_id': {work.claim_id!r}}}")
        self._watch(task_id)

    def send_claims(self, claims: list[tuple[str, Claim]]) -> None:
        """Enqueue claims as one batch task and watch each claim's own result (stored under its task id).
        The message expires with its latest claim (never, when one has no deadline); the worker drops the
        earlier ones item by item. Raises whatever kombu raises when Redis is gone."""
        items = [claim.item(task_id, deadline=self.honour_deadlines) for task_id, claim in claims]
        deadlines = [item["deadline_ms"] for item in items]
        expires = expires_at(max(deadlines)) if None not in deadlines else None
        first = items[0]["id"]
        self.celery.send_task(CLAIM_TASK, kwargs={"items": items}, task_id=f"{first}+{len(items)}", expires=expires,
                              queue=self.bulk_queue, headers={"claim_items": [[i["id"], i["claim_id"]] for i in items]},
                              argsrepr="()", kwargsrepr=f"{{'items': {len(items)}, 'first': {first!r}}}")
        for task_id, _ in claims:
            self._watch(task_id)

    def _watch(self, task_id: str) -> None:
        future = self.collector.watch(task_id)
        future.add_done_callback(lambda done: self._arrived(task_id, done))

    def _arrived(self, task_id: str, future: Future[Outcome]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.events.put(ResultArrived(task_id, future.result()))

    def forget(self, task_ids: list[str]) -> None:
        self.collector.forget(task_ids)
