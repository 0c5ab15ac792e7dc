"""The poll loop: one thread owns the consumer; everything else talks to it through `events`.

Each turn, as named steps: apply rebalances, handle what came back (results, DLQ acknowledgements), decide
pause/resume from the depth, poll at most `room` records and take them, re-send overdue claims, commit.

- Two kinds of failure: a record that cannot be parsed (or names an artifact that is not stored) goes to the
  DLQ with its code and the loop goes on; a service that refuses a record's effect (Redis, S3, the broker)
  holds that record and takes none for RETRY_WAIT_S, then reads it again: good work is never dead-lettered.
- Depth is the claims in flight (dispatched, not finished), guarded by the bulk queue's Redis length in
  case other producers fill it. A record beyond the room is never taken: the consumer seeks back to it.
- Commit rule (offsets.py): per partition, the lowest unfinished offset; at least every second, and on
  revoke (rebalance.py). Results for partitions no longer owned are dropped. A partition revoked and
  assigned straight back is read again from that offset: kafka-python keeps its position across the
  rebalance, which would skip the claims dropped at the revoke (and hold its commit below them for ever).
- SIGTERM: stop taking claims (pause everything, keep polling), wait up to DRAIN_TIMEOUT_S for the
  claims in flight, commit, close. A second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from typing import Any

import redis
from kafka import TopicPartition

from bridge import assignment, dispatch
from bridge.claim import Claim, parse_key, task_id
from bridge.commits import Committer
from bridge.consumer import GroupConsumer
from bridge.deadletter import DeadLettered, DeadLetters, dlq_producer
from bridge.dispatch import Dispatcher, InFlight, Record, ResultArrived, failure_code
from bridge.errors import ClaimRejected, KafkaUnavailable, ServiceUnavailable
from bridge.flow import FlowControl, Transition
from bridge.lag import LagMonitor
from bridge.models import ModelRecords, Training
from bridge.offsets import OffsetTracker
from bridge.rebalance import Assigned, Rebalance, Revoked
from bridge.redelivery import Redelivery
from bridge.work import Work, parse_record
from settings import Settings
from tasks import metrics
from tasks.celery_config import create_celery
from tasks.logs import log_event, now_ms
from tasks.model_store import ModelStore, Pointer
from tasks.queues import QueueProbe
from tasks.results import ResultCollector
from tasks.storage import ObjectStore

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 100  # how long a turn may wait for records: also how late a result is handled, at most
QUEUE_SAMPLE_INTERVAL_S = 0.05  # the Redis length guard is one round trip per 50 ms at most
RETRY_WAIT_S = 1.0  # after Redis, S3 or Kafka refused an enqueue, a promotion or a DLQ write


class Bridge:
    """The bridge's poll loop and the state it owns: the group consumer, the claims in flight, the offsets
    safe to commit, pause/resume. `run` polls until SIGTERM, then drains; `turn` is one pass of the loop's
    steps (see the module's docstring)."""

    def __init__(self, settings: Settings, *, result_timeout_s: float = dispatch.RESULT_TIMEOUT_S) -> None:
        self.settings = settings
        self.result_timeout_s = result_timeout_s
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.redis = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        self.celery = create_celery(settings, main="bridge")
        # Result keys are left for another bridge that may wait on the same deterministic task ids after a
        # rebalance; they expire after `result_expires`.
        collector_redis = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        self.collector = ResultCollector(collector_redis, self.celery.backend, interval_s=dispatch.COLLECT_INTERVAL_S,
                                         delete_after_read=False)
        self.dispatcher = Dispatcher(self.celery, self.collector, settings.celery_batch_queue, self.events,
                                     honour_deadlines=settings.enable_ttl)
        self.probe = QueueProbe(self.redis, settings.celery_batch_queue)
        self.models = ModelRecords(ModelStore(settings, ObjectStore(settings)), self.redis)
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.flow = FlowControl(settings.queue_maxsize, settings.pause_threshold_pct, settings.resume_threshold_pct)
        self.in_flight: dict[str, InFlight] = {}
        # Claims per task message: one broker round trip, one worker hand-off and one read of a shared
        # object for up to BATCH_SIZE claims; 1 when micro-batching is off.
        self.claim_batch = settings.batch_size if settings.enable_microbatch else 1
        self.assigned: set[TopicPartition] = set()
        self.safe_offsets: dict[TopicPartition, int] = {}
        # Per revoked partition, the offset below which everything was finished at the revoke; applied to the
        # partitions of the next assignment (assignment.assigned), then forgotten.
        self.revoked_at: dict[TopicPartition, int] = {}
        # Partitions assignment.assigned sent back to `revoked_at` this turn: records of theirs that this turn's poll
        # returned may come from the old position; `take` seeks back again and leaves them.
        self.rewound: dict[TopicPartition, int] = {}
        self.consumer: GroupConsumer | None = None
        self.dead_letters: DeadLetters | None = None
        self.stopping = threading.Event()
        self.draining = False
        self._queue_depth = 0
        self._queue_sampled = 0.0
        self._retry_after = 0.0
        self._redis_failed = False
        self.redelivery = Redelivery(self)
        self.committer = Committer(self.tracker, manual=settings.use_manual_commit)
        self.lag = LagMonitor(settings)
        metrics.initialise(metrics.BRIDGE, settings)
        metrics.BRIDGE_MAXSIZE.set(settings.queue_maxsize)

    # -- lifecycle ---------------------------------------------------------------------------------

    def readiness(self) -> dict[str, str]:
        checks = {"partitions": "ok" if self.assigned else "none assigned yet"}
        if self.draining:
            checks["draining"] = "shutting down"
        return checks

    def install_signals(self) -> None:
        def _stop(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():
                os._exit(1)  # a second signal: stop now, without draining
            self.stopping.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self) -> int:
        settings = self.settings
        topics = [settings.kafka_topic_claims, settings.kafka_topic_model_selected, settings.kafka_topic_model_training]
        self.collector.start()
        self.lag.start()
        self.dead_letters = DeadLetters(dlq_producer(settings), settings.kafka_topic_dlq, self.events,
                                        settings.kafka_topic_claims)
        self.consumer = GroupConsumer(settings, topics, Rebalance(self))
        log_event(log, "bridge_started", topics=topics, group=settings.kafka_group_id, maxsize=settings.queue_maxsize)
        try:
            while not self.stopping.is_set():
                self.turn()
            self.drain()
        finally:
            self.close()
        return 0

    def drain(self) -> None:
        """Stop taking claims, wait for the ones in flight (at most DRAIN_TIMEOUT_S), commit."""
        assert self.consumer is not None
        self.draining = True
        self.consumer.pause(self.assigned)
        deadline = time.monotonic() + self.settings.drain_timeout_s
        log_event(log, "bridge_draining", in_flight=self.tracker.in_flight, timeout_s=self.settings.drain_timeout_s)
        while self.tracker.in_flight and time.monotonic() < deadline:
            self.turn()
        self.commit(force=True)
        log_event(log, "bridge_stopped", unfinished=self.tracker.in_flight)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        if self.dead_letters is not None:
            self.dead_letters.close()
        self.lag.stop()
        self.collector.stop()

    # -- one turn ----------------------------------------------------------------------------------

    def turn(self) -> None:
        assert self.consumer is not None
        self.handle_events()
        depth = self.depth()
        self.steer(depth)
        room = 0 if self.draining or time.monotonic() < self._retry_after else self.flow.room(depth)
        try:
            records = self.consumer.poll(POLL_TIMEOUT_MS, min(max(room, 1), self.settings.max_poll_records))
        except KafkaUnavailable as error:
            log.warning("poll failed: %s; retrying in %.0fs", error, RETRY_WAIT_S, extra={"event": "kafka_unavailable"})
            self.stopping.wait(RETRY_WAIT_S)
            records = []
        self.handle_events()  # a rebalance during poll: apply it before taking records
        assert self.dead_letters is not None
        self.dead_letters.resend_due()
        self.take(records, room)
        self.redelivery.watch_workers()
        self.redelivery.resend_overdue()
        self.commit()

    def depth(self) -> int:
        now = time.monotonic()
        if now - self._queue_sampled >= QUEUE_SAMPLE_INTERVAL_S:
            try:
                self._queue_depth = self.probe.depth()
            except redis.RedisError:
                self._redis_failed = True  # the in-flight count alone still bounds the bridge
            else:
                if self._redis_failed:
                    self._redis_failed = not self.redelivery.redis_back()
            self._queue_sampled = now
        in_flight = self.tracker.in_flight
        metrics.BRIDGE_IN_FLIGHT.set(in_flight)
        return max(in_flight, self._queue_depth)

    def steer(self, depth: int) -> None:
        """Pause every assigned partition at the pause threshold (and while draining), resume at the
        resume threshold. Polling goes on either way."""
        assert self.consumer is not None
        transition = self.flow.update(depth)
        if transition is Transition.PAUSE:
            self.consumer.pause(self.assigned)
        elif transition is Transition.RESUME and not self.draining:
            self.consumer.resume(self.assigned)
        if transition is not None:
            event = "consumer_paused" if transition is Transition.PAUSE else "consumer_resumed"
            metrics.BRIDGE_PAUSED.set(1 if self.flow.paused else 0)
            metrics.BRIDGE_TRANSITIONS.labels(transition.value).inc()
            log_event(log, event, topic=self.settings.kafka_topic_claims, depth=depth, pct=self.flow.pct(depth))

    # -- events from other threads -----------------------------------------------------------------

    def handle_events(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                self.safe_offsets = self.tracker.positions()
                return
            if isinstance(event, ResultArrived):
                self.on_result(event)
            elif isinstance(event, DeadLettered):
                self.on_dead_lettered(event)
            elif isinstance(event, Revoked):
                assignment.revoked(self, event.partitions)
            elif isinstance(event, Assigned):
                assignment.assigned(self, event.partitions)

    def on_result(self, event: ResultArrived) -> None:
        entry = self.in_flight.pop(event.task_id, None)
        if entry is None or not self.tracker.owns(entry.record.tp, entry.record.offset):
            metrics.BRIDGE_RECORDS.labels("dropped").inc()
            return  # its partition was revoked: the new owner redoes it
        outcome = event.outcome
        if outcome.ok:
            metrics.BRIDGE_RECORDS.labels("completed").inc()
        elif outcome.expired:
            metrics.BRIDGE_RECORDS.labels("expired").inc()
            log_event(log, "ttl_expired", source="bridge", key=entry.claim.claim_id, task_id=event.task_id)
        elif isinstance(entry.claim, Training):
            log_event(log, "training_failed", level=logging.ERROR, run_id=entry.claim.run_id, task_id=event.task_id,
                      error=failure_code(outcome.result))
        else:
            code = failure_code(outcome.result)
            self.dead_letter(entry.record, code, str(outcome.result)[:300] or code)
            return  # finished once the DLQ acknowledged it
        self.finish(entry.record)

    def on_dead_lettered(self, event: DeadLettered) -> None:
        record = event.record
        if not self.tracker.owns(record.tp, record.offset):
            return
        if event.error is not None:
            log.warning("DLQ write failed (%s); retrying", event.error, extra={"event": "dlq_write_failed"})
            self._retry_after = time.monotonic() + RETRY_WAIT_S
            assert self.dead_letters is not None
            self.dead_letters.retry_later(record, event.code, event.message)
            return
        metrics.BRIDGE_RECORDS.labels("dead_lettered").inc()
        metrics.BRIDGE_DEAD_LETTERED.labels(event.code).inc()
        log_event(log, "claim_dead_lettered", key=parse_key(record.key) or task_id(record.topic, record.partition, record.offset),
                  error=event.code, tp=f"{record.topic}:{record.partition}", offset=record.offset)
        self.finish(record)

    def finish(self, record: Record) -> None:
        self.tracker.finish(record.tp, record.offset)

    # -- taking records ----------------------------------------------------------------------------

    def take(self, records: list[Any], room: int) -> None:
        """Take records in order while there is room; seek back to the first one that does not fit.

        Claims go out in batches of up to `claim_batch` per task message. Any other record is handled only
        once the claims taken before it are sent, so that each partition is handled in offset order and a
        failed send can seek back to its first unsent claim without anything after it having been done."""
        assert self.consumer is not None
        held: set[TopicPartition] = set()
        outbox: list[tuple[Record, Claim]] = []
        for raw in records:
            record = Record.of(raw)
            tp = record.tp
            if tp in held or tp not in self.assigned:
                continue
            if tp in self.rewound:
                self.hold(tp, self.rewound[tp])
                held.add(tp)
                continue
            if room <= 0 or self.draining:
                self.hold(tp, record.offset)
                held.add(tp)
                continue
            work = parse_record(record, self.settings)
            if isinstance(work, Claim) and not self.expired(work):
                outbox.append((record, work))
                room -= 1
                if len(outbox) >= self.claim_batch and not self.flush(outbox, held):
                    room = 0
                continue
            if not self.flush(outbox, held):
                room = 0
                if tp not in held:
                    self.hold(tp, record.offset)
                    held.add(tp)
                continue
            try:
                room -= self.route(record, work)
            except Exception as error:  # noqa: BLE001 - ServiceUnavailable, or kombu's when Redis refuses the enqueue
                self.refused(error)
                self.hold(tp, record.offset)
                held.add(tp)
                room = 0
        self.flush(outbox, held)
        self.rewound.clear()
        self.safe_offsets = self.tracker.positions()

    def hold(self, tp: TopicPartition, offset: int) -> None:
        """Leave this record and the rest of its partition for a later poll."""
        assert self.consumer is not None
        try:
            self.consumer.seek(tp, offset)
        except KafkaUnavailable as error:  # revoked meanwhile: its new owner starts from the committed offset
            log.warning("seek %s:%d failed: %s", tp.topic, tp.partition, error, extra={"event": "seek_failed"})

    def refused(self, error: Exception) -> None:
        """A service refused the record being handled, which the caller holds: take none for RETRY_WAIT_S."""
        if not isinstance(error, ServiceUnavailable):  # that one was logged where it happened
            log.warning("enqueue failed: %s; retrying in %.0fs", type(error).__name__, RETRY_WAIT_S,
                        extra={"event": "queue_unavailable"})
        self._retry_after = time.monotonic() + RETRY_WAIT_S

    def expired(self, claim: Claim) -> bool:
        return self.settings.enable_ttl and claim.deadline_ms is not None and claim.deadline_ms <= now_ms()

    def flush(self, outbox: list[tuple[Record, Claim]], held: set[TopicPartition]) -> bool:
        """Send the claims taken so far as one batch task; on failure seek each of their partitions back
        to its first unsent claim. Empties `outbox` either way."""
        if not outbox:
            return True
        try:
            self.dispatcher.send_claims([(task_id(r.topic, r.partition, r.offset), claim) for r, claim in outbox])
        except Exception as error:  # noqa: BLE001 - kombu's errors when Redis refuses the enqueue
            self.refused(error)
            for record, _ in outbox:
                if record.tp not in held:
                    self.hold(record.tp, record.offset)  # the outbox is in poll order: the lowest offset
                    held.add(record.tp)
            outbox.clear()
            return False
        for record, claim in outbox:
            self.started(record, claim)
        outbox.clear()
        return True

    def route(self, record: Record, parsed: Work | ClaimRejected) -> int:
        """Handle one record that is not a claim to send; returns the slots it now occupies in flight. Raises
        `ServiceUnavailable` (or kombu's errors) when a service refused it: the caller holds it."""
        if isinstance(parsed, Pointer):
            try:
                self.models.select(parsed)
            except ClaimRejected as rejected:
                parsed = rejected
            else:
                metrics.BRIDGE_RECORDS.labels("model_selected").inc()
        if isinstance(parsed, ClaimRejected):
            self.dead_letter(record, parsed.code, parsed.message)
            return 1
        if isinstance(parsed, Training):
            self.dispatcher.send(task_id(record.topic, record.partition, record.offset), parsed)
            metrics.BRIDGE_RECORDS.labels("model_training").inc()
            self.models.announced(parsed)
            self.started(record, parsed)
            return 1
        if isinstance(parsed, Claim):  # expired before it was taken
            metrics.BRIDGE_RECORDS.labels("expired").inc()
            metrics.EXPIRED.labels("admission").inc()
            log_event(log, "ttl_expired", source="bridge", key=parsed.claim_id)
        self.tracker.skip(record.tp, record.offset)
        return 0

    def started(self, record: Record, work: Claim | Training) -> None:
        task = task_id(record.topic, record.partition, record.offset)
        self.tracker.start(record.tp, record.offset)
        self.in_flight[task] = InFlight(task, record, work)
        metrics.BRIDGE_RECORDS.labels("enqueued").inc()
        log_event(log, "queue_enqueued", depth=self.tracker.in_flight, bounded=True, maxsize=self.settings.queue_maxsize,
                  task_id=task, claim_id=work.claim_id)

    def dead_letter(self, record: Record, code: str, message: str) -> None:
        assert self.dead_letters is not None
        self.tracker.start(record.tp, record.offset)
        self.dead_letters.send(record, code, message)

    def commit(self, *, force: bool = False) -> None:
        assert self.consumer is not None
        self.committer.commit(self.consumer, self.assigned, force=force)
