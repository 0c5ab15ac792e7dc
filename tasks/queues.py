"""Queue length and drain rate: what admission (HTTP and Kafka) decides on, in one Redis round trip.

Kombu's Redis transport keeps a queue as a list, plus one list per priority step (`<queue>\\x06\\x16<n>`),
so the length of a queue is the sum over all of its keys. LLEN counts messages not yet taken by a
worker: expired ones until a worker pulls them, not prefetched or running ones.

A micro-batch message carries several requests: the API records `n - 1` extra items per batch message in
a hash (`batch_items_key`), the worker deletes the entry when it receives the message, and the depth adds
them up, so the bound counts requests waiting, not messages.

The drain rate comes from a counter that workers increment as they finish work (where a task's result is
stored: tasks/results.py); admission samples it with the queue length, and an EWMA of its slope gives
completions per second.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

PRIORITY_SEP = Channel.sep
RETRY_AFTER_MAX_S = 30


def queue_keys(queue: str) -> list[str]:
    return [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS if step]


def completed_key(queue: str) -> str:
    return f"inference:completed:{queue}"


def batch_items_key(queue: str) -> str:
    return f"inference:batch-items:{queue}"


def register_batch(client: redis.Redis, queue: str, task_id: str, items: int) -> None:
    """Count a batch message of `items` requests as that many in the queue until a worker receives it."""
    if items > 1:
        key = batch_items_key(queue)
        pipe = client.pipeline(transaction=False)
        pipe.hset(key, task_id, str(items - 1))
        pipe.expire(key, 3600)
        pipe.execute()


def batch_received(client: redis.Redis, queue: str, task_id: str) -> None:
    client.hdel(batch_items_key(queue), task_id)


def unacknowledged(client: redis.Redis) -> int:
    """Task messages delivered to workers and not yet acknowledged, both lanes (kombu's `unacked` hash): with
    late acks, the tasks running or prefetched. A node that died keeps its entries there until they are
    restored after the visibility timeout."""
    return int(client.hlen(Channel.unacked_key))  # type: ignore[arg-type]


@dataclass(frozen=True)
class QueueSample:
    depth: int
    completed: int
    at: float


# Queue length (every key, plus the extra requests inside batch messages) and the completion counter,
# computed in Redis: one command, one reply, whatever the number of keys.
_SAMPLE_SCRIPT = """
local depth = 0
for i = 1, #KEYS - 2 do depth = depth + redis.call('LLEN', KEYS[i]) end
for _, extra in ipairs(redis.call('HVALS', KEYS[#KEYS - 1])) do depth = depth + tonumber(extra) end
return {depth, tonumber(redis.call('GET', KEYS[#KEYS]) or '0')}
"""


class QueueProbe:
    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.queue = queue
        self.keys = [*queue_keys(queue), batch_items_key(queue), completed_key(queue)]
        self._script = client.register_script(_SAMPLE_SCRIPT)

    def sample(self) -> QueueSample:
        """Requests waiting and the completion counter, in one round trip."""
        depth, completed = self._script(keys=self.keys)
        return QueueSample(int(depth), int(completed), time.monotonic())

    def depth(self) -> int:
        return self.sample().depth


class CompletionRate:
    """Completions per second, as an exponentially weighted moving average of the counter's slope.

    `alpha` 0.3 over samples at least `min_interval_s` apart follows a change in worker capacity within
    a few seconds without jumping at every scheduling hiccup. Samples come with requests, so a gap longer
    than `max_interval_s` is a time nobody asked: what completed across it says nothing of how fast work
    drains (an API idle for a minute would read 0.1/s and refuse the first requests of the next burst as
    too late). Such a gap starts a new interval and keeps the rate."""

    def __init__(self, alpha: float = 0.3, min_interval_s: float = 0.5, max_interval_s: float = 2.0) -> None:
        self.alpha = alpha
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self.rate = 0.0
        self._primed = False
        self._last: QueueSample | None = None
        self._lock = threading.Lock()

    def restart(self, sample: QueueSample) -> None:
        """Start a new interval at `sample`, keeping the rate: what happens before it is not to be measured
        (for a backlog: a time it was empty, when the pace of takes was the pace of arrivals)."""
        with self._lock:
            self._last = sample

    def observe(self, sample: QueueSample) -> float:
        with self._lock:
            last = self._last
            if last is None or sample.completed < last.completed or sample.at - last.at > self.max_interval_s:
                self._last = sample
            elif sample.at - last.at >= self.min_interval_s:
                instant = (sample.completed - last.completed) / (sample.at - last.at)
                self.rate = self.alpha * instant + (1 - self.alpha) * self.rate if self._primed else instant
                self._primed = True
                self._last = sample
            return self.rate


def retry_after_s(depth: int, rate_per_s: float, cap_s: int = RETRY_AFTER_MAX_S) -> int:
    """Seconds until the queue has drained enough to admit again: queue length over drain rate, rounded
    up, at least 1, capped (with no measured drain, the cap)."""
    if rate_per_s <= 0:
        return cap_s
    return max(1, min(cap_s, math.ceil(depth / rate_per_s)))
