"""The listening socket outlives any fault: an exception while accepting a connection is logged and the
listener keeps accepting; and should a listener ever close outside a drain, `serve` returns 1 so that the
process exits non-zero and its supervisor starts another."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from waitress.server import create_server

from devtools.services import free_port
from webapp.http.channel import QuietChannel
from webapp.http.loop import EventLoop
from webapp.http.serve import keep_listening


def app(_environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


class FailingOnce(QuietChannel):
    """A channel whose construction fails for the first connection, inside the listener's accept."""

    failed = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not FailingOnce.failed:
            FailingOnce.failed = True
            raise RuntimeError("a fault while accepting")
        super().__init__(*args, **kwargs)


@pytest.fixture
def server() -> Iterator[Any]:
    made = create_server(app, host="127.0.0.1", port=0, threads=1)
    made.channel_class = FailingOnce
    made.handle_error = keep_listening(made)
    yield made
    made.close()
    made.task_dispatcher.shutdown(timeout=1)


def test_a_fault_while_accepting_leaves_the_listener_open(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    loop = EventLoop(server._map)
    port = server.effective_port
    # Given a first connection whose channel fails to be built
    first = socket.create_connection(("127.0.0.1", port), timeout=5)
    loop.turn(2.0)
    # Then the fault is logged and the listener is still open
    assert any(getattr(record, "event", None) == "http_listener_error" for record in caplog.records)
    assert server.socket.fileno() >= 0 and server.accepting
    # And the next connection is accepted and answered
    second = socket.create_connection(("127.0.0.1", port), timeout=5)
    second.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = b""
    for _ in range(50):  # bounded: a turn each
        loop.turn(0.1)
        second.settimeout(0.05)
        try:
            answer += second.recv(1000)
        except TimeoutError:
            pass
        if answer.endswith(b"ok"):
            break
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    first.close()
    second.close()
    loop.close()


_CLOSE_THE_LISTENER = textwrap.dedent("""
    import threading, time
    from waitress import wasyncore
    from settings import Settings
    from webapp.http import serve as server

    made = []
    real_create_server = server.create_server
    def create_server(*args, **kwargs):
        made.append(real_create_server(*args, **kwargs))
        return made[-1]
    server.create_server = create_server

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    def close_listener():
        while not made:
            time.sleep(0.01)
        wasyncore.dispatcher.close(made[0])  # as wasyncore does after an error it could not contain

    threading.Thread(target=close_listener, daemon=True).start()
    raise SystemExit(server.serve(app, Settings(port={port}), on_drain=lambda: None))
""")


def test_a_listener_closed_outside_a_drain_makes_serve_return_1() -> None:
    # Given a server whose listening socket is closed while it serves (not by a drain)
    script = _CLOSE_THE_LISTENER.format(port=free_port())
    # When it notices
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, text=True)
    # Then the process exits 1, saying why
    assert done.returncode == 1, done.stderr
    assert "http_listener_closed" in done.stdout + done.stderr
