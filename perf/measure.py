"""What the scenarios measure with: percentiles, the responses of a client run, a sampler, CPU and memory of
process trees (psutil), the API's log events and Prometheus metrics."""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import psutil
import requests

PERCENTILES = (50, 95, 99)
T = TypeVar("T")


def percentile(values: Sequence[float] | np.ndarray, p: float) -> float:
    """The `p`th percentile (linear interpolation), NaN when there is no value."""
    return float(np.percentile(values, p)) if len(values) else float("nan")


def latency_stats(latency_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    values = np.asarray(latency_ms, dtype=float)
    nan = float("nan")
    return {"count": int(values.size), **{f"p{p}": percentile(values, p) for p in PERCENTILES},
            "max": float(values.max()) if values.size else nan, "mean": float(values.mean()) if values.size else nan}


@dataclass
class Responses:
    """Every response of one client run (status 0: transport error), as arrays; `start_s` from the run's start."""

    start_s: np.ndarray
    latency_ms: np.ndarray
    status: np.ndarray
    valid: np.ndarray
    detail: list[str]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, str]], t0: float = 0.0) -> Responses:
        return cls(np.array([float(r["start_s"]) - t0 for r in rows]), np.array([float(r["latency_ms"]) for r in rows]),
                   np.array([int(r["status"]) for r in rows], dtype=int),
                   np.array([r["valid"] == "1" for r in rows], dtype=bool), [r["detail"] for r in rows])

    @classmethod
    def read(cls, path: Path, shift_s: float = 0.0) -> Responses:
        """The responses file of a client run; `shift_s` added to every start (to put it on another clock)."""
        with open(path, newline="") as handle:
            return cls.from_rows(list(csv.DictReader(handle)), -shift_s)

    @classmethod
    def concat(cls, parts: Sequence[Responses]) -> Responses:
        start_s, latency_ms, status, valid = (np.concatenate([getattr(p, f) for p in parts]) for f in ("start_s", "latency_ms", "status", "valid"))
        return cls(start_s, latency_ms, status, valid, [d for p in parts for d in p.detail])

    def __len__(self) -> int:
        return int(self.status.size)

    @property
    def end_s(self) -> np.ndarray:
        return self.start_s + self.latency_ms / 1000

    @property
    def ok(self) -> np.ndarray:
        """Valid 200s: answers (a 429 is a response, not an answer)."""
        return self.valid & (self.status == 200)

    def where(self, mask: np.ndarray) -> Responses:
        return Responses(self.start_s[mask], self.latency_ms[mask], self.status[mask], self.valid[mask],
                         [d for d, keep in zip(self.detail, mask, strict=True) if keep])

    def statuses(self) -> Counter[str]:
        return Counter("transport error" if s == 0 else str(s) for s in self.status.tolist())

    def invalid(self) -> Counter[str]:
        return Counter(d or "invalid" for d, ok in zip(self.detail, self.valid, strict=True) if not ok)

    def broken(self) -> int:
        """Answers that break the contract: invalid for their status, transport errors left out."""
        return int((~self.valid & (self.status != 0)).sum())

    def details(self) -> Counter[str]:
        return Counter(self.detail)

    def per_second(self, seconds: int) -> list[dict[str, Any]]:
        """One row per second of the run, by completion time: responses, percentiles, status counts."""
        end, rows = self.end_s, []
        for second in range(seconds):
            mask = (end >= second) & (end < second + 1)
            stats = latency_stats(self.latency_ms[mask])
            rows.append({"second": second, "responses": int(mask.sum()),
                         **{f"p{p}_ms": round(stats[f"p{p}"], 3) for p in PERCENTILES},
                         "max_ms": round(stats["max"], 3), "statuses": dict(Counter(self.status[mask].tolist()))})
        return rows


def _sample(read: Callable[[], Any], interval_s: float, stop: Any, samples: list[tuple[float, Any]], t0: float,
            results: Any = None) -> None:
    """On a fixed tick (a late sample moves the ticks, never bunches them); a read that raises is skipped.
    In a process of its own, the samples go back through `results`."""
    tick = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(Exception):
            value = read()
            samples.append((round(time.monotonic() - t0, 3), value))
        tick = max(tick + interval_s, time.monotonic())
        stop.wait(max(0.0, tick - time.monotonic()))
    if results is not None:
        results.put(samples)


