"""Helpers for the fault tests: steady /predict load with a bounded wait per call, a TCP proxy that can cut
a service off, a bridge that re-sends lost claims sooner, timed probes, and the claim ledger (results,
dead letters, lost, duplicates)."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from kafka import KafkaProducer

from devtools.processes import ManagedProcess
from settings import Settings
from tests.e2e.bridge_support import PARTITIONS, Message, computed_claims, read_all, results, wait_until

T = TypeVar("T")

def start_together(*starters: Callable[[], T]) -> list[T]:
    """Start processes in parallel (each starter waits for its own readiness); if one fails, stop the others."""
    with ThreadPoolExecutor(len(starters)) as pool:
        futures = [pool.submit(starter) for starter in starters]
        outcomes: list[Any] = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except BaseException as error:  # noqa: B036 - collected, re-raised below
                outcomes.append(error)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        for started in outcomes:
            if isinstance(started, ManagedProcess):
                started.stop()
        raise errors[0]
    return outcomes


def settings_for(**values: Any) -> Settings:
    """Settings from keyword values (pydantic validates them; typed callers need no plugin)."""
    return Settings(**values)


def poll(get: Callable[[], T], done: Callable[[T], bool], timeout_s: float, what: str,
         watch: Iterable[ManagedProcess] = ()) -> T:
    """Call `get` until `done` holds for what it returned (bounded by `timeout_s`); returns that value."""
    seen: list[T] = []

    def check() -> bool:
        seen.append(get())
        return done(seen[-1])

    wait_until(check, timeout_s, what, watch)
    return seen[-1]


def status_of(method: str, url: str, timeout_s: float = 1.0) -> int:
    try:
        return requests.request(method, url, timeout=timeout_s).status_code
    except requests.RequestException:
        return 0


# -- probes and load ---------------------------------------------------------------------------------


@dataclass
class Call:
    path: str
    at: float  # time.time() when sent
    elapsed_s: float
    status: int | str  # an HTTP status, or "hang" (no answer within the bound) / "error:<type>"
    retry_after: str | None = None
    error_code: str | None = None


def timed(session: requests.Session, method: str, url: str, *, bound_s: float, **kwargs: Any) -> Call:
    """One request; its wall time, status, Retry-After and error code. Never waits longer than `bound_s`
    for the answer (a hang is recorded as such)."""
    path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else url
    at, started = time.time(), time.perf_counter()
    try:
        response = session.request(method, url, timeout=(min(bound_s, 2.0), bound_s), **kwargs)
    except requests.Timeout:
        return Call(path, at, time.perf_counter() - started, "hang")
    except requests.RequestException as error:
        return Call(path, at, time.perf_counter() - started, f"error:{type(error).__name__}")
    elapsed = time.perf_counter() - started
    code = None
    if response.status_code >= 400:
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            code = response.json()["error"]["code"]
    return Call(path, at, elapsed, response.status_code, response.headers.get("Retry-After"), code)


def random_row() -> list[float]:
    return [round(random.uniform(40, 60), 3) for _ in range(7)] + [round(random.uniform(-1, 1), 3) for _ in range(2)]


class PredictLoad:
    """`threads` clients, each sending one POST /predict every 1/`rate_per_thread` s with a deadline of
    `timeout_ms` (X-Request-Timeout-Ms), and giving up after deadline + `margin_s`: a call that takes
    longer is recorded as a hang."""

    def __init__(self, url: str, *, threads: int = 4, rate_per_thread: float = 5.0, timeout_ms: int = 3000,
                 margin_s: float = 2.0) -> None:
        self.url = url
        self.interval_s = 1.0 / rate_per_thread
        self.timeout_ms = timeout_ms
        self.bound_s = timeout_ms / 1000 + margin_s
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"load-{i}", daemon=True) for i in range(threads)]

    def __enter__(self) -> PredictLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.bound_s + 5)
        assert not any(thread.is_alive() for thread in self._threads), "a load client did not return within its bound"

    def _run(self) -> None:
        session = requests.Session()
        headers = {"X-Request-Timeout-Ms": str(self.timeout_ms)}
        next_at = time.monotonic() + random.uniform(0, self.interval_s)
        try:
            while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                call = timed(session, "POST", f"{self.url}/predict", bound_s=self.bound_s,
                             json={"features": random_row()}, headers=headers)
                with self._lock:
                    self.calls.append(call)
                next_at = max(next_at + self.interval_s, time.monotonic())
        finally:
            session.close()

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def since(self, at: float) -> list[Call]:
        return [call for call in self.snapshot() if call.at >= at]


def statuses(calls: Iterable[Call]) -> dict[int | str, int]:
    return dict(sorted(Counter(call.status for call in calls).items(), key=lambda item: str(item[0])))


def max_ms(calls: Iterable[Call], status: int | str | None = None) -> float:
    times = [call.elapsed_s for call in calls if status is None or call.status == status]
    return round(1000 * max(times), 1) if times else 0.0


def check_load(load: PredictLoad, allowed: set[int | str]) -> dict[int | str, int]:
    """The load's invariants: no 500, no hang, every call answered within its deadline + margin, and only
    `allowed` statuses. Returns the count by status."""
    calls = load.snapshot()
    counted = statuses(calls)
    assert calls, "the load sent nothing"
    assert not [c for c in calls if c.status == 500], f"500s: {counted}"
    assert not [c for c in calls if c.status == "hang"], f"calls unanswered within {load.bound_s}s: {counted}"
    slowest = max(call.elapsed_s for call in calls)
    assert slowest <= load.bound_s, f"a call took {slowest:.2f}s, beyond its deadline + margin ({load.bound_s}s)"
    assert set(counted) <= allowed, f"unexpected statuses: {counted} (allowed {sorted(map(str, allowed))})"
    return counted


# -- a TCP proxy that can cut a service off ----------------------------------------------------------


class TcpProxy:
    """Forwards connections on a loopback port to `target` (host, port), one thread per direction.

    `block()` resets every open connection and answers every new one with a reset, until `unblock()`:
    to the clients the service is unreachable, while the server behind keeps its state."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.refused = 0
        self.dropped = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._blocked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.listener.close()
        self._drop_all()

    def block(self) -> None:
        self._blocked.set()
        self.dropped += self._drop_all()

    def unblock(self) -> None:
        self._blocked.clear()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._blocked.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            src.close()

    def _drop_all(self) -> int:
        with self._lock:
            sockets = list(self._open)
            self._open.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
        return len(sockets) // 2


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- outages -----------------------------------------------------------------------------------------


