"""End-to-end fixtures: each test module gets its own Redis database, so the workers and APIs it starts
see only their own queues, heartbeats and results."""

from __future__ import annotations

import itertools

import pytest
import redis

from devtools.services import Service

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
