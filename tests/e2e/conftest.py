"""End-to-end fixtures: each test module gets its own Redis database, so the workers and APIs it starts
see only their own queues, heartbeats and results."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from devtools.processes import ManagedProcess, start_worker
from devtools.services import Service
from settings import Settings
from tests.e2e.bridge_support import start_bridge

_databases = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def module_env(base_env: dict[str, str], redis_service: Service, demo_model: str) -> dict[str, str]:
    db = 1 + next(_databases) % 15
    url = f"redis://{redis_service.address}/{db}"
    redis.Redis.from_url(url).flushdb()
    return {**base_env, "REDIS_URL": url}


@pytest.fixture(scope="module")
def module_redis(module_env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(module_env["REDIS_URL"])


@pytest.fixture(scope="module")
def settings(module_env: dict[str, str]) -> Settings:
    """Settings pointing at this module's services (for reading results and models from the tests)."""
    return Settings(redis_url=module_env["REDIS_URL"], s3_endpoint=module_env["S3_ENDPOINT"])


@pytest.fixture(scope="module")
def worker(module_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """One Celery worker node for the module (both lanes)."""
    process = start_worker(module_env, tmp_path_factory.mktemp("worker"))
    yield process
    process.stop()


@pytest.fixture
def bridges(log_dir: Path) -> Iterator[Callable[..., ManagedProcess]]:
    """Start `python -m bridge` processes; all of them are stopped after the test."""
    started: list[ManagedProcess] = []

    def start(env: dict[str, str], name: str = "bridge", ready: bool = True) -> ManagedProcess:
        process = start_bridge(env, log_dir, name, ready)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
