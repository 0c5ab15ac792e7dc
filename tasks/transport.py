"""Kombu's Redis transport, with one client object per channel for publishing.

Kombu builds a new `redis.Redis` client object for every message it publishes (`Channel._put` ->
`conn_or_acquire` -> `_create_client`), which costs about as much CPU as the publish itself; the
connection pool underneath is shared anyway. A `redis.Redis` client is thread-safe over its pool, so
the channel keeps the one it made. Selected with `broker_transport` (tasks.celery_config).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _publish_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._publish_client is None:
            self._publish_client = super()._create_client(asynchronous=False)
        return self._publish_client


class Transport(kombu_redis.Transport):
    Channel = Channel