class Sampler(Generic[T]):
    """Calls `read()` every `interval_s` while the block runs; keeps (seconds since `t0`, value) in `samples`.

    `process=True` samples from a process of its own (`read` must pickle: a module-level function or a partial
    of one), on a tick the scenario's threads cannot delay: beside a Kafka producer in the same interpreter,
    gaps between samples reached 200-380 ms."""

    def __init__(self, read: Callable[[], T], interval_s: float = 0.2, *, process: bool = False) -> None:
        self.read, self.interval_s, self.process = read, interval_s, process
        self.samples: list[tuple[float, T]] = []

    def __enter__(self) -> Sampler[T]:
        self.t0, self.t0_epoch = time.monotonic(), time.time()  # CLOCK_MONOTONIC: the same in every process
        # spawn, not fork: the caller may run threads
        kit: Any = multiprocessing.get_context("spawn") if self.process else threading
        self._stop, self._results = kit.Event(), kit.Queue() if self.process else None
        runner = kit.Process if self.process else kit.Thread
        self._worker = runner(target=_sample, daemon=True, name="perf-sampler",
                              args=(self.read, self.interval_s, self._stop, self.samples, self.t0, self._results))
        self._worker.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._results is not None:
            with contextlib.suppress(queue.Empty):
                self.samples = self._results.get(timeout=10)
        self._worker.join(5)

    def values(self) -> list[T]:
        return [value for _, value in self.samples]


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS)."""
    return int(psutil.Process(pid).memory_info().rss)


def _tree(root: int) -> list[psutil.Process]:
    """A process and its descendants (a Celery worker and its pool) now; none when it has gone."""
    with contextlib.suppress(psutil.Error):
        top = psutil.Process(root)
        return [top, *top.children(recursive=True)]
    return []


def _tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of a process tree so far."""
    total = 0.0
    for process in _tree(root):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def thread_cpu_s(roots: Mapping[str, int]) -> dict[tuple[str, str], float]:
    """CPU seconds so far per (process tree, thread name); threads of a child process are `child: <name>`."""
    totals: dict[tuple[str, str], float] = {}
    for name, root in roots.items():
        for process in _tree(root):
            with contextlib.suppress(psutil.Error, OSError):
                for thread in process.threads():
                    comm = Path(f"/proc/{process.pid}/task/{thread.id}/comm").read_text().strip()
                    key = (name, comm if process.pid == root else f"child: {comm}")
                    totals[key] = totals.get(key, 0.0) + thread.user_time + thread.system_time
    return totals


class CpuMeter:
    """CPU seconds used by process trees between the meter's start and a reading."""

    def __init__(self, roots: Mapping[str, int]) -> None:
        self.roots = dict(roots)
        self.started = time.monotonic()
        self.before = {name: _tree_cpu_s(pid) for name, pid in self.roots.items()}

    def cpu_seconds(self) -> dict[str, float]:
        return {name: _tree_cpu_s(pid) - self.before[name] for name, pid in self.roots.items()}

    def cores_used(self) -> dict[str, float]:
        """Average cores used by each tree since the start (1.0 = one core busy all the time)."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {name: round(seconds / elapsed, 2) for name, seconds in self.cpu_seconds().items()}


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


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


_sessions = threading.local()  # a kept-alive connection per sampling thread: a scrape every 50 ms opens none


def metrics_text(url: str, timeout_s: float = 2.0) -> str:
    if not hasattr(_sessions, "session"):
        _sessions.session = requests.Session()
    return str(_sessions.session.get(url, timeout=timeout_s).text)


def metrics_and_rss(url: str, pid: int) -> tuple[str, int]:
    """Prometheus text at `url` and the RSS of process `pid`: a read cheap enough for a sample every 50 ms, parsed
    afterwards (and light to import for a sampler process of its own)."""
    return metrics_text(url, 1.0), rss_bytes(pid)


def scrape_metrics(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """One scrape of Prometheus text at `url`, as {'name{label="value",...}': value} (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(metrics_text(url, timeout_s)):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values
