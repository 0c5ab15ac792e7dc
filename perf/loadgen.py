"""`python -m perf.loadgen load|probe|paced`: the load client, a process of its own so its CPU use is its own.
Every response goes to `--out` as CSV and a JSON stats line to stdout; the modes: perf/README.md, "The load client"."""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import selectors
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from perf.checks import check
from perf.measure import percentile
from webapp.http import timestamps

HOST = "127.0.0.1"
N_FEATURES = 9  # the demo model's and the comparison model's
REQUEST_TIMEOUT_S = 30.0
SWEEP_INTERVAL_S = 0.1


def build_request(method: str, host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    if method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def feature_bodies(n_features: int, count: int = 1024, seed: int = 7) -> list[bytes]:
    """Distinct, plausible feature rows (so no response cache can answer them all from one entry)."""
    rng = random.Random(seed)
    return [json.dumps({"features": [round(rng.uniform(35.0, 70.0), 3) for _ in range(n_features)]},
                       separators=(",", ":")).encode() for _ in range(count)]


def parse_response(buf: bytearray) -> tuple[int, dict[str, str], bytes, int] | None:
    """(status, headers, body, bytes used) of one complete answer at the start of `buf`, else None. The servers
    measured here always send Content-Length; an answer without it raises ValueError (a transport error)."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    end = head_end + 4 + int(headers.get("content-length", "0" if status in (204, 304) else "x"))
    return (status, headers, bytes(buf[head_end + 4:end]), end) if len(buf) >= end else None


def tail(name: str, values_ms: list[float]) -> dict[str, float | None]:
    """`<name>_p99_ms` and `<name>_max_ms` (None when empty), for the stats line."""
    return {f"{name}_p99_ms": round(percentile(values_ms, 99), 3) if values_ms else None,
            f"{name}_max_ms": round(max(values_ms), 3) if values_ms else None}


@dataclass
class Record:
    start_s: float
    latency_ms: float
    status: int
    valid: bool
    detail: str


@dataclass
class _Conn:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    sent: bytes = b""
    started: float = 0.0
    arrived: float = 0.0  # when the last bytes read arrived (perf_counter clock; the kernel's timestamp where there is one)
    busy: bool = False
    answered: int = 0


class ClosedLoop:
    def __init__(self, host: str, port: int, requests: list[bytes], kind: str, connections: int, duration_s: float,
                 max_requests: int, grace_s: float) -> None:
        self.host, self.port, self.requests, self.kind = host, port, requests, kind
        self.connections, self.duration_s, self.max_requests, self.grace_s = connections, duration_s, max_requests, grace_s
        self.records: list[Record] = []
        self.sent = self.connects = 0
        self.stopped = False
        self._sel = selectors.DefaultSelector()
        self._t0 = self.t0_epoch = 0.0
        self.read_lags_ms: list[float] = []  # from an answer's arrival to this loop reading it
        self._epoch_offset = time.time() - time.perf_counter()  # kernel timestamps are wall-clock

    def _may_send(self, now: float) -> bool:
        return not self.stopped and self.sent < self.max_requests and now - self._t0 < self.duration_s

    def _open(self, start_s: float | None) -> _Conn | None:
        """A registered connection; when it cannot connect, a failed record for the request that wanted it."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=5)
        except OSError as error:
            if start_s is not None:  # no retry: no storm against a server that is down
                self.records.append(Record(start_s - self._t0, (time.perf_counter() - start_s) * 1000, 0, False,
                                           f"connect: {error.strerror or error}"))
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        timestamps.enable(sock)
        self.connects += 1
        conn = _Conn(sock)
        self._sel.register(sock, selectors.EVENT_READ, conn)
        return conn

    def _close(self, conn: _Conn) -> None:
        self._sel.unregister(conn.sock)
        conn.sock.close()

    def _send(self, conn: _Conn, started: float) -> None:
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        conn.sent, conn.busy, conn.buf, conn.started = request, True, bytearray(), started
        try:
            sent = conn.sock.send(request)  # far smaller than an empty socket buffer: it all goes at once
            if sent < len(request):
                conn.sock.setblocking(True)
                conn.sock.sendall(request[sent:])
                conn.sock.setblocking(False)
        except OSError as error:
            # A reused connection the server closed meanwhile is replaced; a fresh one that fails is not.
            self._fail(conn, f"send: {error.strerror or error}", replace=conn.answered > 0)

    def _fail(self, conn: _Conn, detail: str, replace: bool = True) -> None:
        now = time.perf_counter()
        if conn.busy:
            self.records.append(Record(conn.started - self._t0, (now - conn.started) * 1000, 0, False, detail))
        self._close(conn)
        if replace:
            self._replace(now)

    def _replace(self, now: float) -> None:
        if self._may_send(now) and (fresh := self._open(now)) is not None:
            self._send(fresh, time.perf_counter())

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data, ancillary, _flags, _address = conn.sock.recvmsg(262144, timestamps.SPACE)
        except OSError as error:
            return self._fail(conn, f"recv: {error.strerror or error}")
        if not data:
            return self._fail(conn, "connection closed by the server")
        received = timestamps.received_at(ancillary)
        conn.arrived = received - self._epoch_offset if received is not None else time.perf_counter()
        conn.buf += data
        try:
            parsed = parse_response(conn.buf)
        except (ValueError, IndexError) as error:
            return self._fail(conn, f"malformed response: {error}")
        if parsed is None:
            return None
        now = time.perf_counter()
        arrived = min(max(conn.arrived, conn.started), now)
        self.read_lags_ms.append((now - arrived) * 1000)
        status, headers, body, _used = parsed
        valid, detail = check(self.kind, status, body, headers.get("retry-after", ""), conn.sent.partition(b"\r\n\r\n")[2])
        self.records.append(Record(conn.started - self._t0, (arrived - conn.started) * 1000, status, valid, detail))
        conn.busy = False
        conn.answered += 1
        self._after_response(conn, now, headers.get("connection", "").lower() == "close")
        return None

    def _after_response(self, conn: _Conn, now: float, server_closes: bool) -> None:
        if not server_closes and self._may_send(now):
            return self._send(conn, time.perf_counter())
        self._close(conn)
        if server_closes:
            self._replace(now)
        return None

    def _start(self) -> None:
        self._t0, self.t0_epoch = time.perf_counter(), time.time()
        for _ in range(self.connections):
            conn = self._open(time.perf_counter())
            if conn is not None and self._may_send(time.perf_counter()):
                self._send(conn, time.perf_counter())

    def _more(self, now: float) -> tuple[bool, float]:
        """Whether to go on, and how long the next select may wait."""
        return bool(self._sel.get_map()), SWEEP_INTERVAL_S

    def run(self) -> list[Record]:
        self._start()
        hard_stop = self._t0 + self.duration_s + self.grace_s
        next_sweep = self._t0 + SWEEP_INTERVAL_S
        while (now := time.perf_counter()) < hard_stop:
            going, timeout = self._more(now)
            if not going:
                break
            for key, _ in self._sel.select(timeout=timeout):
                self._on_readable(key.data)
            if (now := time.perf_counter()) >= next_sweep:
                next_sweep = now + SWEEP_INTERVAL_S
                self._epoch_offset = time.time() - time.perf_counter()  # follows any adjustment of the wall clock
                for key in list(self._sel.get_map().values()):
                    if key.data.busy and now - key.data.started > REQUEST_TIMEOUT_S:
                        self._fail(key.data, "timeout")
        self._finish("unanswered at the end of the grace period")
        return self.records

    def _finish(self, why: str) -> None:
        for key in list(self._sel.get_map().values()):
            if key.data.busy:
                self.records.append(Record(key.data.started - self._t0, (time.perf_counter() - key.data.started) * 1000,
                                           0, False, why))
            self._close(key.data)

    def stats(self) -> dict[str, Any]:
        return {"t0_epoch": round(self.t0_epoch, 6), **tail("read_lag", self.read_lags_ms)}


class PacedLoop(ClosedLoop):
    """Requests due at a fixed rate over a pool of keep-alive connections, timed from when each was due: one goes
    out at once on an idle connection (the most recently used first), on a new one while the pool has fewer than
    `connections`, or else waits in a backlog in order."""

    def __init__(self, *args: Any, rate: float, preopen: int = 0) -> None:
        super().__init__(*args)
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval_s = 1.0 / rate
        self.total = min(self.max_requests, max(1, int(self.duration_s * rate)))
        self.preopen = min(preopen, self.connections)
        self.due = 0  # requests that have become due so far
        self.backlog: deque[float] = deque()  # due times of requests waiting for a connection
        self.idle: list[_Conn] = []
        self.pool = self.max_backlog = 0
        self.send_delays_ms: list[float] = []

    def _may_send(self, now: float) -> bool:
        return False  # requests go out by `_dispatch` only, when due

    def _open(self, start_s: float | None) -> _Conn | None:
        conn = super()._open(start_s)
        self.pool += conn is not None
        return conn

    def _close(self, conn: _Conn) -> None:
        super()._close(conn)
        self.pool -= 1
        if conn in self.idle:
            self.idle.remove(conn)

    def _after_response(self, conn: _Conn, now: float, server_closes: bool) -> None:
        if server_closes:
            self._close(conn)
        else:
            self.idle.append(conn)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.backlog and not self.stopped:
            if self.idle:
                conn: _Conn | None = self.idle.pop()
            elif self.pool < self.connections:
                if (conn := self._open(self.backlog[0])) is None:
                    self.backlog.popleft()
                    continue
            else:
                return
            assert conn is not None
            due_at = self.backlog.popleft()
            self.send_delays_ms.append((time.perf_counter() - due_at) * 1000)
            self._send(conn, due_at)

    def _start(self) -> None:
        self.idle = [conn for conn in (self._open(None) for _ in range(self.preopen)) if conn is not None]
        self._t0, self.t0_epoch = time.perf_counter(), time.time()  # the schedule starts once the pool is open

    def _more(self, now: float) -> tuple[bool, float]:
        while self.due < self.total and not self.stopped and self._t0 + self.due * self.interval_s <= now:
            self.backlog.append(self._t0 + self.due * self.interval_s)
            self.due += 1
        self._dispatch()
        self.max_backlog = max(self.max_backlog, len(self.backlog))  # due, and no connection free for them
        finished = self.stopped or self.due >= self.total
        if finished and not self.backlog and not any(key.data.busy for key in self._sel.get_map().values()):
            return False, 0.0
        if finished:
            return True, SWEEP_INTERVAL_S
        return True, min(SWEEP_INTERVAL_S, max(0.0, self._t0 + self.due * self.interval_s - time.perf_counter()))

    def _finish(self, why: str) -> None:
        now = time.perf_counter()
        self.records += [Record(due_at - self._t0, (now - due_at) * 1000, 0, False,
                                "not sent: no free connection before the end of the grace period") for due_at in self.backlog]
        self.backlog.clear()
        super()._finish(why)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "rate": round(1 / self.interval_s, 3), "scheduled": self.total, "sent": self.sent,
                "max_backlog": self.max_backlog, "pool": self.connections,
                "sent_late_over_5ms": sum(1 for d in self.send_delays_ms if d > 5.0), **tail("send_delay", self.send_delays_ms)}


