"""A scenario's own stack, built on devtools: Redis, the S3 server and (for kafka-burst) Tansu on free loopback
ports, the model published, Celery workers and the API, every process stopped on the way out, also on an error,
Ctrl-C or SIGTERM. Also: the environment every child gets (PERF_ENV), and pinning processes to cores."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from devtools.processes import PYTHON, ROOT, ManagedProcess, start_api, start_worker
from devtools.services import Service, free_port, start_kafka, start_redis, start_s3

STOP_TIMEOUT_S = 15
PROGRESS_EVERY_S = 5
#: The cores this process could use when it started: "any core" for a process a scenario confined and lets go.
USABLE_CPUS = frozenset(os.sched_getaffinity(0))


class StackError(RuntimeError):
    pass


def stop_on_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C: the scenario unwinds through its context managers and cleans up."""

    def _interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Teardown must finish: a second Ctrl-C while processes are being stopped is ignored (it is bounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def perf_env() -> dict[str, str]:
    """The settings PERF_ENV ("KEY=VALUE KEY=VALUE") adds to every process of a scenario's stack."""
    pairs = [pair.partition("=") for pair in os.environ.get("PERF_ENV", "").split()]
    return {key.upper(): value for key, sep, value in pairs if sep and key}


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without any project variable (a stack is hermetic), plus `overrides`, plus
    PERF_ENV's settings, which win: for trying a setting on a scenario."""
    from settings import Settings

    ours = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in ours}
    return {**env, "PYTHONUNBUFFERED": "1", "LOG_FORMAT": "json", **overrides, **perf_env()}


def cpu_list(choice: str) -> set[int]:
    """The cores `choice` names: `auto`, every usable core but the first (none with a single core); `all`, none
    (no confinement); otherwise a list such as `1` or `2-7,9`."""
    if choice == "all":
        return set()
    if choice == "auto":
        usable = sorted(USABLE_CPUS)
        return set(usable[1:]) if len(usable) > 1 else set()
    cpus: set[int] = set()
    for part in choice.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def pin(pid: int, cpus: set[int], *, idle: bool = False, nice: int = 0) -> None:
    """Every thread of process `pid` onto `cpus` (empty: every usable core), at SCHED_IDLE or a niceness."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            tid = int(task.name)
            os.sched_setaffinity(tid, cpus or USABLE_CPUS)
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            elif nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)


def wait_child(process: ManagedProcess, name: str, timeout_s: float, status: Callable[[], str] = lambda: "") -> None:
    """Wait for `process` to exit, printing progress (and `status()`) every PROGRESS_EVERY_S."""
    started = time.monotonic()
    while process.alive():
        if time.monotonic() - started > timeout_s:
            raise StackError(f"{name} still running after {timeout_s:g}s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait_exit(PROGRESS_EVERY_S)
        if process.alive():
            print(f"  ... {name}: {time.monotonic() - started:.0f} s {status()}".rstrip(), flush=True)


class Stack(contextlib.ExitStack):
    """Redis + S3 (+ Tansu with `kafka`) + the model (`publish`: arguments of `python -m`) + `workers` Celery
    worker processes + the API (unless `api=False`), ready: /readyz, or /model without a worker. `env`
    overrides the settings of every process. More processes: `add_worker`, `start_api`, `add`."""

    def __init__(self, log_dir: Path, *, workers: int = 1, env: Mapping[str, str] | None = None,
                 publish: Sequence[str] = ("tasks.demo_model",), api: bool = True, kafka: bool = False) -> None:
        super().__init__()
        self.log_dir, self.publish, self.overrides = log_dir, list(publish), dict(env or {})
        self.n_workers, self.with_api, self.with_kafka = workers, api, kafka
        self.workers: list[ManagedProcess] = []
        self.kafka: Service | None = None

    def __enter__(self) -> Stack:
        super().__enter__()
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        with sigint_deferred():
            super().__exit__(*exc)

    def _service(self, start: Callable[..., Service], name: str) -> Service:
        workdir = self.log_dir / name
        workdir.mkdir(parents=True, exist_ok=True)
        service = start(workdir=workdir)
        self.callback(service.stop)
        return service

    def _start(self) -> None:
        self.redis = self._service(start_redis, "redis")
        self.s3 = self._service(start_s3, "s3")
        self.kafka = self._service(start_kafka, "kafka") if self.with_kafka else None
        print(f"stack: S3 server {self.s3.server} on {self.s3.address}", flush=True)
        self.redis_url = f"redis://{self.redis.address}/0"
        self.env = child_env({
            "REDIS_URL": self.redis_url, "S3_ENDPOINT": self.s3.address, "STARTUP_TIMEOUT_S": "20",
            "DRAIN_TIMEOUT_S": "5", "BRIDGE_METRICS_PORT": str(free_port()),
            **({"KAFKA_BOOTSTRAP_SERVERS": self.kafka.address} if self.kafka else {}), **self.overrides})
        log_path = self.log_dir / "model.log"
        with open(log_path, "wb") as log:
            done = subprocess.run([PYTHON, "-m", *self.publish], cwd=ROOT, env=self.env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=180, check=False)
        if done.returncode != 0:
            raise StackError(f"python -m {' '.join(self.publish)} exited {done.returncode}:\n{log_path.read_text()[-3000:]}")
        for index in range(1, self.n_workers + 1):
            self.add_worker(f"worker{index}")
        if self.with_api:
            self.start_api()

    def add(self, process: ManagedProcess) -> ManagedProcess:
        """Start `process` with its stop already registered, so a failed readiness wait still stops it."""
        self.callback(process.stop, STOP_TIMEOUT_S)
        return process.start()

    def add_worker(self, name: str, *extra: str, prefix: Sequence[str] = ()) -> ManagedProcess:
        env = {**self.env, "WORKER_METRICS_PORT": str(free_port())}
        worker = start_worker(env, self.log_dir, *extra, name=name, prefix=list(prefix))
        self.callback(worker.stop, STOP_TIMEOUT_S)
        self.workers.append(worker)
        return worker

    def start_api(self) -> ManagedProcess:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = start_api(self.env, self.log_dir, self.port, ready_path="/readyz" if self.workers else "/model")
        self.callback(self.api.stop, STOP_TIMEOUT_S)
        return self.api

    def roots(self) -> dict[str, int]:
        """The process trees whose CPU a run reports: the API, each worker node, Redis."""
        assert self.redis.process is not None
        return {"api": self.api.pid, **{w.name: w.pid for w in self.workers}, "redis": self.redis.process.pid}

    def queue_probe(self) -> Any:
        import redis

        from tasks.queues import QueueProbe

        return QueueProbe(redis.Redis.from_url(self.redis_url, socket_timeout=2), self.env.get("CELERY_QUEUE", "inference"))

    def exited(self) -> list[str]:
        """The API and worker processes no longer running, each with the last line of its log."""
        found = []
        for process in (self.api, *self.workers):
            if not process.alive():
                lines = [line for line in process.output().splitlines() if line.strip()]
                code = process.process.returncode if process.process is not None else "?"
                found.append(f"{process.name} exited ({code}): {lines[-1][:300] if lines else 'no output'}")
        return found
