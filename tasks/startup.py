"""Start-up checks shared by every process: log the effective configuration, wait for the services it
needs for at most STARTUP_TIMEOUT_S, and otherwise exit non-zero with one clear line on stderr."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import redis

from settings import Settings
from tasks.logs import log_event

log = logging.getLogger(__name__)


class StartupFailed(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(1)
        self.message = message

    def __str__(self) -> str:
        return self.message


def wait_for(name: str, probe: Callable[[], object], timeout_s: float, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            probe()
            return
        except Exception as error:  # noqa: BLE001 - any failure of the probe means "not reachable yet"
            if time.monotonic() >= deadline:
                message = f"{name} unreachable after {timeout_s:g}s (STARTUP_TIMEOUT_S): {type(error).__name__}: {error}"
                print(message, file=sys.stderr, flush=True)
                raise StartupFailed(message) from None
            time.sleep(interval_s)


def redis_probe(settings: Settings) -> Callable[[], object]:
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    return client.ping


def storage_probe(settings: Settings) -> Callable[[], object]:
    from tasks.storage import ObjectStore

    store = ObjectStore(settings, timeout_s=1.0, retries=0)
    return store.ping


def announce(service: str, settings: Settings) -> None:
    log_event(log, "config_loaded", service_name=service, settings=settings.masked())


def require_services(settings: Settings, *, redis_needed: bool = True, storage_needed: bool = True) -> None:
    if redis_needed:
        wait_for("Redis at REDIS_URL", redis_probe(settings), settings.startup_timeout_s)
    if storage_needed:
        wait_for(f"object storage at S3_ENDPOINT={settings.s3_endpoint}", storage_probe(settings), settings.startup_timeout_s)
