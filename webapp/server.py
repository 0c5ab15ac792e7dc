"""Serving the app with waitress: a fast lane for probes, and a graceful drain on SIGTERM.

Fast lane: waitress hands every request to one pool of `HTTP_THREADS` threads, in arrival order, so
when all of them wait on slow /predict calls a health probe would wait too. `ProbeFirstDispatcher`
has `GET /healthz` answered by the I/O thread as soon as it is read (or, for a request that follows
another on the same connection, by a thread of its own).

Drain: the first SIGTERM (or SIGINT) accepts the connections the kernel has already completed, stops
accepting more and turns /readyz to 503. Every request on an open connection is still answered, with
`Connection: close`, and its connection is closed once the answer is flushed; a connection that stays idle
for IDLE_GRACE_S is closed. The process exits 0 when no connection is left, or after DRAIN_TIMEOUT_S.
Closing a connection only after answering it (never while a request may be arriving on it) is what keeps
keep-alive clients from seeing a reset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask

from settings import Settings
from tasks import timestamps
from tasks.logs import log_event, now_ms
from tasks.queues import DrainRate, QueueSample, retry_after_s
from webapp.prefork import is_copy, listening_socket

log = logging.getLogger(__name__)

FAST_PATHS = frozenset({"/healthz"})  # answered by the I/O thread
PROBE_PATHS = frozenset({"/readyz", "/metrics"})  # answered by the probe thread, never shed
# Requests the backlog bound may refuse: the work that goes to the queue. The others (downloads, /model)
# wait for a thread without it: QUEUE_MAXSIZE and HTTP_BACKLOG_WAIT_MS are about queued predictions.
BOUNDED_PATHS = frozenset({"/predict"})
# WSGI environ key set by `MarkedTask`: when the request arrived (epoch ms): the kernel's receive time of the
# data that completed it, or, where sockets carry no receive timestamp, when it was read in full.
ARRIVED_KEY = "inference.arrived_ms"
# A request is refused when it would spend more than this share of its deadline waiting for a thread:
# the rest is for the queue, the worker and the answer.
QUEUE_WAIT_SHARE = 0.5
# A refusal's answer: (status line, headers, body).
Refusal = tuple[str, list[tuple[str, str]], bytes]
# While draining, a keep-alive connection with no request for this long is closed. A client that sends on
# it within the grace is answered (and told to close); longer idle connections are the ordinary keep-alive
# race that HTTP clients handle by reconnecting.
IDLE_GRACE_S = 1.0
# The most a channel hands to one send() call. waitress uses the socket's SO_SNDBUF as read when the
# connection was accepted: 16 KiB on Linux by default (tcp_wmem), so a 256 KiB download chunk took 16
# trips through the interpreter, each giving the GIL away and taking it back. The kernel takes what fits.
SEND_CHUNK_BYTES = 256 * 1024
# waitress accepts one connection per main-loop turn. When clients open hundreds at once (a load balancer
# warming its pool, clients reconnecting after a restart) and every turn is busy, the last of them waited
# seconds unaccepted, their requests unread and on the clock: perf `overload` saw 429s answered 1.5-7.5 s
# after they were sent. A turn now takes every connection waiting, up to this many.
ACCEPT_PER_TURN = 64


class BacklogWait:
    """The backlog as the request threads see it: how many requests they have taken from it, and how long
    the last one had waited since the I/O thread queued it.

    Admission predicts a newcomer's wait as the backlog's length over the rate the threads take requests.
    That rate used to be the app's completions, /healthz (answered by the I/O thread) and the probes
    included: it read ~690/s where the threads took ~450/s, and admitted requests waited 232 ms (median)
    in perf `original` against the 200 ms of HTTP_BACKLOG_WAIT_MS. The last wait measured is a second
    witness: behind a backlog, a newcomer waits at least as long as the request just taken did.

    Written by request threads, read by the I/O thread, without a lock: `last_ms` is one reference, and a
    lost increment of the count (a thread switch inside `+=`) is one request off a rate."""

    def __init__(self) -> None:
        self.last_ms = 0.0
        self.taken_count = 0

    def taken(self, waited_s: float) -> None:
        self.last_ms = waited_s * 1000
        self.taken_count += 1


class ProbeFirstDispatcher(ThreadedTaskDispatcher):
    """waitress's thread pool, with probes first and a bounded backlog.

    Every request is stamped with its arrival (the kernel's receive time of its last bytes) as it is
    handed over; its deadline counts from then, not from when the I/O thread read it or a thread takes it. `GET /healthz` is answered by the I/O
    thread at once; the other probes (/readyz, /metrics) go to a thread of their own. Any other request
    that finds `max_waiting` requests already waiting for a thread is answered 429 by the I/O thread
    (`MarkedTask`): each admitted /predict holds its thread until its result, so under overload this
    backlog, not the Redis queue, is where requests wait, and without a bound it grows until deadlines
    have passed for everything in it."""

    def __init__(self, threads: int, fast_threads: int = 1, max_waiting: int = 0, max_wait_ms: int = 0) -> None:
        super().__init__()
        self.set_thread_count(threads)
        self.fast = ThreadedTaskDispatcher()
        self.fast.set_thread_count(fast_threads)
        self.max_waiting = max_waiting
        self.max_wait_ms = max_wait_ms
        self.waited = BacklogWait()  # its count over time: the backlog's drain rate
        self.drain = DrainRate()
        self.deadline_of: Callable[[dict[str, str], int], int] | None = None

    def add_task(self, task: Any) -> None:
        """Route a channel with a request ready. Runs in the I/O thread (or in the request thread that
        finished the previous request on the connection): nothing raised here may reach the listener,
        so whatever goes wrong, the request goes to waitress's own path and is answered there."""
        try:
            self._route(task)
        except Exception:
            log.exception("routing a request failed; handing it to waitress", extra={"event": "http_route_failed"})
            super().add_task(task)

    def _route(self, task: Any) -> None:
        requests = getattr(task, "requests", None)
        if not requests:
            super().add_task(task)
            return
        request = requests[0]
        inline = isinstance(task, QuietChannel) and threading.current_thread() is threading.main_thread()
        if request.error:
            # waitress could not parse it (bad request line or header, body over its limit): the
            # channel's error task answers it and closes the connection; no path, no app.
            if inline:
                task.serve_inline = True
            else:
                super().add_task(task)
            return
        if getattr(request, "arrived_ms", None) is None:
            # When the kernel received it (the socket's receive timestamp), else now: time spent unread in
            # the socket, while the I/O thread was behind, counts against the request's deadline.
            now = now_ms()
            request.arrived_ms = min(getattr(task, "received_at_ms", None) or now, now)
        if request.command == "GET" and request.path in FAST_PATHS:
            if inline:
                task.serve_inline = True  # answered by the I/O thread itself, right after it read the request
            else:
                self.fast.add_task(task)
        elif request.command == "GET" and request.path in PROBE_PATHS:
            self.fast.add_task(task)
        else:
            waiting = len(self.queue)
            sample = QueueSample(waiting, self.waited.taken_count, time.monotonic())
            if waiting:
                self.drain.observe(sample)
            else:  # a thread is free: how fast threads take requests is not measured while there are none to take
                self.drain.restart(sample)
            if inline and self.max_waiting and request.path in BOUNDED_PATHS \
                    and (waiting >= self.max_waiting or self.too_late(request, waiting)):
                request.shed = self.shed_answer(waiting)
                task.serve_inline = True
            else:
                request.queued_at = time.monotonic()
                super().add_task(task)

    def too_late(self, request: Any, waiting: int) -> bool:
        """Whether this request, counting the time it already spent unread in its socket and the wait for
        a thread (the backlog at the pace the threads take requests, or the last wait measured if longer),
        would wait longer than QUEUE_WAIT_SHARE of its deadline or HTTP_BACKLOG_WAIT_MS: refused now rather
        than run late (or answered 504 after the wait). A backlog longer than it takes to keep the threads
        busy adds waiting, not throughput; and when the I/O thread falls behind reading (the machine's CPU
        is saturated), refusing at once, at a tenth of the cost of serving, is what lets it catch up
        instead of falling further behind."""
        if self.deadline_of is None:
            return False
        unread_ms = max(0, now_ms() - request.arrived_ms)
        rate = self.drain.rate
        queued_ms = waiting / rate * 1000 if waiting >= len(self.threads) and rate > 0 else 0.0
        if waiting:
            queued_ms = max(queued_ms, self.waited.last_ms)
        if not unread_ms and not queued_ms:
            return False
        try:
            budget_ms = self.deadline_of(request.headers, request.arrived_ms) - request.arrived_ms
        except Exception:  # noqa: BLE001 - a malformed deadline header: the view answers it 400
            return False
        if budget_ms <= 0:
            return False  # past its deadline already: the view answers it 504 deadline_exceeded
        limit_ms = budget_ms * QUEUE_WAIT_SHARE
        if self.max_wait_ms:
            limit_ms = min(limit_ms, self.max_wait_ms)
        return unread_ms + queued_ms > limit_ms

    def shed_answer(self, waiting: int) -> tuple[int, int]:
        """(requests waiting, Retry-After seconds: the backlog over the rate the pool finishes requests)."""
        return waiting, retry_after_s(max(1, waiting - self.max_waiting + 1), self.drain.rate)

    @property
    def idle(self) -> bool:
        with self.lock:
            return not self.queue and self.active_count == 0 and not self.fast.queue

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        self.fast.shutdown(cancel_pending, timeout)
        return super().shutdown(cancel_pending, timeout)


class MarkedTask(WSGITask):
    """waitress's WSGI task, passing the request's arrival time to the app; a request refused at the
    backlog bound is answered with the server's `refusal` instead, without the app (like waitress's own
    `ErrorTask`): under overload most requests are refusals, and building a WSGI environ and calling
    through the middleware for each took CPU the admitted requests needed."""

    def service(self) -> None:
        queued_at = getattr(self.request, "queued_at", None)
        waited = getattr(self.channel.server.task_dispatcher, "waited", None)
        if queued_at is not None and waited is not None:  # a request thread takes it from the backlog
            waited.taken(time.monotonic() - queued_at)
        super().service()

    def execute(self) -> None:
        verdict = getattr(self.request, "shed", None)
        if verdict is None:
            super().execute()
            return
        status, headers, body = self.channel.server.refusal(*verdict)
        self.status = status
        self.response_headers.extend(headers)
        self.content_length = len(body)
        self.complete = True  # what start_response marks
        self.write(body)

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ[ARRIVED_KEY] = getattr(self.request, "arrived_ms", None)
        return environ


# waitress's own refusals, answered before the app sees the request: (status line, code, message) by
# waitress's status. A transfer coding waitress does not implement (RFC 9112 suggests 501) is answered 400:
# it comes from the client, and a 5xx would page whoever watches this service's server errors.
_WAITRESS_REFUSALS = {
    400: ("400 Bad Request", "bad_request", None),
    413: ("413 Request Entity Too Large", "payload_too_large", "The request body is too large."),
    431: ("431 Request Header Fields Too Large", "request_header_fields_too_large", None),
    501: ("400 Bad Request", "unsupported_transfer_encoding", "Only the chunked Transfer-Encoding is supported."),
    500: ("500 Internal Server Error", "internal_error", "The server failed to handle the request."),
}


class JsonErrorTask(ErrorTask):
    """waitress's answer to a request it could not parse (a bad request line or header, a body over its
    limit, headers too large, an unsupported Transfer-Encoding) or whose answer failed, with the contract's
    JSON error body instead of waitress's plain text. The connection is closed after it, as waitress does:
    what follows a request that could not be framed cannot be trusted."""

    def execute(self) -> None:
        error = self.request.error
        status, code, message = _WAITRESS_REFUSALS.get(error.code, _WAITRESS_REFUSALS[400])
        if message is None:
            message = _waitress_words(error.reason, str(error.body or ""))
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.status = status
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


def _waitress_words(reason: str, detail: str) -> str:
    """waitress's reason and detail ("Bad Request: Invalid header."), cut before any input it quotes
    ('Malformed header line "..."'): an error body never echoes the request."""
    detail = " ".join(detail.split('"', 1)[0].split())[:200].rstrip(" .:")
    return f"{reason}: {detail}." if detail else f"{reason}."


def _readable(sock: Any) -> bool:
    """Whether a socket has data to read now (poll: select() fails on descriptors above 1023)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class QuietChannel(HTTPChannel):
    """waitress's channel, without a busy loop. `HTTPChannel.writable()` is true whenever output is buffered,
    but `handle_write()` sends nothing while the request's task still runs and less than `send_bytes` is
    buffered; so from the moment a response is written until its task returns, the main loop polls a
    socket that is always writable and does nothing (measured: ~10,000 loop turns a second at 200
    requests a second, holding the GIL from the request threads). Here `writable()` answers what
    `handle_write()` will do; the task pulls the trigger when it ends, and the main loop flushes then."""

    serve_inline = False
    task_class = MarkedTask
    error_task_class = JsonErrorTask
    # For `EventLoop`: channels whose readiness may have changed since the loop last asked them (I/O
    # events, new channels) and channels a request thread is serving (it changes their state, then pulls
    # the trigger; they stay here until after that, then move to `dirty`). Set operations are atomic
    # under the GIL.
    dirty: set[QuietChannel] = set()
    in_service: set[QuietChannel] = set()

    def add_channel(self, map: Any = None) -> None:  # noqa: A002 - wasyncore's signature
        super().add_channel(map)
        QuietChannel.dirty.add(self)

    def service(self) -> None:
        QuietChannel.in_service.add(self)
        try:
            if getattr(self.server, "draining", False) and self.requests:
                # Answer, then close: waitress adds `Connection: close` and closes once the response is
                # flushed, so the client opens its next request elsewhere instead of on a connection about to go.
                self.requests[0].headers["CONNECTION"] = "close"
            super().service()
        finally:
            QuietChannel.dirty.add(self)
            QuietChannel.in_service.discard(self)

    received_at_ms: int | None = None  # the kernel's receive time of the data read last (epoch ms)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sendbuf_len: int = max(self.sendbuf_len, SEND_CHUNK_BYTES)
        self.timestamps = timestamps.enable(self.socket)
        # A new connection's first request usually arrives with it (a probe connects and sends at once):
        # read it now instead of one main-loop turn later, which under load is one more wait for the GIL.
        # This runs inside the listener's accept: whatever the bytes do, the error is this channel's
        # (logged, and the connection closed), never the listener's.
        if _readable(self.socket):
            try:
                self.handle_read()
            except Exception:  # noqa: BLE001 - handle_error logs it and closes this connection
                self.handle_error()

    def recv(self, buffer_size: int) -> bytes:
        """wasyncore's recv, also reading the kernel's receive timestamp of the data (SO_TIMESTAMP)."""
        if not self.timestamps:
            return super().recv(buffer_size)
        try:
            data, ancillary, _flags, _address = self.socket.recvmsg(buffer_size, timestamps.SPACE)
        except OSError as why:
            if why.args[0] in wasyncore._DISCONNECTED:
                self.handle_close()
                return b""
            raise
        if not data:
            self.handle_close()  # the peer closed: wasyncore signals it with an empty read
            return b""
        received = timestamps.received_at(ancillary)
        if received is not None:
            self.received_at_ms = int(received * 1000)
        return data

    def handle_read(self) -> None:
        """A liveness probe is answered here, in the I/O thread, once the request is read: no hand-over
        to a request thread and back, each of which waits for the GIL while /predict keeps it busy.
        (`received()` runs under the requests lock that `service()` takes, hence after it returns.)"""
        super().handle_read()
        while self.serve_inline:  # serving one may mark the next pipelined request for the I/O thread too
            self.serve_inline = False
            self.service()

    def writable(self) -> bool:
        if (self.requests and not (self.will_close or self.close_when_flushed)
                and self.total_outbufs_len < self.adj.send_bytes):
            return False
        return bool(super().writable())


class EventLoop:
    """waitress's main loop on one epoll set kept across turns.

    wasyncore's loop asks every channel `readable()` and `writable()` and registers each with a new poll
    object on every turn: with hundreds of connections open (as under overload) that walk took ~85 % of
    the interpreter's time (measured with py-spy, 256 keep-alive connections), starving the request
    threads and delaying every answer, /healthz and 429s included. Here a turn asks only the channels
    that may have changed (`QuietChannel.dirty`, `QuietChannel.in_service`) plus the listener and the
    trigger, and updates their epoll registration when it changed; every FULL_SCAN_S it asks all of them
    (waitress's maintenance marks idle channels closing without telling anyone)."""

    FULL_SCAN_S = 0.5

    def __init__(self, socket_map: dict[int, Any]) -> None:
        self.map = socket_map
        self.epoll = select.epoll()
        self.registered: dict[int, tuple[Any, int]] = {}
        self.others: list[tuple[int, Any]] = []  # the listener and the trigger: asked every turn
        self.last_full = 0.0

    def turn(self, timeout_s: float) -> None:
        now = time.monotonic()
        if now - self.last_full >= self.FULL_SCAN_S:
            self.last_full = now
            QuietChannel.dirty.clear()
            for fd in [fd for fd in self.registered if fd not in self.map]:
                self._forget(fd)
            candidates = list(self.map.items())
            self.others = [(fd, obj) for fd, obj in candidates if not isinstance(obj, QuietChannel)]
        else:
            dirty = list(QuietChannel.dirty)
            QuietChannel.dirty.difference_update(dirty)
            candidates = [(obj._fileno, obj) for obj in dirty + list(QuietChannel.in_service)] + self.others
        for fd, obj in candidates:
            try:
                self._update(fd, obj)
            except Exception:  # noqa: BLE001 - a channel's fault closes that channel (a listener's: `keep_listening`)
                obj.handle_error()
        for fd, flags in self.epoll.poll(timeout_s):
            obj = self.map.get(fd)
            if obj is None:
                self._forget(fd)
                continue
            wasyncore.readwrite(obj, flags)  # calls the object's handle_error on any exception
            if isinstance(obj, QuietChannel):
                QuietChannel.dirty.add(obj)
            elif getattr(obj, "accepting", False):  # the listener: waitress accepted one connection; take the rest
                try:
                    _accept_waiting(obj, ACCEPT_PER_TURN - 1, within_limit=True)
                except Exception:  # noqa: BLE001 - logged by the listener's `keep_listening`
                    obj.handle_error()

    def _update(self, fd: int | None, obj: Any) -> None:
        current: Any = self.map.get(fd) if fd is not None else None
        if fd is None or current is not obj:  # closed (or its descriptor reused by another)
            if fd is not None and fd in self.registered and self.registered[fd][0] is obj:
                self._forget(fd)
            return
        flags = 0
        if obj.readable():
            flags |= select.EPOLLIN | select.EPOLLPRI
        if obj.writable() and not obj.accepting:
            flags |= select.EPOLLOUT
        known = self.registered.get(fd)
        if known is not None and known[0] is obj and known[1] == flags:
            return
        if not flags:
            self._forget(fd)
            return
        try:
            if known is None:
                self.epoll.register(fd, flags)
            else:
                self.epoll.modify(fd, flags)
        except FileNotFoundError:  # the old socket on this descriptor was closed: epoll dropped it
            self.epoll.register(fd, flags)
        except FileExistsError:
            self.epoll.modify(fd, flags)
        self.registered[fd] = (obj, flags)

    def _forget(self, fd: int) -> None:
        if self.registered.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)

    def close(self) -> None:
        self.epoll.close()


class InFlight:
    """WSGI middleware counting requests from start until their response has been fully produced."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.count = 0
        self._lock = threading.Lock()

    def _done(self) -> None:
        with self._lock:
            self.count -= 1

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            self.count += 1
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._done()
            raise
        return _Closing(body, self._done)


class _Closing:
    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self.body = body
        self.on_close = on_close

    def __iter__(self) -> Any:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close:
                close()
        finally:
            self.on_close()


def serve(app: Any, settings: Settings, on_drain: Callable[[], None],
          shed: Callable[[int, int], Refusal] | None = None,
          deadline_of: Callable[[dict[str, str], int], int] | None = None) -> int:
    """Run the server in this (main) thread until SIGTERM/SIGINT, then drain and return 0; return 1 at
    once if a listening socket closes outside a drain (a process that stays up without accepting
    connections would never be restarted by its supervisor). `shed`, given (requests waiting,
    Retry-After seconds), answers (status, headers, body) for the requests refused in the backlog:
    QUEUE_MAXSIZE requests waiting for a thread, or a wait longer than HTTP_BACKLOG_WAIT_MS or
    QUEUE_WAIT_SHARE of the request's deadline (which `deadline_of` computes)."""
    counted = InFlight(app)
    # With several processes on the port each bounds its own backlog: together they hold QUEUE_MAXSIZE.
    max_waiting = -(-settings.queue_maxsize // settings.http_processes) if settings.use_bounded_queue and shed else 0
    dispatcher = ProbeFirstDispatcher(settings.http_threads, max_waiting=max_waiting,
                                      max_wait_ms=settings.http_backlog_wait_ms)
    dispatcher.deadline_of = deadline_of
    if settings.http_processes > 1:  # one of several copies on the port (webapp/prefork.py)
        where: dict[str, Any] = {"sockets": [listening_socket(settings.host, settings.port)]}
    else:
        where = {"host": settings.host, "port": settings.port}
    server = create_server(
        counted,
        **where,
        channel_timeout=settings.http_keepalive,
        connection_limit=max(1000, settings.http_threads * 8),
        # waitress refuses larger bodies with its own plain-text 413; keep its limit above ours so the
        # app answers with the JSON error body.
        max_request_body_size=settings.max_body_bytes * 4,
        # A streamed response is written into a per-connection buffer (in memory up to outbuf_overflow,
        # then a temporary file); the app thread waits when it holds more than this. What the app thread
        # could not send itself, the I/O thread sends, all of it in one go per connection, while probes
        # wait: 512 KiB (two download chunks) stays in memory and keeps that go short. Measured (perf
        # `download --quick`, ten downloads): /healthz p99 88 ms at 4 MB, 82 and 118 at 1 MB, 66 and 76
        # at 512 KiB, for the same aggregate throughput (~400 MB/s).
        outbuf_high_watermark=512 * 1024,
        ident="inference-api",
        # poll(), not select(): select() fails on descriptors above 1023 and the connection limit is 1,000+.
        asyncore_use_poll=True,
        _dispatcher=dispatcher,
    )
    server.channel_class = QuietChannel
    server.refusal = shed
    stopping = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        if stopping.is_set():
            raise SystemExit(1)  # a second signal: stop now
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    # A copy under the supervisor (webapp/prefork.py) hears of a Ctrl-C from it, as SIGTERM: the terminal's
    # SIGINT reaches the whole process group, and with the supervisor's SIGTERM would count as a second
    # signal (stop at once) instead of starting a drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN if is_copy() else _stop)
    log_event(log, "http_listening", host=settings.host, port=server.effective_port, threads=settings.http_threads)
    listeners = [obj for obj in server._map.values() if getattr(obj, "accepting", False)]
    for listener in listeners:
        listener.handle_error = keep_listening(listener)
    loop = EventLoop(server._map)
    while not stopping.is_set():
        loop.turn(0.2)
        if any(_closed(listener) for listener in listeners):
            log_event(log, "http_listener_closed", level=logging.CRITICAL,
                      reason="a listening socket closed outside a drain; exiting so that a supervisor restarts the API")
            dispatcher.shutdown(cancel_pending=True, timeout=1)
            loop.close()
            return 1

    on_drain()
    server.draining = True
    log_event(log, "http_draining", in_flight=counted.count, timeout_s=settings.drain_timeout_s)
    _accept_pending(server._map)
    _close_listeners(server._map)
    started = time.time()  # wall clock, like waitress's `last_activity`
    deadline = time.monotonic() + settings.drain_timeout_s
    while time.monotonic() < deadline:
        _close_idle(server._map, since=started)
        if not _channels(server._map) and dispatcher.idle:
            break
        loop.turn(0.05)
    left = counted.count
    dispatcher.shutdown(cancel_pending=True, timeout=1)  # before the trigger goes, so no thread still pulls it
    for channel in list(server._map.values()):
        channel.close()
    loop.close()
    log_event(log, "http_stopped", unfinished=left)
    return 0


def _closed(listener: Any) -> bool:
    return listener.socket is None or listener.socket.fileno() < 0


def keep_listening(listener: Any) -> Callable[[], None]:
    """A listener's error handler: log the fault and keep the socket open. wasyncore's default closes the
    dispatcher that raised, which for the listener means no connection is ever accepted again."""

    def handle_error() -> None:
        log.exception("error on the listening socket; still listening", extra={"event": "http_listener_error"})

    return handle_error


def _accept_waiting(listener: Any, limit: int, *, within_limit: bool) -> None:
    """Accept up to `limit` connections the kernel has completed on `listener`, while there are any (and,
    `within_limit`, while waitress's connection limit allows)."""
    for _ in range(limit):
        if (within_limit and not listener.readable()) or not _readable(listener.socket):
            return
        listener.handle_accept()


def _accept_pending(socket_map: dict[int, Any]) -> None:
    """Take the connections the kernel has completed but waitress has not accepted yet: closing the
    listener with them in its backlog would reset clients that already sent their request."""
    for dispatcher in list(socket_map.values()):
        if getattr(dispatcher, "accepting", False):
            _accept_waiting(dispatcher, getattr(dispatcher.adj, "connection_limit", 1000), within_limit=False)


def _close_listeners(socket_map: dict[int, Any]) -> None:
    """Close the listening sockets only. waitress's `server.close()` also closes the trigger, the pipe its
    request threads write to when a response is ready: they would then fail with EBADF, or, once the fd
    number is reused by a new socket (a Redis connection), write into that socket."""
    for dispatcher in list(socket_map.values()):
        if getattr(dispatcher, "accepting", False):
            wasyncore.dispatcher.close(dispatcher)


def _channels(socket_map: dict[int, Any]) -> list[HTTPChannel]:
    return [channel for channel in socket_map.values() if isinstance(channel, HTTPChannel)]


def _close_idle(socket_map: dict[int, Any], since: float) -> None:
    """Close the connections with no request, no partial request and nothing to send, idle for IDLE_GRACE_S
    (counted from `since`, the start of the drain, at the earliest)."""
    now = time.time()
    for channel in _channels(socket_map):
        idle = not channel.requests and channel.request is None and not channel.total_outbufs_len
        if idle and not channel.will_close and now - max(channel.last_activity, since) >= IDLE_GRACE_S:
            channel.will_close = True  # closed by the main loop's next write pass, like waitress's own timeout
