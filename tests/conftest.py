"""Shared fixtures: real Redis, S3 and Kafka-protocol servers on free loopback ports, started once per
session; a fresh Redis database per test. A server that cannot start fails the tests, never skips them.

The S3 server is SeaweedFS, or moto's mock where SeaweedFS does not install or LOCAL_S3=moto says so; the
session's header names it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from devtools.services import Service, free_port, local_s3, start_kafka, start_redis, start_s3
from settings import Settings
from tests.fuzzing import EXAMPLES, PROFILE

# Properties run EXAMPLES[profile] examples each; no per-example deadline (a loaded CI machine is slow, and
# speed is perf/'s business, not the tests').
for _name, _examples in EXAMPLES.items():
    hypothesis_settings.register_profile(_name, max_examples=_examples, deadline=None, print_blob=True,
                                         suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile(PROFILE)

#: Variables the suite controls; anything else from the caller's environment is dropped for children.
_OURS = {"REDIS_URL", "S3_ENDPOINT", "KAFKA_BOOTSTRAP_SERVERS", "PORT", "HOST", "LOG_FORMAT"}


#: What the session's servers were, for the last lines of the report (shown with -q too).
_started: list[str] = []


def pytest_report_header() -> str:
    return f"local S3 server: {local_s3().label}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _started:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_service(services_dir: Path) -> Iterator[Service]:
    service = start_redis(workdir=services_dir)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def s3_service(services_dir: Path) -> Iterator[Service]:
    started = time.monotonic()
    service = start_s3(workdir=services_dir)
    _started.append(f"local S3 server: {service.server} on {service.address}, ready in {time.monotonic() - started:.1f} s")
    yield service
    service.stop()


@pytest.fixture(scope="session")
def kafka_service(services_dir: Path) -> Iterator[Service]:
    service = start_kafka(workdir=services_dir)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def base_env(redis_service: Service, s3_service: Service) -> dict[str, str]:
    """Environment for child processes: the caller's, minus project variables, plus the test services."""
    settings_names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in settings_names and k not in _OURS}
    env.update({
        "REDIS_URL": f"redis://{redis_service.address}/0",
        "S3_ENDPOINT": s3_service.address,
        "STARTUP_TIMEOUT_S": "20",
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture(scope="session")
def base_settings(base_env: dict[str, str]) -> Settings:
    return Settings(redis_url=base_env["REDIS_URL"], s3_endpoint=base_env["S3_ENDPOINT"])


@pytest.fixture(scope="session")
def demo_model(base_settings: Settings) -> str:
    from tasks.demo_model import publish_demo

    pointer = publish_demo(base_settings)
    assert pointer is not None
    return pointer.version


@pytest.fixture
def redis_client(base_settings: Settings) -> Iterator[redis.Redis]:
    """The test Redis, flushed before and after the test."""
    client = redis.Redis.from_url(base_settings.redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def api_port() -> int:
    return free_port()