def probe(port: int, request: bytes, kind: str, interval_s: float, duration_s: float, keepalive: bool, runner: Any,
          timeout_s: float = 2.0) -> list[Record]:
    """One request per tick; a tick missed because the previous probe was slow is skipped, not caught up."""
    records: list[Record] = []
    sock: socket.socket | None = None
    t0 = time.perf_counter()
    tick, ticks = 0, int(duration_s / interval_s) + 1
    while tick < ticks and not runner.stopped:
        time.sleep(max(0.0, t0 + tick * interval_s - time.perf_counter()))
        started = time.perf_counter()
        status, valid, detail = 0, False, ""
        try:
            if sock is None:
                sock = socket.create_connection((HOST, port), timeout=timeout_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            buf = bytearray()
            while (parsed := parse_response(buf)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed by the server")
                buf += chunk
            status, headers, body, _ = parsed
            valid, detail = check(kind, status, body, headers.get("retry-after", ""), request.partition(b"\r\n\r\n")[2])
            if not keepalive or headers.get("connection", "").lower() == "close":
                sock.close()
                sock = None
        except (OSError, ValueError, IndexError) as error:
            detail = f"{type(error).__name__}: {error}"
            if sock is not None:
                sock.close()
                sock = None
        records.append(Record(started - t0, (time.perf_counter() - started) * 1000, status, valid, detail))
        tick = max(tick + 1, int((time.perf_counter() - t0) / interval_s) + 1)
    if sock is not None:
        sock.close()
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("load", "probe", "paced"))
    parser.add_argument("--port", type=int, required=True, help="of the server on 127.0.0.1")
    parser.add_argument("--path", default="/predict", help="/predict, /healthz or /echo: the request and its checks")
    parser.add_argument("--header", action="append", default=[], help="extra request header, NAME:VALUE")
    parser.add_argument("--connections", type=int, default=64, help="load: connections; paced: most in the pool")
    parser.add_argument("--rate", type=float, default=100.0, help="paced: requests per second")
    parser.add_argument("--preopen", type=int, default=0, help="paced: connections opened before the clock starts")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=10**9, help="stop after this many requests")
    parser.add_argument("--grace-s", type=float, default=20.0, help="wait this long for answers after the end")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="probe: one request every ...")
    parser.add_argument("--keepalive", action="store_true", help="probe: reuse one connection")
    parser.add_argument("--out", required=True, help="CSV of every response")
    args = parser.parse_args(argv)
    kind = args.path.strip("/")
    method = "GET" if kind == "healthz" else "POST"
    headers = dict(item.split(":", 1) for item in args.header)
    requests = [build_request(method, HOST, args.port, args.path, body, headers)
                for body in (feature_bodies(N_FEATURES) if method == "POST" else [b""])]
    common = (HOST, args.port, requests, kind, args.connections, args.duration_s, args.requests, args.grace_s)
    runner: Any = (SimpleNamespace(stopped=False) if args.mode == "probe" else ClosedLoop(*common) if args.mode == "load"
                   else PacedLoop(*common, rate=args.rate, preopen=args.preopen))
    for signum in (signal.SIGTERM, signal.SIGINT):  # stop early, writing what was measured
        signal.signal(signum, lambda *_: setattr(runner, "stopped", True))
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)  # the run's CPU, not the imports'
    stats: dict[str, Any] = {"t0_epoch": round(time.time(), 6)}
    if args.mode == "probe":
        records = probe(args.port, requests[0], kind, args.interval_ms / 1000, args.duration_s, args.keepalive, runner)
        stats["connects"] = len(records)
    else:
        records = runner.run()
        stats.update(connects=runner.connects, **runner.stats())
    wall_s = time.perf_counter() - started
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["start_s", "latency_ms", "status", "valid", "detail"])
        writer.writerows([f"{r.start_s:.6f}", f"{r.latency_ms:.3f}", r.status, int(r.valid), r.detail] for r in records)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    print(json.dumps({"responses": len(records), "wall_s": round(wall_s, 3), "cpu_s": round(cpu_s, 3), **stats}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
