"""`python -m perf.loadgen`: the load client, run as its own process so its CPU use is its own.

Two modes:

- `load`: a closed loop over N keep-alive HTTP/1.1 connections driven by one `selectors` (epoll) loop.
  Each connection sends its next request as soon as the previous response is complete (no pipelining).
  Requests are pre-built bytes; a response is parsed just enough to find its status, headers and body
  (Content-Length or chunked), then the body is checked by a validator for the endpoint. One loop in
  one thread costs a few tens of microseconds of CPU a request, far below what the server spends, so
  on a 2-core machine the client is not the bottleneck (its CPU time is reported with the figures).
- `probe`: one request every `--interval-ms` on a fresh connection each time (as a kubelet probe
  does), timing connect + request + response; with `--keepalive`, on one reused connection.
- `paced`: an open loop. Request i is due at `i / --rate` seconds whatever the server does, and is
  sent on an idle keep-alive connection of a pool of at most `--connections` (opened as needed,
  `--preopen` of them up front). A request that finds no idle connection waits in a backlog, and its
  latency is measured from the time it was due, not from when it went out: a slow server cannot slow
  the client down and hide its own slowness (no coordinated omission).

All stop by themselves: at `--duration-s` or after `--requests`, then wait at most `--grace-s` for the
requests in flight; anything unanswered by then is recorded as a transport error, not dropped. Every
response is written to `--out` as CSV: start_s (since the run began), latency_ms, status (0 for a
transport error), valid (the body matched the contract for that status), detail (Retry-After value,
`cached`, or why the response was invalid / the transport failed). In `paced` mode start_s is the time
the request was due.

In `load` and `paced` modes a response's latency ends when its last bytes reached this machine: the
kernel's receive timestamp of the read that completed it (SO_TIMESTAMP), not when this one loop got
round to reading it. With hundreds of connections answering at once on a machine whose cores the server
also uses, the loop reads them one after another, sometimes tens of milliseconds later; that delay is the
client's, not the server's. It is reported as `read_lag_p99_ms` / `read_lag_max_ms` in the stats line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import resource
import selectors
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from webapp.http import timestamps

Validator = Callable[[int, dict[str, str], bytes, bytes], tuple[bool, str]]

REQUEST_TIMEOUT_S = 30.0
SWEEP_INTERVAL_S = 0.1


# -- requests ----------------------------------------------------------------------------------------


def build_request(method: str, host: str, port: int, path: str, body: bytes = b"",
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def feature_bodies(n_features: int, count: int = 1024, seed: int = 7) -> list[bytes]:
    """Distinct, plausible feature rows (so no response cache can answer them all from one entry)."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        row = [round(rng.uniform(35.0, 70.0), 3) for _ in range(n_features)]
        bodies.append(json.dumps({"features": row}, separators=(",", ":")).encode())
    return bodies


# -- responses ---------------------------------------------------------------------------------------


class MalformedResponse(Exception):
    pass


