"""What every load scenario shares: a stack of its own, a results folder, machine facts, the load
client as a child process, latency statistics, CSV and plots.

- `Stack`: Redis and an S3 server on free loopback ports, the demo model published, N Celery worker
  processes and the API on a free port, ready; everything stopped on exit, also on error or Ctrl-C.
- `results_dir(scenario)`: perf/results/<YYYY-MM-DD>-<hostname>-<scenario>/, raw data under raw/.
- `run_client(...)`: `python -m perf.loadgen` as a child process, its responses read back as `Responses`.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import requests  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from devtools.processes import CELERY, PYTHON, ROOT, ManagedProcess  # noqa: E402
from devtools.services import Service, free_port, start_redis, start_s3  # noqa: E402

RESULTS_ROOT = ROOT / "perf" / "results"
#: Ports that other things on these machines use: never ours, whatever the OS hands out.
RESERVED_PORTS = frozenset({6379, 8000, 9000, 9092, 9101, 9102, 5555})
PERCENTILES = (50, 95, 99)
STOP_TIMEOUT_S = 15
PROGRESS_EVERY_S = 5


class StackError(RuntimeError):
    pass


# -- signals and child processes -----------------------------------------------------------------


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


def free_loopback_port() -> int:
    for _ in range(50):
        port = free_port()
        if port not in RESERVED_PORTS:
            return port
    raise StackError("no free loopback port outside the reserved ones")


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without any project variable (a stack is hermetic), plus `overrides`,
    plus the settings named in PERF_ENV ("KEY=VALUE KEY=VALUE"), which win: for trying a setting on a
    scenario, e.g. `PERF_ENV="HTTP_BACKLOG_WAIT_MS=20" make perf SCENARIO=original`."""
    from settings import Settings

    ours = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in ours}
    env.update({"PYTHONUNBUFFERED": "1", "LOG_FORMAT": "json"})
    env.update(overrides)
    env.update(perf_env())
    return env


def perf_env() -> dict[str, str]:
    """The settings PERF_ENV adds to every process of a scenario's stack."""
    pairs = [pair.partition("=") for pair in os.environ.get("PERF_ENV", "").split()]
    return {key.upper(): value for key, sep, value in pairs if sep and key}


