"""The response cache: predictions keyed by model version and a hash of the canonical input, in Redis.

CACHE_MODE=busy (default) reads the cache only while the interactive queue is above the resume threshold
(RESUME_THRESHOLD_PCT of QUEUE_MAXSIZE), so a quiet system always computes and a busy one answers
repeated inputs without queueing them; it writes answers (CACHE_TTL_S) once the queue is above half that
threshold, so the cache fills as the queue climbs, and a quiet system spends nothing on it (hashing every
row and a Redis write per batch are a tenth of a quiet API's CPU). `always` reads and writes it for every
request; `off` never touches it. The model version in the key means a
promotion never serves the previous version's answers. Cache errors never fail a request.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import redis

from settings import Settings

log = logging.getLogger(__name__)


class ResponseCache:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.mode = settings.cache_mode
        self.ttl_s = settings.cache_ttl_s
        self.busy_depth = settings.queue_maxsize * settings.resume_threshold_pct / 100

    def applies(self, depth: int) -> bool:
        """Whether a request finding the queue at `depth` reads the cache."""
        return self.mode == "always" or (self.mode == "busy" and depth > self.busy_depth)

    def stores(self, depth: int) -> bool:
        """Whether answers computed while the queue is at `depth` are written to the cache."""
        return self.mode == "always" or (self.mode == "busy" and depth > self.busy_depth / 2)

    @staticmethod
    def key(version: str, rows: list[Any]) -> str:
        canonical = json.dumps([[float(value) for value in row] for row in rows], separators=(",", ":"))
        return f"cache:{version}:{hashlib.sha256(canonical.encode()).hexdigest()}"

    def get(self, key: str) -> list[float] | None:
        try:
            raw = self.client.get(key)
        except redis.RedisError:
            return None
        return json.loads(raw) if raw else None  # type: ignore[arg-type]

    def put(self, key: str, predictions: list[float]) -> None:
        self.put_many([(key, predictions)])

    def put_many(self, entries: list[tuple[str, list[float]]]) -> None:
        """Write answers in one round trip (a micro-batch writes all of its items at once)."""
        if self.mode == "off" or not entries:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, predictions in entries:
                pipe.set(key, json.dumps(predictions), ex=self.ttl_s)
            pipe.execute()
        except redis.RedisError:
            log.debug("cache write failed", extra={"event": "cache_unavailable"})
