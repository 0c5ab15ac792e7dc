"""Results without per-task subscriptions: one thread collects every awaited result with batched MGETs.

Celery's Redis backend subscribes a pub/sub channel per `apply_async` and only unsubscribes when the
result is fetched, so results never fetched (a caller that gave up at its deadline) leak subscriptions,
and `AsyncResult.get()` from many threads shares one connection per thread. Here producers use
`ResultBackend` (no subscription at send time) and a single `ResultCollector` thread polls the result
keys of everything awaited, resolves each waiter's future, and deletes the keys it has read.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis
from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError

from tasks.queues import completed_key

log = logging.getLogger(__name__)


# Celery's store, in one round trip: write (and publish) the result unless a success is already stored, as
# Celery decides by reading the key first (a duplicate run never overwrites a success); and count the task
# as finished on its queue's completion counter (KEYS[2], when given: tasks/queues.py, the drain rate).
# ARGV: the encoded meta, its status, its expiry in seconds ("" for none).
_STORE_SCRIPT = """
if KEYS[2] then redis.call('INCR', KEYS[2]) end
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[1]) else redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3]) end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class ResultBackend(RedisBackend):
    """Celery's Redis result backend, minus the pub/sub subscription made for every task sent, and storing a
    result in one round trip: the read before the write and the queue's completion counter go with it
    (`_STORE_SCRIPT`). A task that stores a result (run, failed, retried or expired) is counted here; one
    that stores none (`ignore_result`, the claims task) is counted as it finishes (tasks/worker.py)."""

    _store_script: Any = None

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None,
                      **kwargs: Any) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = task_id if isinstance(task_id, str) else task_id.decode()
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        if self._store_script is None:
            self._store_script = self.client.register_script(_STORE_SCRIPT)
        queue = (getattr(request, "delivery_info", None) or {}).get("routing_key") if request is not None else None
        keys = [self.get_key_for_task(task_id), *([completed_key(queue)] if queue else [])]
        store = partial(self._store_script, keys=keys,
                        args=[value, state, "" if not expires else int(expires)])
        self.ensure(store, ())
        return result


def store_many(backend: RedisBackend, outcomes: Iterable[tuple[str, str, Any]]) -> None:
    """Store several results, `(task id, state, result or exception)`, in one round trip: the items of a
    batch task, each under its own id. A success overwrites; a failure or an expiry never overwrites a
    result already stored (a duplicate run must not turn a success into a failure)."""
    outcomes = list(outcomes)
    if not outcomes:
        return
    done = backend.app.now().isoformat()
    with backend.client.pipeline(transaction=False) as pipe:
        for task_id, state, result in outcomes:
            value = backend.prepare_exception(result) if state in states.EXCEPTION_STATES else result
            meta = {"status": state, "result": value, "traceback": None, "children": [], "date_done": done,
                    "task_id": task_id}
            pipe.set(backend.get_key_for_task(task_id), backend.encode(meta), ex=backend.expires,
                     nx=state != states.SUCCESS)
        pipe.execute()


@dataclass(frozen=True)
class Outcome:
    task_id: str
    state: str
    result: Any

    @property
    def ok(self) -> bool:
        return self.state == states.SUCCESS

    @property
    def expired(self) -> bool:
        return self.state == states.REVOKED