def wait_http(url: str, timeout_s: float, process: ManagedProcess | None = None, status: int = 200) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise StackError(f"{process.name} exited while waiting for {url}:\n{process.output()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code == status:
                return
        time.sleep(0.1)
    tail = process.output()[-3000:] if process is not None else ""
    raise StackError(f"{url} did not answer {status} within {timeout_s:g}s\n{tail}")


@contextlib.contextmanager
def child(args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own session, stopped (then killed) on the way out whatever happened."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(list(args), cwd=ROOT, env=dict(env or child_env({})), stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def managed(exit_stack: contextlib.ExitStack, process: ManagedProcess) -> ManagedProcess:
    """Start `process` with its stop already registered, so a failed readiness wait still stops it."""
    exit_stack.callback(process.stop, STOP_TIMEOUT_S)
    return process.start()


#: The cores this process could use when it started: "any core" for a process a scenario confined and lets go.
USABLE_CPUS = frozenset(os.sched_getaffinity(0))


def cpu_list(choice: str) -> set[int]:
    """The cores `choice` names: `auto`, every usable core but the first (none with a single core); `all`,
    none (empty: no confinement); otherwise a list such as `1` or `2-7,9`."""
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


def thread_ids(pid: int) -> list[int]:
    """The ids of process `pid`'s threads now."""
    return [int(thread.name) for thread in Path(f"/proc/{pid}/task").iterdir()]


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` onto `cpus`; empty: back onto every usable core."""
    for tid in thread_ids(pid):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus or USABLE_CPUS)


# -- the stack -----------------------------------------------------------------------------------


class Stack:
    """Redis + S3 + demo model + `worker_processes` Celery workers + the API, on free loopback ports.

    `env` overrides the settings of every process (e.g. QUEUE_MAXSIZE). With no worker, readiness is
    "/model answers 200" instead of /readyz (which needs a live worker). `publish` (arguments of
    `python -m`) publishes the model before any server starts; `api=False` stops after the workers (for a
    scenario that serves the model with servers of its own)."""

    def __init__(self, log_dir: Path, *, worker_processes: int = 1, env: Mapping[str, str] | None = None,
                 ready_timeout_s: float = 90, publish: Sequence[str] = ("tasks.demo_model",), api: bool = True) -> None:
        self.log_dir = log_dir
        self.worker_processes = worker_processes
        self.publish = list(publish)
        self.with_api = api
        self.overrides = dict(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.workers: list[ManagedProcess] = []
        self.services: list[Service] = []
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            with sigint_deferred():
                self._exit.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        with sigint_deferred():
            self._exit.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name, start in (("redis", start_redis), ("s3", start_s3)):
            workdir = self.log_dir / name
            workdir.mkdir(exist_ok=True)
            service = start(free_loopback_port(), workdir)
            self._exit.callback(service.stop)
            self.services.append(service)
        redis_service, s3_service = self.services
        print(f"stack: S3 server {s3_service.server} on {s3_service.address}", flush=True)
        self.redis_url = f"redis://{redis_service.address}/0"
        self.env = child_env({
            "REDIS_URL": self.redis_url, "S3_ENDPOINT": s3_service.address, "STARTUP_TIMEOUT_S": "20",
            "DRAIN_TIMEOUT_S": "5", "BRIDGE_METRICS_PORT": str(free_loopback_port()), **self.overrides,
        })
        self._publish_model()
        for index in range(1, self.worker_processes + 1):
            name = f"worker{index}"
            env = {**self.env, "WORKER_METRICS_PORT": str(free_loopback_port())}
            args = [CELERY, "-A", "tasks", "worker", "--loglevel=INFO", "-E", f"--hostname={name}@%h"]
            worker = managed(self._exit, ManagedProcess(name, args, env, self.log_dir))
            self.workers.append(worker)
        for worker in self.workers:
            worker.wait_for_event("worker_ready", timeout_s=self.ready_timeout_s)
        if not self.with_api:
            return
        self.port = free_loopback_port()
        self.api = managed(self._exit, ManagedProcess("api", [PYTHON, "-m", "webapp"], {**self.env, "PORT": str(self.port)},
                                                      self.log_dir))
        wait_http(f"{self.url}/healthz", self.ready_timeout_s, self.api)
        ready = "/readyz" if self.workers else "/model"
        wait_http(f"{self.url}{ready}", self.ready_timeout_s, self.api)

    def _publish_model(self) -> None:
        log_path = self.log_dir / "model.log"
        with open(log_path, "wb") as log:
            done = subprocess.run([PYTHON, "-m", *self.publish], cwd=ROOT, env=self.env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=180, check=False)
        if done.returncode != 0:
            raise StackError(f"python -m {' '.join(self.publish)} exited {done.returncode}:\n{log_path.read_text()[-3000:]}")

    def model(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.url}/model", timeout=5).json())

    def queue_probe(self) -> Any:
        import redis

        from tasks.queues import QueueProbe

        queue = self.env.get("CELERY_QUEUE", "inference")
        return QueueProbe(redis.Redis.from_url(self.redis_url, socket_timeout=2), queue)


class CpuMeter:
    """CPU seconds used by process trees (a Celery worker and its pool children) between two readings."""

    def __init__(self, roots: Mapping[str, int]) -> None:
        self.roots = dict(roots)
        self.started = time.monotonic()
        self.before = self._read()

    def _read(self) -> dict[str, float]:
        parents: dict[int, int] = {}
        ticks: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
                ticks[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        totals = {}
        for name, root in self.roots.items():
            tree, frontier = {root}, [root]
            while frontier:
                frontier = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
                tree.update(frontier)
            totals[name] = sum(ticks.get(pid, 0.0) for pid in tree)
        return totals

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used by each tree since the meter started."""
        after = self._read()
        return {name: after[name] - self.before.get(name, 0.0) for name in self.roots}

    def cores_used(self) -> dict[str, float]:
        """Average cores used by each tree since the meter started (1.0 = one core busy all the time)."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {name: round(seconds / elapsed, 2) for name, seconds in self.cpu_seconds().items()}


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MB (10^6 bytes), from VmRSS in /proc/<pid>/status (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise StackError(f"no VmRSS for process {pid}")


def log_events(path: Path, event: str, since_byte: int = 0) -> list[dict[str, Any]]:
    """The JSON log records named `event` written to `path` after byte `since_byte` (see `log_size`)."""
    found = []
    with open(path, "rb") as handle:
        handle.seek(since_byte)
        for line in handle:
            if line.startswith(b"{") and f'"{event}"'.encode() in line:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == event:
                        found.append(record)
    return found


def scrape_metrics(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """One scrape of Prometheus text at `url`, as {'name{label="value",...}': value} (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(requests.get(url, timeout=timeout_s).text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


T = TypeVar("T")


class Sampler(Generic[T]):
    """Calls `read()` every `interval_s` in a background thread until stopped; keeps (seconds, value).
    A read that raises is skipped (the gap shows in the seconds)."""

    def __init__(self, read: Callable[[], T], interval_s: float = 0.2, limit: int = 100_000) -> None:
        self.read, self.interval_s, self.limit = read, interval_s, limit
        self.samples: list[tuple[float, T]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="perf-sampler", daemon=True)

    def __enter__(self) -> Sampler[T]:
        self.t0, self.t0_epoch = time.perf_counter(), time.time()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.limit:
            with contextlib.suppress(Exception):
                self.samples.append((time.perf_counter() - self.t0, self.read()))
            self._stop.wait(self.interval_s)


# -- results folder and machine facts -----------------------------------------------------------


def begin(scenario: str) -> tuple[dict[str, Any], Path, Path]:
    """A scenario's start: SIGTERM unwinds like Ctrl-C, the machine's facts (load average now), an emptied results
    folder and its raw/ subfolder."""
    stop_on_sigterm()
    info = machine_info()
    out = results_dir(scenario)
    print(f"{scenario}: results in {out}", flush=True)
    return info, out, out / "raw"


def host_label() -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname().split(".")[0]).strip("-") or "host"


def results_dir(scenario: str, when: datetime.date | None = None) -> Path:
    """perf/results/<YYYY-MM-DD>-<hostname>-<scenario>/, emptied of a previous run's files; raw/ inside."""
    path = RESULTS_ROOT / f"{(when or datetime.date.today()).isoformat()}-{host_label()}-{scenario}"
    raw = path / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    raw.mkdir(parents=True)
    for stale in [*path.glob("*.png"), *path.glob("*.csv"), *path.glob("summary.md")]:
        stale.unlink()
    return path


def machine_info() -> dict[str, Any]:
    def first(path: str, key: str) -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        return "unknown"

    mem_kib = first("/proc/meminfo", "MemTotal").split()[0]
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": socket.gethostname(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "cores": f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}",
        "memory": f"{int(mem_kib) / 1024 / 1024:.1f} GiB" if mem_kib.isdigit() else "unknown",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "git": commit or "unknown",
        "load_avg_at_start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "settings_from_PERF_ENV": " ".join(f"{k}={v}" for k, v in perf_env().items()) or "none",
    }


def machine_markdown(info: Mapping[str, Any]) -> str:
    rows = [[key.replace("_", " "), str(value)] for key, value in info.items()]
    rows.append(["load avg at end", " / ".join(f"{x:.2f}" for x in os.getloadavg())])
    return markdown_table(["machine", ""], rows)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float, limit: float) -> str:
    return "met" if value <= limit else "**missed**"


# -- responses and statistics ------------------------------------------------------------------


def latency_stats(latency_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    values = np.asarray(latency_ms, dtype=float)
    if values.size == 0:
        return {"count": 0, **{f"p{p}": float("nan") for p in PERCENTILES}, "max": float("nan"), "mean": float("nan")}
    points = np.percentile(values, PERCENTILES)
    return {"count": int(values.size), **{f"p{p}": float(v) for p, v in zip(PERCENTILES, points, strict=True)},
            "max": float(values.max()), "mean": float(values.mean())}


def ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


@dataclass
class Responses:
    """Every response of one client run (status 0: transport error), as arrays."""

    start_s: np.ndarray
    latency_ms: np.ndarray
    status: np.ndarray
    valid: np.ndarray
    detail: list[str]

    @classmethod
    def read(cls, path: Path) -> Responses:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return cls(np.array([float(r["start_s"]) for r in rows]), np.array([float(r["latency_ms"]) for r in rows]),
                   np.array([int(r["status"]) for r in rows], dtype=int),
                   np.array([r["valid"] == "1" for r in rows], dtype=bool), [r["detail"] for r in rows])

    def __len__(self) -> int:
        return int(self.status.size)

    @property
    def end_s(self) -> np.ndarray:
        return self.start_s + self.latency_ms / 1000

    def where(self, mask: np.ndarray) -> Responses:
        return Responses(self.start_s[mask], self.latency_ms[mask], self.status[mask], self.valid[mask],
                         [d for d, keep in zip(self.detail, mask, strict=True) if keep])

    def statuses(self) -> Counter[str]:
        return Counter("transport error" if s == 0 else str(s) for s in self.status.tolist())

    def invalid(self) -> Counter[str]:
        return Counter(d or "invalid" for d, ok in zip(self.detail, self.valid, strict=True) if not ok)

    def details(self) -> Counter[str]:
        return Counter(self.detail)

    def per_second(self, seconds: int) -> list[dict[str, Any]]:
        """One row per second of the run, by completion time: responses, percentiles, status counts."""
        end = self.end_s
        rows = []
        for second in range(seconds):
            mask = (end >= second) & (end < second + 1)
            stats = latency_stats(self.latency_ms[mask])
            counts = Counter(self.status[mask].tolist())
            rows.append({"second": second, "responses": int(mask.sum()),
                         **{f"p{p}_ms": round(stats[f"p{p}"], 3) for p in PERCENTILES},
                         "max_ms": round(stats["max"], 3), "statuses": dict(counts)})
        return rows


def loadgen_command(mode: str, port: int, out: Path, *args: str) -> list[str]:
    """`python -m perf.loadgen MODE` against 127.0.0.1:`port`, every response to `out`."""
    return [PYTHON, "-m", "perf.loadgen", mode, "--port", str(port), "--out", str(out), *args]


@contextlib.contextmanager
def probing(port: int, raw: Path, probes: Mapping[str, Sequence[str]],
            env: Mapping[str, str] | None = None) -> Iterator[dict[str, Path]]:
    """`perf.loadgen probe` children beside the block, one per name in `probes` (its arguments); yields each
    one's responses file (`raw`/<name>.csv, its log <name>.client.log). On the way out each is waited for
    (30 s: they stop on their own `--duration-s`) and must have exited 0."""
    files = {name: raw / f"{name}.csv" for name in probes}
    with contextlib.ExitStack() as running:
        processes = {name: running.enter_context(child(loadgen_command("probe", port, files[name], *args),
                                                       raw / f"{name}.client.log", env))
                     for name, args in probes.items()}
        yield files
        for name, process in processes.items():
            wait_child(process, name, 30)
            if process.returncode != 0:
                raise StackError(f"the {name} probe exited {process.returncode}: see {raw / (name + '.client.log')}")


def run_client(mode: str, port: int, out: Path, log_dir: Path, *, timeout_s: float, args: Sequence[str] = (),
               status: Callable[[], str] = lambda: "") -> dict[str, Any]:
    """Run `python -m perf.loadgen MODE` to completion (bounded by `timeout_s`); its stats as a dict."""
    stats_path = out.with_suffix(".stats.json")
    with child(loadgen_command(mode, port, out, *args),
               log_dir / f"{out.stem}.client.log") as process:
        wait_child(process, f"load client {out.stem}", timeout_s, status)
    if process.returncode != 0:
        raise StackError(f"load client {out.stem} exited {process.returncode}: see {log_dir / (out.stem + '.client.log')}")
    return client_stats(log_dir / f"{out.stem}.client.log", stats_path)


def wait_child(process: subprocess.Popen[bytes], name: str, timeout_s: float,
               status: Callable[[], str] = lambda: "") -> None:
    """Wait for `process` to exit, printing progress (and `status()`) every PROGRESS_EVERY_S; StackError after
    `timeout_s`."""
    started = time.monotonic()
    while process.poll() is None:
        if time.monotonic() - started > timeout_s:
            raise StackError(f"{name} still running after {timeout_s:g}s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(PROGRESS_EVERY_S)
        if process.poll() is None:
            print(f"  ... {name}: {time.monotonic() - started:.0f} s {status()}".rstrip(), flush=True)


def client_stats(log_path: Path, stats_path: Path) -> dict[str, Any]:
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
    stats = json.loads(lines[-1]) if lines else {}
    stats_path.write_text(json.dumps(stats, indent=2))
    return dict(stats)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# -- plots ---------------------------------------------------------------------------------------------

STATUS_COLOURS = {"200": "tab:green", "429": "tab:orange", "503": "tab:purple", "504": "tab:red",
                  "transport error": "black"}


def figure(rows: int, title: str, height: float = 3.2) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(rows, 1, figsize=(10, height * rows), squeeze=False, sharex=False)
    fig.suptitle(title)
    return fig, [row[0] for row in axes]


def save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_percentiles(ax: Any, per_second: Sequence[Mapping[str, Any]], label: str, goal_ms: float | None = None) -> None:
    seconds = [row["second"] for row in per_second]
    for p, style in zip(PERCENTILES, ("-", "--", ":"), strict=True):
        ax.plot(seconds, [row[f"p{p}_ms"] for row in per_second], style, label=f"{label} p{p}")
    if goal_ms is not None:
        ax.axhline(goal_ms, color="red", linewidth=0.8, label=f"goal {goal_ms:g} ms")
    ax.set_xlabel("second of the run")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")


def plot_statuses(ax: Any, per_second: Sequence[Mapping[str, Any]], label: str) -> None:
    seconds = np.array([row["second"] for row in per_second])
    codes = sorted({code for row in per_second for code in row["statuses"]})
    bottom = np.zeros(len(seconds))
    for code in codes:
        name = "transport error" if code == 0 else str(code)
        counts = np.array([row["statuses"].get(code, 0) for row in per_second])
        ax.bar(seconds, counts, bottom=bottom, width=0.9, label=name, color=STATUS_COLOURS.get(name))
        bottom += counts
    ax.set_title(f"{label}: responses per second by status code", fontsize=10)
    ax.set_xlabel("second of the run")
    ax.set_ylabel("responses / s")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper right")
