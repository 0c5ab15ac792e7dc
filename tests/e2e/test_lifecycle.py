"""Process lifecycle: invalid configuration and unreachable services stop a process with one clear
line; SIGTERM drains the API (in-flight requests answered, exit 0)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
import requests

from devtools.processes import CELERY, PYTHON, ROOT, start_api
from devtools.services import free_port

ROW = [50.0, 49.0, 48.5, 47.0, 45.0, 52.0, 51.0, 0.5, 0.86]
COMMANDS = {"api": [PYTHON, "-m", "webapp"], "worker": [CELERY, "-A", "tasks", "worker", "--loglevel=WARNING"]}


def run(command: list[str], env: dict[str, str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.parametrize("process", sorted(COMMANDS))
@pytest.mark.parametrize("name, value", [("QUEUE_MAXSIZE", "lots"), ("PAUSE_THRESHOLD_PCT", "30")])
def test_invalid_configuration_exits_non_zero_naming_the_variable(
    base_env: dict[str, str], process: str, name: str, value: str
) -> None:
    result = run(COMMANDS[process], {**base_env, name: value})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "invalid configuration" in line]
    assert len(lines) == 1 and name in lines[0], result.stderr[-2000:]


@pytest.mark.parametrize("process", sorted(COMMANDS))
def test_unreachable_redis_at_start_up_exits_non_zero_after_the_timeout(base_env: dict[str, str], process: str) -> None:
    env = {**base_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "STARTUP_TIMEOUT_S": "1"}
    started = time.monotonic()
    result = run(COMMANDS[process], env)
    assert result.returncode != 0
    assert time.monotonic() - started < 20
    assert any("Redis" in line and "unreachable" in line and "STARTUP_TIMEOUT_S" in line for line in result.stderr.splitlines())


def test_sigterm_drains_the_api(module_env: dict[str, str], module_redis: redis.Redis, log_dir: Path) -> None:
    # Given an API with requests in flight (no worker: they wait for their 1.5 s deadline)
    module_redis.flushdb()
    server = start_api(module_env, log_dir, free_port(), ready=False)
    server.wait_for(lambda: bool(server.events("model_discovered")), 30, "the promoted model")
    answers: list[int] = []

    def call() -> None:
        response = requests.post(f"{server.url}/predict", json={"features": ROW},
                                 headers={"X-Request-Timeout-Ms": "1500"}, timeout=10)
        answers.append(response.status_code)

    callers = [threading.Thread(target=call) for _ in range(4)]
    for thread in callers:
        thread.start()
    server.wait_for(lambda: len(server.events("queue_enqueued")) == 4, 60, "4 requests enqueued")
    # When it receives SIGTERM
    server.signal(signal.SIGTERM)
    server.wait_for_event("http_draining", timeout_s=60)
    # Then it stops accepting, answers every request in flight, and exits 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/healthz", timeout=1)
    assert server.wait_exit(10) == 0
    for thread in callers:
        thread.join(5)
    assert sorted(answers) == [504] * 4
    assert server.events("http_stopped")[-1]["unfinished"] == 0
