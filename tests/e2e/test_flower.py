"""Flower, as CONTRACT.md runs it (`celery -A tasks flower`), behind basic auth when FLOWER_BASIC_AUTH is set."""

from __future__ import annotations

from pathlib import Path

import requests

from devtools.processes import CELERY, ManagedProcess
from devtools.services import free_port


def status(url: str, **kwargs: object) -> int:
    try:
        return requests.get(url, timeout=2, **kwargs).status_code  # type: ignore[arg-type]
    except requests.RequestException:
        return 0


def test_flower_asks_for_the_configured_credentials(module_env: dict[str, str], log_dir: Path) -> None:
    # Given Flower started with FLOWER_BASIC_AUTH
    port = free_port()
    env = {**module_env, "FLOWER_BASIC_AUTH": "admin:s3cret"}
    flower = ManagedProcess("flower", [CELERY, "-A", "tasks", "flower", f"--port={port}", "--address=127.0.0.1"],
                            env, log_dir).start()
    url = f"http://127.0.0.1:{port}/"
    try:
        flower.wait_for(lambda: status(url) != 0, 60, "Flower answering")
        # Then the dashboard refuses anonymous requests and the wrong password, and admits the right one
        assert status(url) == 401
        assert status(url, auth=("admin", "wrong")) == 401
        assert status(url, auth=("admin", "s3cret")) == 200
    finally:
        assert flower.stop() is not None
