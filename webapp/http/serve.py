"""`serve`: the app on waitress until SIGTERM, then a graceful drain.

Drain: the first SIGTERM (or SIGINT) accepts the connections the kernel has already completed, stops
accepting more and turns /readyz to 503. Every request on an open connection is still answered, with
`Connection: close`, and its connection is closed once the answer is flushed; a connection that stays idle
for IDLE_GRACE_S is closed. The process exits 0 when no connection is left, or after DRAIN_TIMEOUT_S.
Closing a connection only after answering it (never while a request may be arriving on it) is what keeps
keep-alive clients from seeing a reset.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server

from settings import Settings
from tasks.logs import log_event
from webapp.admission import BacklogPolicy, DeadlineOf
from webapp.http.channel import QuietChannel
from webapp.http.dispatcher import ProbeFirstDispatcher
from webapp.http.loop import EventLoop, accept_waiting
from webapp.http.prefork import is_copy, listening_socket

log = logging.getLogger(__name__)

# A refusal's answer: (status line, headers, body).
Refusal = tuple[str, list[tuple[str, str]], bytes]
# While draining, a keep-alive connection with no request for this long is closed. A client that sends on
# it within the grace is answered (and told to close); longer idle connections are the ordinary keep-alive
# race that HTTP clients handle by reconnecting.
IDLE_GRACE_S = 1.0


class ActiveRequests:
    """WSGI middleware counting the requests the app is answering: from the call until the response has been
    fully produced (what a drain waits for, and reports if it gives up)."""

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
          refusal: Callable[[int, int], Refusal] | None = None, deadline_of: DeadlineOf | None = None) -> int:
    """Run the server in this (main) thread until SIGTERM/SIGINT, then drain and return 0; return 1 at
    once if a listening socket closes outside a drain (a process that stays up without accepting
    connections would never be restarted by its supervisor). `refusal`, given (requests waiting,
    Retry-After seconds), answers (status, headers, body) for the requests refused in the backlog:
    QUEUE_MAXSIZE requests waiting for a thread, or a wait longer than HTTP_BACKLOG_WAIT_MS or
    QUEUE_WAIT_SHARE of the request's deadline (which `deadline_of` computes)."""
    counted = ActiveRequests(app)
    # With several processes on the port each bounds its own backlog: together they hold QUEUE_MAXSIZE.
    max_waiting = -(-settings.queue_maxsize // settings.http_processes) if settings.use_bounded_queue and refusal else 0
    dispatcher = ProbeFirstDispatcher(BacklogPolicy(settings.http_threads, max_waiting=max_waiting,
                                                    max_wait_ms=settings.http_backlog_wait_ms, deadline_of=deadline_of))
    if settings.http_processes > 1:  # one of several copies on the port (webapp/http/prefork.py)
        where: dict[str, Any] = {"sockets": [listening_socket(settings.host, settings.port)]}
    else:
        where = {"host": settings.host, "port": settings.port}
    server = create_server(
        counted,
        **where,
        channel_timeout=settings.http_keepalive,
        connection_limit=max(1000, settings.http_threads * 8),
        # Above MAX_BODY_BYTES, so that the app answers the bodies it refuses (waitress's own refusal,
        # for bodies far over, gets the same JSON error body: answers.JsonErrorTask).
        max_request_body_size=settings.max_body_bytes * 4,
        # A streamed response is written into a per-connection buffer (in memory up to outbuf_overflow,
        # then a temporary file); the app thread waits when it holds more than this. What the app thread
        # could not send itself, the I/O thread sends, all of it in one go per connection, while probes
        # wait: 512 KiB (two download chunks) stays in memory and keeps that go short.
        outbuf_high_watermark=512 * 1024,
        ident="inference-api",
        _dispatcher=dispatcher,
    )
    server.channel_class = QuietChannel
    server.refusal = refusal
    stopping = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        if stopping.is_set():
            raise SystemExit(1)  # a second signal: stop now
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    # A copy under the supervisor (webapp/http/prefork.py) hears of a Ctrl-C from it, as SIGTERM: the terminal's
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


def _accept_pending(socket_map: dict[int, Any]) -> None:
    """Take the connections the kernel has completed but waitress has not accepted yet: closing the
    listener with them in its backlog would reset clients that already sent their request."""
    for dispatcher in list(socket_map.values()):
        if getattr(dispatcher, "accepting", False):
            accept_waiting(dispatcher, getattr(dispatcher.adj, "connection_limit", 1000), within_limit=False)


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