class ResultCollector:
    """Poll the result keys of awaited tasks; resolve a Future per task. Thread-safe `watch`/`forget`.

    The poll interval is the latency it adds to every answer, on average half of it: 2 ms costs one
    MGET per 2 ms while anything is awaited, and nothing while idle.

    `subscribe=True`: Celery's Redis backend publishes every result it stores on a channel named after
    the result key, so the collector holds one pattern subscription to all of them and resolves a
    result as it is published: no polling delay, and one message per result instead of an MGET every
    2 ms. A message can be lost (pub/sub keeps nothing for a connection that is being re-established),
    so the awaited keys are still read every SUBSCRIBED_POLL_S. Results stored without a publish (the
    claims' `store_many`) are found by that poll only: the bridge polls."""

    SUBSCRIBED_POLL_S = 0.05

    def __init__(self, client: redis.Redis, backend: RedisBackend, *, interval_s: float = 0.002,
                 batch: int = 512, delete_after_read: bool = True, subscribe: bool = False) -> None:
        self.client = client
        self.backend = backend
        self.subscribe = subscribe
        self.interval_s = interval_s
        self.batch = batch
        self.delete_after_read = delete_after_read
        self._pending: dict[str, Future[Outcome]] = {}
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="result-collector", daemon=True)

    def start(self) -> ResultCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2)

    def watch(self, task_id: str) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        key = self.backend.get_key_for_task(task_id)  # once, not at every poll
        with self._lock:
            self._pending[task_id] = future
            self._keys[task_id] = key
        self._wake.set()
        return future

    def forget(self, task_ids: Iterable[str]) -> None:
        """Stop waiting for these tasks (the caller gave up); a late result expires with `result_expires`."""
        with self._lock:
            for task_id in task_ids:
                self._pending.pop(task_id, None)
                self._keys.pop(task_id, None)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _run(self) -> None:
        if self.subscribe:
            self._run_subscribed()
        else:
            self._run_polling()

    def _run_polling(self) -> None:
        while not self._stop.is_set():
            try:
                awaited = self._poll_awaited()
            except redis.RedisError as error:
                self._failed(error)
                continue
            if awaited:
                self._stop.wait(self.interval_s)
            else:
                self._wake.wait(timeout=0.5)
                self._wake.clear()

    def _run_subscribed(self) -> None:
        prefix = self.backend.get_key_for_task("-")[:-1]  # what precedes the task id in a result key
        pubsub: Any = None
        last_poll = 0.0
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.psubscribe(prefix + b"*")
                    last_poll = 0.0  # anything published while not subscribed: read it now
                message = pubsub.get_message(timeout=self.SUBSCRIBED_POLL_S if self._pending else 0.5)
                published: list[tuple[str, bytes, bytes | None]] = []
                while message is not None:
                    if message["type"] == "pmessage":
                        channel = message["channel"]
                        published.append((channel[len(prefix):].decode(), channel, message["data"]))
                    message = pubsub.get_message(timeout=0)  # the rest of what has arrived, without waiting
                if published:
                    with self._lock:  # those nobody here awaits are another process's
                        published = [entry for entry in published if entry[0] in self._pending]
                    self._deliver(published)
                now = time.monotonic()
                if self._pending and now - last_poll >= self.SUBSCRIBED_POLL_S:
                    last_poll = now
                    self._poll_awaited()
            except redis.RedisError as error:
                self._failed(error)
                with contextlib.suppress(Exception):
                    pubsub.close()
                pubsub = None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()

    def _failed(self, error: redis.RedisError) -> None:
        log.warning("result collection failed: %s", type(error).__name__, extra={"event": "results_unavailable"})
        self._stop.wait(0.1)

    def _poll_awaited(self) -> bool:
        """Read the keys of every awaited task (MGETs of `batch` keys); whether any was awaited."""
        with self._lock:
            ids = list(self._pending)
            keys = [self._keys[task_id] for task_id in ids]
        for start in range(0, len(ids), self.batch):
            chunk_ids, chunk_keys = ids[start:start + self.batch], keys[start:start + self.batch]
            values: list[bytes | None] = self.client.mget(chunk_keys)  # type: ignore[assignment]
            self._deliver(list(zip(chunk_ids, chunk_keys, values, strict=True)))
        return bool(ids)

    def _deliver(self, found: list[tuple[str, bytes, bytes | None]]) -> None:
        """Stored values read for awaited tasks, (task id, key, value or None): the finished ones have
        their keys deleted, then their futures resolved."""
        ready: list[tuple[str, bytes, Outcome]] = []
        for task_id, key, raw in found:
            if raw is None:
                continue
            meta = self.backend.decode_result(raw)
            if meta["status"] in states.READY_STATES:
                ready.append((task_id, key, Outcome(task_id, meta["status"], meta["result"])))
        if not ready:
            return
        if self.delete_after_read:
            self.client.delete(*(key for _, key, _ in ready))
        with self._lock:
            futures = [(self._pending.pop(task_id, None), outcome) for task_id, _, outcome in ready]
            for task_id, _, _ in ready:
                self._keys.pop(task_id, None)
        for future, outcome in futures:
            if future is not None and not future.done():
                future.set_result(outcome)
