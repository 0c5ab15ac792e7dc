"""Flower, as docs/interface.md runs it (`celery -A tasks flower`), behind basic auth when FLOWER_BASIC_AUTH is set.

Every page, every API call and /metrics need the credentials; /healthcheck alone stays open (it answers
"OK" and nothing else, and container health checks call it without credentials)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.processes import CELERY, ManagedProcess
from devtools.services import free_port

USER, PASSWORD = "admin", "s3cret"
PROTECTED = ["/", "/workers", "/tasks", "/broker", "/api/workers", "/api/tasks", "/api/task/types",
             "/api/queues/length", "/metrics"]


def get(url: str, **kwargs: Any) -> requests.Response | None:
    try:
        return requests.get(url, timeout=10, **kwargs)
    except requests.RequestException:
        return None


def status(url: str, **kwargs: Any) -> int:
    response = get(url, **kwargs)
    return 0 if response is None else response.status_code


def raw_basic(credentials: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}


@pytest.fixture(scope="module")
def flower(module_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Flower with FLOWER_BASIC_AUTH, and FLOWER_UNAUTHENTICATED_API set too: it must not open anything."""
    port = free_port()
    env = {**module_env, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}", "FLOWER_UNAUTHENTICATED_API": "true"}
    process = ManagedProcess("flower", [CELERY, "-A", "tasks", "flower", f"--port={port}", "--address=127.0.0.1"],
                             env, tmp_path_factory.mktemp("flower")).start()
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_for(lambda: status(f"{url}/healthcheck") == 200, 60, "Flower answering")
        yield url
    finally:
        assert process.stop() is not None


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize("credentials", [
    "anonymous", "wrong password", "wrong user", "empty password", "password prefix", "not base64", "not UTF-8",
])
def test_flower_refuses_requests_without_the_configured_credentials(flower: str, path: str, credentials: str) -> None:
    # Given Flower started with FLOWER_BASIC_AUTH
    kwargs: dict[str, Any] = {
        "anonymous": {},
        "wrong password": {"auth": (USER, "wrong")},
        "wrong user": {"auth": ("root", PASSWORD)},
        "empty password": {"auth": (USER, "")},
        "password prefix": {"auth": (USER, PASSWORD[:-1])},
        "not base64": {"headers": {"Authorization": "Basic !!!"}},
        "not UTF-8": {"headers": raw_basic(b"admin:\xff\xfe")},
    }[credentials]
    # When a page, an API call or the metrics are asked for without the right credentials
    response = get(f"{flower}{path}", **kwargs)
    # Then the answer is 401 (with a Basic challenge outside the API, whose error pages Flower writes bare),
    # and none of the content
    assert response is not None and response.status_code == 401, (path, credentials, response and response.status_code)
    if not path.startswith("/api/"):
        assert response.headers.get("WWW-Authenticate", "").startswith("Basic")
    assert b"flower_" not in response.content and b"celery@" not in response.content


@pytest.mark.parametrize("path", PROTECTED)
def test_flower_admits_the_configured_credentials(flower: str, path: str) -> None:
    # When the same paths are asked for with the right user and password, Then they are not refused (and
    # answered: /broker and /api/queues/length are 404 because Flower does not know the project's own
    # Redis transport class)
    code = status(f"{flower}{path}", auth=(USER, PASSWORD))
    assert code == 200 or (code == 404 and path in {"/broker", "/api/queues/length"}), (path, code)


def test_the_metrics_are_flowers_once_admitted(flower: str) -> None:
    # When /metrics is read with the credentials, Then it is Flower's Prometheus text
    response = get(f"{flower}/metrics", auth=(USER, PASSWORD))
    assert response is not None and response.status_code == 200 and b"# HELP" in response.content


def test_the_healthcheck_stays_open_and_tells_nothing(flower: str) -> None:
    # When /healthcheck is asked for anonymously, Then it answers OK, and only that
    response = get(f"{flower}/healthcheck")
    assert response is not None and response.status_code == 200 and response.text == "OK"


def test_a_post_to_the_api_needs_the_credentials_too(flower: str) -> None:
    # When a control call (that would shut a worker down) is posted anonymously, Then it is refused
    response = requests.post(f"{flower}/api/worker/shutdown/nobody@nowhere", timeout=10)
    assert response.status_code == 401


def test_without_basic_auth_the_metrics_stay_open(module_env: dict[str, str], log_dir: Path) -> None:
    # Given Flower started without FLOWER_BASIC_AUTH (nothing to authenticate against)
    port = free_port()
    env = {k: v for k, v in module_env.items() if k not in {"FLOWER_BASIC_AUTH", "FLOWER_UNAUTHENTICATED_API"}}
    process = ManagedProcess("flower-open", [CELERY, "-A", "tasks", "flower", f"--port={port}", "--address=127.0.0.1"],
                             env, log_dir).start()
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_for(lambda: status(f"{url}/healthcheck") == 200, 60, "Flower answering")
        # When /metrics is read anonymously, Then it is served, as Flower does
        assert status(f"{url}/metrics") == 200
    finally:
        assert process.stop() is not None
