"""The API with one worker behind it, as most end-to-end tests need them: both started on the environment
given, both stopped when the test module is done."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from devtools.processes import ManagedProcess, start_api, start_worker
from devtools.services import free_port


@contextlib.contextmanager
def api_with_worker(env: dict[str, str], logs: Path) -> Iterator[ManagedProcess]:
    """The API process on a free port, ready (/readyz 200), with a worker node serving its queues."""
    worker = start_worker(env, logs, "--without-mingle", "--without-gossip")
    try:
        api = start_api(env, logs, free_port())
        try:
            yield api
        finally:
            api.stop()
    finally:
        worker.stop()
