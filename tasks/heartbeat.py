"""Worker liveness in Redis: each worker node refreshes its score in a sorted set; readers count the
fresh ones. Cheaper than a Celery broadcast ping, and it answers while every worker is busy."""

from __future__ import annotations

import threading
import time

import redis

WORKERS_KEY = "inference:workers"
INTERVAL_S = 2.0
STALE_S = 10.0


def live_workers(client: redis.Redis) -> int:
    return int(client.zcount(WORKERS_KEY, time.time() - STALE_S, "+inf"))  # type: ignore[arg-type]


class Heartbeat:
    def __init__(self, client: redis.Redis, node: str) -> None:
        self.client = client
        self.node = node
        self._stop = threading.Event()

    def start(self) -> Heartbeat:
        threading.Thread(target=self._run, name="worker-heartbeat", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            self.client.zrem(WORKERS_KEY, self.node)
        except redis.RedisError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.zadd(WORKERS_KEY, {self.node: time.time()})
            except redis.RedisError:
                pass  # Redis is back within STALE_S, or readiness reports the worker gone: both are true
            self._stop.wait(INTERVAL_S)
