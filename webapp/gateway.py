"""What the views need from the rest of the system, built once per app: Redis, Celery, the result
collector, admission control and the promoted model's description."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import redis
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry

from settings import Settings
from tasks.celery_config import PREDICT_BATCH_TASK, PREDICT_TASK, create_celery
from tasks.deadline import expires_at
from tasks.errors import DeadlineExceeded
from tasks.heartbeat import live_workers
from tasks.inference import ModelInfo
from tasks.logs import LogBudget, log_event, now_ms
from tasks.metrics import ADMISSION, DRAIN_RATE, QUEUE_DEPTH
from tasks.model_store import ModelStore
from tasks.queues import CompletionRate, QueueProbe, QueueSample, register_batch, retry_after_s
from tasks.results import Outcome, ResultCollector
from tasks.serving import PromotedModel
from tasks.storage import ObjectStore
from webapp.batcher import Item, MicroBatcher, Sent
from webapp.cache import ResponseCache
from webapp.errors import ApiError, count_rejected

log = logging.getLogger(__name__)

REDIS_RETRY_AFTER_S = 1
# Admission's queue sample is shared by the request threads for this long (see `Gateway.sample_queue`);
# a refresh in progress lets the others use one up to SAMPLE_STALE_S old rather than wait for it.
SAMPLE_MAX_AGE_S = 0.005
SAMPLE_STALE_S = 0.05
# A line per admitted request is, under load, a good part of the API's CPU (formatting and writing JSON);
# beyond this many a second the lines are counted, not written.
ENQUEUED_LOG_BURST = 50


def redis_unavailable() -> ApiError:
    return ApiError(503, "redis_unavailable", "The queue is unreachable; retry shortly.",
                    {"Retry-After": str(REDIS_RETRY_AFTER_S)})


def fast_redis(settings: Settings, timeout_s: float) -> redis.Redis:
    """A client that fails within `timeout_s` instead of retrying: admission must answer, not hang."""
    return redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=min(timeout_s, 0.05), socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0), health_check_interval=0, max_connections=settings.http_threads * 2 + 8,
    )


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = fast_redis(settings, 0.5)
        self.celery = create_celery(settings, main="webapp")
        # One pooled broker connection per waitress thread, so no request waits for a producer.
        self.celery.conf.broker_pool_limit = settings.http_threads + 4
        # Results arrive as the workers publish them (one pattern subscription), not at the next poll.
        self.collector = ResultCollector(fast_redis(settings, 1.0), self.celery.backend, subscribe=True)
        self.probe = QueueProbe(self.redis, settings.celery_queue)
        self.completions = CompletionRate()
        self.sample_max_age_s = SAMPLE_MAX_AGE_S
        # The last sample, when it was taken and `_admitted` then: replaced whole, read without a lock.
        self._cached: tuple[QueueSample, float, int] | None = None
        self._refreshing = threading.Lock()  # held (never waited for) by the thread refreshing the sample
        self._admitted_lock = threading.Lock()
        self._admitted = 0  # requests this process admitted, ever
        self._id_prefix = uuid.uuid4().hex[:16]
        self._id_counter = itertools.count()  # next() is atomic under the GIL
        self._enqueued_lines = LogBudget(burst=ENQUEUED_LOG_BURST, per_s=1.0)
        self.models = ModelStore(settings, ObjectStore(settings, timeout_s=2.0))
        self.catalog: PromotedModel[ModelInfo] = PromotedModel(
            # Verified like the workers verify it (checksum, loads, features agree), so /model never names
            # a version the workers refused.
            self.models, lambda pointer: self.models.load(pointer).info, loaded_event="model_discovered"
        )
        self.cache = ResponseCache(self.redis, settings)
        # Downloads stream large objects while other downloads compete for the store: a read may stall
        # for seconds without the store being down, so they get a longer read timeout than the models.
        self.downloads = ObjectStore(settings, timeout_s=30.0)
        self.draining = False
        # A batch holds a request thread per row while it gathers: half the threads at most, so a small
        # HTTP_THREADS still leaves threads to read the next rows instead of stalling the batch's timeout.
        size = min(settings.batch_size, max(1, settings.http_threads // 2))
        self.batcher = MicroBatcher(self._send_batch, size=size,
                                    timeout_ms=settings.batch_timeout_ms) if settings.enable_microbatch else None

    def start(self) -> Gateway:
        self.collector.start()
        self.catalog.refresh()
        self.catalog.watch()
        return self

    def close(self) -> None:
        self.catalog.stop()
        self.collector.stop()

    # -- admission ---------------------------------------------------------------------------------

    def model_info(self) -> ModelInfo | None:
        return self.catalog.current

    def sample_queue(self) -> QueueSample:
        """Requests waiting (queue keys, batched items, rows not yet sent) and the completion counter, at
        most one round trip. Raises 503 when Redis is unreachable.

        A sample younger than `sample_max_age_s` serves every request thread, plus what this process
        admitted since it was taken, so a busy API makes one round trip per few requests and still never
        admits past the bound on its own account. While one thread refreshes a stale sample, the others
        use the previous one (up to `SAMPLE_STALE_S` old) instead of waiting behind that round trip.

        No request thread ever waits for another here: the sample is read and replaced as one object, and
        the refresh is claimed without blocking (a lock there, with many threads refusing at once, queues
        them on it and on the interpreter lock in turn, and stalls the API)."""
        now = time.monotonic()
        cached = self._cached
        if cached is not None:
            last, taken_at, admitted_then = cached
            age = now - taken_at
            if age < self.sample_max_age_s or (self._refreshing.locked() and age < SAMPLE_STALE_S):
                return QueueSample(last.depth + self._admitted - admitted_then, last.completed, last.at)
        claimed = self._refreshing.acquire(blocking=False)  # not claimed: another refresh is late; do one too
        admitted = self._admitted
        try:
            sample = self.probe.sample()
        except redis.RedisError:
            ADMISSION.labels("unavailable").inc()
            raise redis_unavailable() from None
        finally:
            if claimed:
                self._refreshing.release()
        if self.batcher:
            sample = QueueSample(sample.depth + self.batcher.pending, sample.completed, sample.at)
        self._cached = (sample, now, admitted)
        rate = self.completions.observe(sample)
        QUEUE_DEPTH.labels(self.settings.celery_queue).set(sample.depth)
        DRAIN_RATE.labels(self.settings.celery_queue).set(rate)
        return sample

    @property
    def last_depth(self) -> int:
        """The queue's depth at the last sample (0 before the first)."""
        cached = self._cached
        return cached[0].depth if cached is not None else 0

    def new_id(self) -> str:
        """A unique id for a request or a batch: this process's random prefix and a counter (uuid4 per
        request read the OS's random source on every call)."""
        return f"{self._id_prefix}{next(self._id_counter):x}"

    def _accepted(self) -> None:
        ADMISSION.labels("accepted").inc()
        with self._admitted_lock:
            self._admitted += 1

    def _log_enqueued(self, depth: int, **ids: str) -> None:
        """`queue_enqueued`, within ENQUEUED_LOG_BURST lines a second (the rest counted in the next line's
        `suppressed`; `inference_admission_total{outcome="accepted"}` counts every one)."""
        suppressed = self._enqueued_lines.take()
        if suppressed is not None:
            fields: dict[str, Any] = {**ids, "suppressed": suppressed} if suppressed else dict(ids)
            log_event(log, "queue_enqueued", depth=depth + 1, bounded=self.settings.use_bounded_queue,
                      maxsize=self.settings.queue_maxsize, **fields)

    def check_bound(self, sample: QueueSample) -> None:
        """Raise 429, with a Retry-After from the queue length and the drain rate, at the bound."""
        settings = self.settings
        if settings.use_bounded_queue and sample.depth >= settings.queue_maxsize:
            count_rejected(sample.depth, settings.queue_maxsize)
            wait = retry_after_s(sample.depth - settings.queue_maxsize + 1, self.completions.rate)
            raise ApiError(429, "queue_full", "Too many requests are queued; retry later.", {"Retry-After": str(wait)})

    def admit(self) -> QueueSample:
        """503 when Redis is unreachable, 429 when the interactive queue is at its bound."""
        sample = self.sample_queue()
        self.check_bound(sample)
        return sample

    # -- work --------------------------------------------------------------------------------------

    def predict(self, rows: list[Any], deadline_ms: int, depth: int) -> Outcome:
        """Enqueue one predict task with the deadline as `expires`; wait for it, at most until the deadline."""
        settings = self.settings
        expires = expires_at(deadline_ms) if settings.enable_ttl else None
        task_id = self.new_id()
        future = self.collector.watch(task_id)  # before the send: a fast result must find its waiter
        try:
            self.celery.send_task(PREDICT_TASK, args=[rows], task_id=task_id, expires=expires, queue=settings.celery_queue,
                                  argsrepr=f"[<{len(rows)} rows>]", kwargsrepr="{}")
        except (OperationalError, redis.RedisError, OSError) as error:
            self.collector.forget([task_id])
            ADMISSION.labels("unavailable").inc()
            log.warning("enqueue failed: %s", type(error).__name__, extra={"event": "queue_unavailable"})
            raise redis_unavailable() from None
        self._accepted()
        self._log_enqueued(depth, task_id=task_id)
        try:
            return future.result(timeout=max(0.0, (deadline_ms - now_ms()) / 1000))
        except FutureTimeout:
            self.collector.forget([task_id])
            log_event(log, "ttl_expired", source="webapp", key=task_id)
            raise ApiError(504, "deadline_exceeded", "No result before the request's deadline; the work was dropped.") from None

    def predict_one(self, row: list[Any], deadline_ms: int, depth: int) -> tuple[float, str]:
        """One row through the micro-batcher; its own deadline, result and failure."""
        assert self.batcher is not None
        item_id = self.new_id()
        self._accepted()
        self._log_enqueued(depth, key=item_id)
        item = self.batcher.submit(row, deadline_ms, item_id)
        try:
            return self.batcher.wait(item)
        except DeadlineExceeded:
            log_event(log, "ttl_expired", source="webapp", key=item_id)
            raise ApiError(504, "deadline_exceeded", "No result before the request's deadline; the work was dropped.") from None

    def _send_batch(self, items: list[Item]) -> Sent:
        settings = self.settings
        task_id = self.new_id()
        latest = max(item.deadline_ms for item in items)
        payload = [{"id": item.id, "row": item.row, "deadline_ms": item.deadline_ms if settings.enable_ttl else None}
                   for item in items]
        outcome = self.collector.watch(task_id)
        try:
            register_batch(self.redis, settings.celery_queue, task_id, len(items))
            self.celery.send_task(PREDICT_BATCH_TASK, args=[payload], task_id=task_id, queue=settings.celery_queue,
                                  expires=expires_at(latest) if settings.enable_ttl else None,
                                  argsrepr=f"[<{len(items)} items>]", kwargsrepr="{}")
        except (OperationalError, redis.RedisError, OSError) as error:
            self.collector.forget([task_id])
            log.warning("enqueue failed: %s", type(error).__name__, extra={"event": "queue_unavailable"})
            raise redis_unavailable() from None
        log_event(log, "batch_sent", task_id=task_id, batch_size=len(items), keys=[item.id for item in items])
        if self.cache.stores(self.last_depth):
            outcome.add_done_callback(lambda done: self._cache_batch(items, done))
        return Sent(task_id, outcome, lambda: self.collector.forget([task_id]))

    def _cache_batch(self, items: list[Item], done: Future[Outcome]) -> None:
        """Remember a batch's answers, in one round trip, off the request threads (collector thread)."""
        outcome = done.result()
        if not outcome.ok:
            return
        version = outcome.result["model_version"]
        self.cache.put_many([(self.cache.key(version, [item.row]), [result["prediction"]])
                             for item, result in zip(items, outcome.result["results"], strict=True) if "prediction" in result])

    def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            self.redis.ping()
            checks["redis"] = "ok"
            workers = live_workers(self.redis)
            checks["workers"] = "ok" if workers else "no live worker"
        except redis.RedisError:
            checks["redis"] = "unreachable"
            checks["workers"] = "unknown"
        if self.settings.wait_for_model:
            checks["model"] = "ok" if self.catalog.current is not None else "no model loaded"
        if self.draining:
            checks["draining"] = "shutting down"
        return checks