def hold_outage(seconds: float, probe: Callable[[], None], interval_s: float = 0.1) -> float:
    """Keep a fault in place for `seconds` (the outage itself), calling `probe` about every `interval_s`
    meanwhile; returns when it ended (time.time())."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        started = time.monotonic()
        probe()
        time.sleep(max(0.0, min(left, interval_s - (time.monotonic() - started))))
    return time.time()


# -- the claim ledger --------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Where every claim of a burst ended: a result object, the DLQ, or nowhere (lost)."""

    claim_ids: list[str]
    completed: set[str] = field(default_factory=set)
    dead_lettered: set[str] = field(default_factory=set)
    dlq_codes: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0

    @property
    def lost(self) -> set[str]:
        return set(self.claim_ids) - self.completed - self.dead_lettered

    def line(self) -> str:
        codes = f" {self.dlq_codes}" if self.dlq_codes else ""
        both = len(self.dead_lettered & self.completed)
        also = f" ({both} of them with a result object too: written, then reported failed)" if both else ""
        return (f"claims: {len(self.claim_ids)} published, {len(self.completed)} completed, "
                f"{len(self.dead_lettered)} dead-lettered{codes}{also}, {len(self.lost)} lost, "
                f"{self.duplicates} computed more than once")


def finished_claims(settings: Settings, prefix: str, bridges: Iterable[ManagedProcess]) -> set[str]:
    """Claims with a result object, plus those the bridges logged as dead-lettered."""
    dead = {e["key"] for b in bridges for e in b.events("claim_dead_lettered") if str(e.get("key", "")).startswith(f"{prefix}-")}
    return results(settings, prefix) | dead


def ledger(settings: Settings, kafka: str, dlq_topic: str, prefix: str, claim_ids: list[str],
           bridges: Iterable[ManagedProcess], workers: Iterable[ManagedProcess]) -> Ledger:
    """Count the burst's outcomes: results from object storage, dead letters from the DLQ topic itself
    (as many as the bridges logged, read back), computations from the workers' logs."""
    bridges, workers = list(bridges), list(workers)
    logged = {e["key"] for b in bridges for e in b.events("claim_dead_lettered") if str(e.get("key", "")).startswith(f"{prefix}-")}
    records = read_all(kafka, dlq_topic, len(logged), timeout_s=20) if logged else []
    dead: set[str] = set()
    codes: Counter[str] = Counter()
    for record in records:
        key = (record.key or b"").decode()
        if key.startswith(f"{prefix}-"):
            dead.add(key)
            codes[dict((k, v.decode()) for k, v in record.headers).get("error", "?")] += 1
    assert logged <= dead, f"dead-lettered per the bridge log but not in the DLQ topic: {sorted(logged - dead)[:5]}"
    computed = Counter(claim for worker in workers for claim in computed_claims(worker, prefix))
    return Ledger(claim_ids, results(settings, prefix), dead, dict(codes), sum(1 for n in computed.values() if n > 1))


def publish_claims(kafka: str, topic: str, messages: list[Message]) -> tuple[dict[int, int], dict[tuple[int, int], str]]:
    """Publish round-robin over the partitions; returns each partition's end and, per (partition, offset),
    the claim id (the record's key) stored there."""
    producer = KafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    try:
        futures = [(key, producer.send(topic, key=key, value=value, headers=headers, partition=i % PARTITIONS))
                   for i, (key, value, headers) in enumerate(messages)]
        producer.flush(30)
        ends: dict[int, int] = {}
        where: dict[tuple[int, int], str] = {}
        for key, future in futures:
            meta = future.get(timeout=30)
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
            where[(meta.partition, meta.offset)] = (key or b"").decode()
        return ends, where
    finally:
        producer.close()
