"""Several API processes on one port (`HTTP_PROCESSES` > 1), as gunicorn's workers are.

One Python process serves /predict with at most one core: the interpreter lock lets one thread run at a
time, and the request threads, the I/O thread, the micro-batcher and the result collector all take
turns. With `HTTP_PROCESSES=N`, `python -m webapp` becomes a small supervisor that starts N copies of the
API (`python -m webapp` with WEBAPP_PROCESS set). Each binds HOST:PORT with SO_REUSEPORT, so the kernel
spreads new connections over them; each has its own threads, micro-batcher and result collector, and
admission reads the same Redis queue.

The supervisor:

- chooses the port first when PORT is 0, and holds it (bound, never listening) so the copies agree;
- gives the copies one PROMETHEUS_MULTIPROC_DIR, so a scrape of /metrics on any of them sums the
  counters and histograms of all (tasks/metrics.py says how each gauge is merged);
- starts a copy again when one exits on its own (`http_process_exited`, then `http_process_started`);
- on SIGTERM or SIGINT sends each copy SIGTERM (the copies ignore SIGINT, so a Ctrl-C that reaches the
  whole process group starts one drain, not two signals), waits for every copy to drain (each answers
  what it has, as one process does) and exits 0 when all of them did; a second signal stops them at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from settings import Settings
from tasks.logs import log_event

log = logging.getLogger(__name__)

#: Set in a copy's environment: its index (1..N). A process with it serves instead of supervising.
PROCESS_ENV = "WEBAPP_PROCESS"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A copy that exits on its own is started again after this long (a crash loop does not spin).
RESTART_DELAY_S = 1.0
# Beyond the drain timeout the copies get this long to close before they are killed.
STOP_GRACE_S = 10.0


def is_copy() -> bool:
    return bool(os.environ.get(PROCESS_ENV))


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, for one of several copies (waitress listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.http_processes
        self.stopping = threading.Event()
        self.copies: dict[int, subprocess.Popen[bytes]] = {}
        self._own_metrics_dir: str | None = None
        self.metrics_dir = ""
        self._held: socket.socket | None = None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        env = self._environment()
        try:
            for index in range(1, self.count + 1):
                self._start(index, env)
            while not self.stopping.is_set():
                for index, process in list(self.copies.items()):
                    code = process.poll()
                    if code is not None and not self.stopping.is_set():
                        self._exited(process, code)
                        if self.stopping.wait(RESTART_DELAY_S):
                            break
                        self._start(index, env)
                self.stopping.wait(0.2)
            return self._drain()
        finally:
            if self._held is not None:
                self._held.close()
            if self._own_metrics_dir:
                shutil.rmtree(self._own_metrics_dir, ignore_errors=True)

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        port = self.settings.port
        if port == 0:  # one port for all: chosen here, held (bound, not listening) until the end
            self._held = listening_socket(self.settings.host, 0)
            port = self._held.getsockname()[1]
        env["PORT"] = str(port)
        if not env.get(METRICS_ENV):
            self._own_metrics_dir = tempfile.mkdtemp(prefix="api-metrics-")
            env[METRICS_ENV] = self._own_metrics_dir
        self.metrics_dir = env[METRICS_ENV]
        return env

    def _start(self, index: int, env: dict[str, str]) -> None:
        process = subprocess.Popen([sys.executable, "-m", "webapp"], env={**env, PROCESS_ENV: str(index)})
        self.copies[index] = process
        log_event(log, "http_process_started", index=index, copy_pid=process.pid, processes=self.count)

    def _exited(self, process: subprocess.Popen[bytes], code: int) -> None:
        log.warning("API process %d exited with %d; starting another", process.pid, code,
                    extra={"event": "http_process_exited", "copy_pid": process.pid, "code": code})
        self._forget_metrics(process.pid)

    def _forget_metrics(self, pid: int) -> None:
        """Drop a dead copy's live gauges (its counters stay: a scrape's totals never go down)."""
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, self.metrics_dir)

    def _stop(self, _signum: int, _frame: Any) -> None:
        if self.stopping.is_set():  # a second signal: a second SIGTERM, and each copy stops at once
            self._signal_all(signal.SIGTERM)
            return
        self.stopping.set()

    def _signal_all(self, signum: int) -> None:
        for process in self.copies.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    def _drain(self) -> int:
        log_event(log, "http_draining", processes=len(self.copies))
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_s + STOP_GRACE_S
        codes: dict[int, int] = {}
        for index, process in self.copies.items():
            try:
                codes[index] = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                codes[index] = process.wait()
        failed = {index: code for index, code in codes.items() if code != 0}
        log_event(log, "http_stopped", processes=len(codes), failed=failed)
        return 1 if failed else 0
