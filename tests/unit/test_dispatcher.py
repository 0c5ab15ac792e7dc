"""The server's dispatcher on a real waitress server: what counts as a request taken from the backlog."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

from waitress.server import create_server

from webapp.admission import BacklogPolicy
from webapp.http.channel import QuietChannel
from webapp.http.dispatcher import ProbeFirstDispatcher
from webapp.http.loop import EventLoop


def app(_environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def test_the_pace_counts_only_requests_the_threads_take_from_the_backlog() -> None:
    """/healthz is answered by the I/O thread and never waits for a request thread: counting it (as the
    app's completions did) made the backlog seem to drain faster than it does."""
    pool = ProbeFirstDispatcher(BacklogPolicy(2, max_waiting=1000, max_wait_ms=200))
    server = create_server(app, host="127.0.0.1", port=0, _dispatcher=pool)
    server.channel_class = QuietChannel
    loop = EventLoop(server._map)  # type: ignore[attr-defined]
    sent = [b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"] * 3 + [
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"] * 2
    client = socket.create_connection(("127.0.0.1", server.effective_port), timeout=5)  # type: ignore[attr-defined]
    # Non-blocking reads: in timeout mode recv() waits for data even with MSG_DONTWAIT, and this test's one
    # thread is also the server's, which cannot answer during that wait.
    client.setblocking(False)
    try:
        for raw in sent:
            client.sendall(raw)
            answer = b""
            deadline = time.monotonic() + 5
            while not answer.endswith(b"ok") and time.monotonic() < deadline:
                loop.turn(0.05)
                with contextlib.suppress(BlockingIOError):
                    answer += client.recv(4096, socket.MSG_DONTWAIT)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer
        assert pool.policy.waited.taken_count == 2
    finally:
        client.close()
        loop.close()
        server.close()
        pool.shutdown(timeout=1)