def parse_response(buf: bytearray | bytes) -> tuple[int, dict[str, str], bytes, int] | None:
    """(status, headers, body, bytes consumed) for one complete response at the start of `buf`, else None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise MalformedResponse(f"bad status line {lines[0][:60]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = head_end + 4
    if "content-length" in headers:
        end = start + int(headers["content-length"])
        return (status, headers, bytes(buf[start:end]), end) if len(buf) >= end else None
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _parse_chunked(buf, start, status, headers)
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", start
    raise MalformedResponse("response without Content-Length or chunked encoding")


def _parse_chunked(buf: bytearray | bytes, pos: int, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, int] | None:
    body = bytearray()
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            return None if trailer_end < 0 else (status, headers, bytes(body), trailer_end + 2)
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos:pos + size]
        pos += size + 2


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _error_body(status: int, headers: dict[str, str], body: bytes) -> tuple[bool, str]:
    data = _json(body)
    error = data.get("error") if isinstance(data, dict) else None
    if not (isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)):
        return False, f"{status} without the JSON error body"
    if status in (429, 503):
        retry_after = headers.get("retry-after", "")
        if not retry_after.isdigit():
            return False, f"{status} {error['code']} with Retry-After {retry_after!r}"
        return True, f"{error['code']} retry_after={retry_after}"
    return True, error["code"]


def validate_predict(status: int, headers: dict[str, str], body: bytes, _sent: bytes) -> tuple[bool, str]:
    if status != 200:
        return _error_body(status, headers, body)
    data = _json(body)
    if not isinstance(data, dict):
        return False, "200 body is not a JSON object"
    if not _is_number(data.get("prediction")):
        return False, "200 without a numeric prediction"
    if not isinstance(data.get("model_version"), str) or not data["model_version"]:
        return False, "200 without a model_version string"
    return True, "cached" if data.get("cached") is True else ""


def validate_echo(status: int, headers: dict[str, str], body: bytes, sent: bytes) -> tuple[bool, str]:
    if status != 200:
        return False, f"echo answered {status}"
    return (True, "") if body == sent.partition(b"\r\n\r\n")[2] else (False, "echo body differs from the request")


def validate_healthz(status: int, headers: dict[str, str], body: bytes, _sent: bytes) -> tuple[bool, str]:
    data = _json(body)
    ok = status == 200 and isinstance(data, dict) and data.get("status") == "ok"
    return ok, "" if ok else f"healthz answered {status}"


VALIDATORS: dict[str, Validator] = {"predict": validate_predict, "echo": validate_echo, "healthz": validate_healthz}


def tail(name: str, values_ms: list[float]) -> dict[str, float | None]:
    """`<name>_p99_ms` and `<name>_max_ms` of `values_ms` (None when empty), for the stats line."""
    ordered = sorted(values_ms)
    return {f"{name}_p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3) if ordered else None,
            f"{name}_max_ms": round(ordered[-1], 3) if ordered else None}


# -- the closed loop ---------------------------------------------------------------------------------


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
    arrived: float = 0.0  # when the last bytes read arrived (perf_counter clock; kernel timestamp where there is one)
    busy: bool = False
    answered: int = 0


class ClosedLoop:
    def __init__(self, host: str, port: int, requests: list[bytes], validator: Validator, connections: int,
                 duration_s: float, max_requests: int, grace_s: float, request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.host, self.port = host, port
        self.requests = requests
        self.validator = validator
        self.connections = connections
        self.duration_s = duration_s
        self.max_requests = max_requests
        self.grace_s = grace_s
        self.request_timeout_s = request_timeout_s
        self.records: list[Record] = []
        self.sent = 0
        self.connects = 0
        self.stopped = False
        self._sel = selectors.DefaultSelector()
        self._t0 = 0.0
        self.read_lags_ms: list[float] = []  # from a response's arrival to this loop reading it
        self._epoch_offset = time.time() - time.perf_counter()  # kernel timestamps are wall-clock

    def _may_send(self, now: float) -> bool:
        return not self.stopped and self.sent < self.max_requests and now - self._t0 < self.duration_s

    def _connect(self) -> socket.socket | str:
        """A connected socket, or why it could not connect."""
        try:
            return socket.create_connection((self.host, self.port), timeout=5)
        except OSError as error:
            return f"connect: {error.strerror or error}"

    def _open(self) -> _Conn | None:
        sock = self._connect()
        if isinstance(sock, str):
            self.records.append(Record(time.perf_counter() - self._t0, 0.0, 0, False, sock))
            return None
        return self._register(sock)

    def _register(self, sock: socket.socket) -> _Conn:
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

    def _send(self, conn: _Conn) -> None:
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        conn.sent, conn.busy, conn.buf = request, True, bytearray()
        conn.started = time.perf_counter()
        try:
            sent = conn.sock.send(request)  # far smaller than an empty socket buffer: it all goes at once
            if sent < len(request):
                conn.sock.setblocking(True)
                conn.sock.sendall(request[sent:])
                conn.sock.setblocking(False)
        except OSError as error:
            # A reused connection the server closed meanwhile is replaced; a fresh one that fails is not
            # (no retry storm against a server that is down).
            self._fail(conn, f"send: {error.strerror or error}", replace=conn.answered > 0)

    def _fail(self, conn: _Conn, detail: str, replace: bool = True) -> None:
        now = time.perf_counter()
        if conn.busy:
            self.records.append(Record(conn.started - self._t0, (now - conn.started) * 1000, 0, False, detail))
        self._close(conn)
        if replace:
            self._replace(now)

    def _replace(self, now: float) -> None:
        if self._may_send(now):
            fresh = self._open()
            if fresh is not None:
                self._send(fresh)

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data, ancillary, _flags, _address = conn.sock.recvmsg(262144, timestamps.SPACE)
        except OSError as error:
            self._fail(conn, f"recv: {error.strerror or error}")
            return
        if not data:
            self._fail(conn, "connection closed by the server")
            return
        received = timestamps.received_at(ancillary)
        conn.arrived = received - self._epoch_offset if received is not None else time.perf_counter()
        conn.buf += data
        try:
            parsed = parse_response(conn.buf)
        except (MalformedResponse, ValueError) as error:
            self._fail(conn, f"malformed response: {error}")
            return
        if parsed is None:
            return
        now = time.perf_counter()
        arrived = min(max(conn.arrived, conn.started), now)
        self.read_lags_ms.append((now - arrived) * 1000)
        status, headers, body, _used = parsed
        valid, detail = self.validator(status, headers, body, conn.sent)
        self.records.append(Record(conn.started - self._t0, (arrived - conn.started) * 1000, status, valid, detail))
        conn.busy = False
        conn.answered += 1
        self._after_response(conn, now, headers.get("connection", "").lower() == "close")

    def _after_response(self, conn: _Conn, now: float, server_closes: bool) -> None:
        if server_closes:
            self._close(conn)
            self._replace(now)
        elif self._may_send(now):
            self._send(conn)
        else:
            self._close(conn)

    def run(self) -> list[Record]:
        self._t0 = time.perf_counter()
        for _ in range(self.connections):
            conn = self._open()
            if conn is not None and self._may_send(time.perf_counter()):
                self._send(conn)
        hard_stop = self._t0 + self.duration_s + self.grace_s
        next_sweep = self._t0 + SWEEP_INTERVAL_S
        while self._sel.get_map() and time.perf_counter() < hard_stop:
            for key, _ in self._sel.select(timeout=SWEEP_INTERVAL_S):
                self._on_readable(key.data)
            now = time.perf_counter()
            if now >= next_sweep:
                next_sweep = now + SWEEP_INTERVAL_S
                self._sweep(now)
        self._finish()
        return self.records

    def _sweep(self, now: float) -> None:
        self._epoch_offset = time.time() - time.perf_counter()  # follows any adjustment of the wall clock
        for key in list(self._sel.get_map().values()):
            conn = key.data
            if conn.busy and now - conn.started > self.request_timeout_s:
                self._fail(conn, "timeout")

    def stats(self) -> dict[str, Any]:
        return tail("read_lag", self.read_lags_ms)

    def _finish(self) -> None:
        for key in list(self._sel.get_map().values()):
            conn = key.data
            if conn.busy:
                self.records.append(Record(conn.started - self._t0, (time.perf_counter() - conn.started) * 1000, 0, False,
                                           "unanswered at the end of the grace period"))
            self._close(conn)


# -- the open loop -----------------------------------------------------------------------------------


class PacedLoop(ClosedLoop):
    """Requests due at a fixed rate over a pool of keep-alive connections, timed from when each was due.

    Request i is due at t0 + i / rate. Due requests go out at once on an idle connection (the most
    recently used first), on a new one while the pool has fewer than `connections`, or else wait in a
    backlog in order. Latency runs from the due time, so time spent waiting for a connection counts:
    a server that falls behind shows it in the figures instead of slowing the client down."""

    def __init__(self, host: str, port: int, requests: list[bytes], validator: Validator, connections: int,
                 duration_s: float, max_requests: int, grace_s: float, rate: float, preopen: int = 0,
                 request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        super().__init__(host, port, requests, validator, connections, duration_s, max_requests, grace_s,
                         request_timeout_s)
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval_s = 1.0 / rate
        self.total = min(max_requests, max(1, int(duration_s * rate)))
        self.preopen = min(preopen, connections)
        self.due = 0  # requests that have become due so far
        self.backlog: deque[float] = deque()  # due times of requests waiting for a connection
        self.idle: list[_Conn] = []
        self.pool = 0  # connections open
        self.max_backlog = 0
        self.send_delays_ms: list[float] = []
        self.t0_epoch = 0.0

    def _may_send(self, now: float) -> bool:
        return not self.stopped and bool(self.backlog)

    def _replace(self, now: float) -> None:
        pass  # the pool reopens lazily when a due request needs a connection

    def _close(self, conn: _Conn) -> None:
        super()._close(conn)
        self.pool -= 1
        if conn in self.idle:
            self.idle.remove(conn)

    def _open_pooled(self, due_at: float | None) -> _Conn | None:
        sock = self._connect()
        if isinstance(sock, str):
            if due_at is not None:  # the request that needed it fails: no retry storm against a server that is down
                now = time.perf_counter()
                self.records.append(Record(due_at - self._t0, (now - due_at) * 1000, 0, False, sock))
            return None
        self.pool += 1
        return self._register(sock)

    def _send_due(self, conn: _Conn, due_at: float) -> None:
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        conn.sent, conn.busy, conn.buf, conn.started = request, True, bytearray(), due_at
        self.send_delays_ms.append((time.perf_counter() - due_at) * 1000)
        try:
            sent = conn.sock.send(request)
            if sent < len(request):
                conn.sock.setblocking(True)
                conn.sock.sendall(request[sent:])
                conn.sock.setblocking(False)
        except OSError as error:
            self._fail(conn, f"send: {error.strerror or error}")

    def _after_response(self, conn: _Conn, now: float, server_closes: bool) -> None:
        if server_closes:
            self._close(conn)
        else:
            self.idle.append(conn)
        self._dispatch()

    def _release_due(self, now: float) -> None:
        while self.due < self.total and not self.stopped and self._t0 + self.due * self.interval_s <= now:
            self.backlog.append(self._t0 + self.due * self.interval_s)
            self.due += 1

    def _dispatch(self) -> None:
        while self.backlog and not self.stopped:
            if self.idle:
                conn: _Conn | None = self.idle.pop()
            elif self.pool < self.connections:
                conn = self._open_pooled(self.backlog[0])
                if conn is None:
                    self.backlog.popleft()
                    continue
            else:
                return
            assert conn is not None
            self._send_due(conn, self.backlog.popleft())

    def _busy(self) -> bool:
        return any(key.data.busy for key in self._sel.get_map().values())

    def run(self) -> list[Record]:
        self._t0 = time.perf_counter()
        for _ in range(self.preopen):
            conn = self._open_pooled(None)
            if conn is not None:
                self.idle.append(conn)
        self._t0, self.t0_epoch = time.perf_counter(), time.time()  # the schedule starts once the pool is open
        hard_stop = self._t0 + self.duration_s + self.grace_s
        next_sweep = self._t0 + SWEEP_INTERVAL_S
        while time.perf_counter() < hard_stop:
            now = time.perf_counter()
            self._release_due(now)
            self._dispatch()
            self.max_backlog = max(self.max_backlog, len(self.backlog))  # due, and no connection free for them
            finished = self.stopped or self.due >= self.total
            if finished and not self.backlog and not self._busy():
                break
            timeout = SWEEP_INTERVAL_S
            if not finished:
                timeout = min(timeout, max(0.0, self._t0 + self.due * self.interval_s - time.perf_counter()))
            for key, _ in self._sel.select(timeout=timeout):
                self._on_readable(key.data)
            now = time.perf_counter()
            if now >= next_sweep:
                next_sweep = now + SWEEP_INTERVAL_S
                self._sweep(now)
        now = time.perf_counter()
        for due_at in self.backlog:
            self.records.append(Record(due_at - self._t0, (now - due_at) * 1000, 0, False,
                                       "not sent: no free connection before the end of the grace period"))
        self.backlog.clear()
        self._finish()
        return self.records

    def stats(self) -> dict[str, Any]:
        late = sum(1 for d in self.send_delays_ms if d > 5.0)
        return {**super().stats(), "t0_epoch": round(self.t0_epoch, 6), "rate": round(1 / self.interval_s, 3),
                "scheduled": self.total, "sent": self.sent,
                "max_backlog": self.max_backlog, "pool": self.connections, "sent_late_over_5ms": late,
                **tail("send_delay", self.send_delays_ms)}


# -- probes ------------------------------------------------------------------------------------------


def probe(host: str, port: int, request: bytes, validator: Validator, interval_s: float, duration_s: float,
          timeout_s: float = 2.0, keepalive: bool = False, should_stop: Callable[[], bool] = lambda: False) -> list[Record]:
    """One request per tick; a tick missed because the previous probe was slow is skipped, not caught up."""
    records: list[Record] = []
    sock: socket.socket | None = None
    t0 = time.perf_counter()
    tick, ticks = 0, int(duration_s / interval_s) + 1
    while tick < ticks and not should_stop():
        delay = t0 + tick * interval_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        started = time.perf_counter()
        status, valid, detail = 0, False, ""
        try:
            if sock is None:
                sock = socket.create_connection((host, port), timeout=timeout_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            buf = bytearray()
            parsed = None
            while parsed is None:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed by the server")
                buf += chunk
                parsed = parse_response(buf)
            status, headers, body, _ = parsed
            valid, detail = validator(status, headers, body, request)
            if not keepalive or headers.get("connection", "").lower() == "close":
                sock.close()
                sock = None
        except (OSError, MalformedResponse, ValueError) as error:
            detail = f"{type(error).__name__}: {error}"
            if sock is not None:
                sock.close()
                sock = None
        records.append(Record(started - t0, (time.perf_counter() - started) * 1000, status, valid, detail))
        tick = max(tick + 1, int((time.perf_counter() - t0) / interval_s) + 1)
    if sock is not None:
        sock.close()
    return records


# -- command line ------------------------------------------------------------------------------------


def write_records(path: str, records: list[Record]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["start_s", "latency_ms", "status", "valid", "detail"])
        for r in records:
            writer.writerow([f"{r.start_s:.6f}", f"{r.latency_ms:.3f}", r.status, int(r.valid), r.detail])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("load", "probe", "paced"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="POST")
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--kind", choices=sorted(VALIDATORS), default="predict", help="how responses are checked")
    parser.add_argument("--n-features", type=int, default=9, help="feature count of the generated bodies")
    parser.add_argument("--header", action="append", default=[], help="extra request header, NAME:VALUE")
    parser.add_argument("--connections", type=int, default=64, help="load: connections; paced: most in the pool")
    parser.add_argument("--rate", type=float, default=100.0, help="paced mode: requests per second")
    parser.add_argument("--preopen", type=int, default=0, help="paced mode: connections opened before the clock starts")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=10**9, help="stop after this many requests")
    parser.add_argument("--grace-s", type=float, default=20.0, help="wait this long for responses after the end")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="probe mode: one request every ...")
    parser.add_argument("--keepalive", action="store_true", help="probe mode: reuse one connection")
    parser.add_argument("--out", required=True, help="CSV of every response")
    args = parser.parse_args(argv)

    stop = {"now": False}

    def _stop(_signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    headers = dict(item.split(":", 1) for item in args.header)
    bodies = feature_bodies(args.n_features) if args.method == "POST" else [b""]
    requests = [build_request(args.method, args.host, args.port, args.path, body, headers) for body in bodies]
    validator = VALIDATORS[args.kind]
    extra: dict[str, Any] = {}
    started, started_epoch = time.perf_counter(), time.time()
    if args.mode == "load":
        loop = ClosedLoop(args.host, args.port, requests, validator, args.connections, args.duration_s,
                          args.requests, args.grace_s)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: setattr(loop, "stopped", True))
        records = loop.run()
        connects = loop.connects
        extra = loop.stats()
    elif args.mode == "paced":
        paced = PacedLoop(args.host, args.port, requests, validator, args.connections, args.duration_s,
                          args.requests, args.grace_s, args.rate, args.preopen)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: setattr(paced, "stopped", True))
        records = paced.run()
        connects = paced.connects
        extra = paced.stats()
    else:
        records = probe(args.host, args.port, requests[0], validator, args.interval_ms / 1000, args.duration_s,
                        keepalive=args.keepalive, should_stop=lambda: stop["now"])
        connects = len(records)
    wall_s = time.perf_counter() - started
    write_records(args.out, records)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"responses": len(records), "t0_epoch": round(started_epoch, 6), "wall_s": round(wall_s, 3), "connects": connects,
                      "cpu_s": round(usage.ru_utime + usage.ru_stime, 3), **extra}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
