"""Real processes for end-to-end tests and benchmarks: started with an environment, logs captured to a file, read back
as JSON events; every wait bounded in time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CELERY = str(Path(sys.executable).parent / "celery")


class ManagedProcess:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_dir / f"{name}-{int(time.time() * 1000)}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> ManagedProcess:
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if name is None or record.get("event") == name:
                found.append(record)
        return found

    def wait_for(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.process and self.process.returncode}) waiting for {what}:\n{self.output()[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: {what} not seen within {timeout_s}s:\n{self.output()[-4000:]}")

    def wait_for_event(self, event: str, timeout_s: float = 30, count: int = 1) -> list[dict[str, Any]]:
        self.wait_for(lambda: len(self.events(event)) >= count, timeout_s, f"event {event} x{count}")
        return self.events(event)

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            os.killpg(self.process.pid, signum) if signum == signal.SIGKILL else self.process.send_signal(signum)

    def wait_exit(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self, timeout_s: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode


def start_worker(env: dict[str, str], log_dir: Path, *extra: str, name: str = "worker",
                 prefix: list[str] | tuple[str, ...] = ()) -> ManagedProcess:
    """A Celery worker node named `name@host`; `prefix` runs it under a wrapper (e.g. `nice -n 10`)."""
    args = [*prefix, CELERY, "-A", "tasks", "worker", "--loglevel=INFO", "-E", f"--hostname={name}@%h", *extra]
    worker = ManagedProcess(name, args, env, log_dir).start()
    try:
        worker.wait_for_event("worker_ready", timeout_s=60)
    except BaseException:
        worker.stop()
        raise
    return worker


def start_api(env: dict[str, str], log_dir: Path, port: int, *, ready: bool = True,
              ready_path: str = "/readyz") -> ManagedProcess:
    """The API on `port`, answering /healthz and (with `ready`) `ready_path` (/readyz needs a live worker)."""
    api = ManagedProcess("api", [PYTHON, "-m", "webapp"], {**env, "PORT": str(port)}, log_dir).start()
    url = api.url = f"http://127.0.0.1:{port}"
    try:
        api.wait_for(lambda: http_ok(f"{url}/healthz"), 60, "/healthz 200")
        if ready:
            api.wait_for(lambda: http_ok(f"{url}{ready_path}"), 60, f"{ready_path} 200")
    except BaseException:
        api.stop()
        raise
    return api


def http_ok(url: str, status: int = 200) -> bool:
    """GET `url` answers `status` (a server that answers at all is up: 405 for a POST-only route)."""
    try:
        return requests.get(url, timeout=1).status_code == status
    except requests.RequestException:
        return False
