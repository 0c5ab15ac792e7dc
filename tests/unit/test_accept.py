"""The server's main loop takes every connection waiting to be accepted in one turn (webapp/http/loop.py
`EventLoop`), not one per turn as waitress's loop does, so a burst of new connections does not leave
requests unread for seconds."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from waitress.server import create_server

from webapp.http.channel import QuietChannel
from webapp.http.loop import ACCEPT_PER_TURN, EventLoop


def app(_environ: dict[str, object], start_response: object) -> list[bytes]:  # never called: nothing is sent
    raise AssertionError("no request was sent")


@pytest.fixture
def server() -> Iterator[object]:
    made = create_server(app, host="127.0.0.1", port=0, threads=1)
    made.channel_class = QuietChannel
    yield made
    made.close()
    made.task_dispatcher.shutdown(timeout=1)


def connections(server: object, count: int) -> list[socket.socket]:
    """`count` client connections; once connect() returns, the kernel holds each, waiting for accept()."""
    port = server.effective_port  # type: ignore[attr-defined]
    return [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(count)]


def accepted(server: object) -> int:
    return sum(isinstance(obj, QuietChannel) for obj in server._map.values())  # type: ignore[attr-defined]


@pytest.mark.parametrize("waiting", [1, 10, ACCEPT_PER_TURN, ACCEPT_PER_TURN + 5])
def test_one_turn_accepts_every_waiting_connection_up_to_the_limit(server: object, waiting: int) -> None:
    clients = connections(server, waiting)
    try:
        loop = EventLoop(server._map)  # type: ignore[attr-defined]
        loop.turn(2.0)  # the listener is readable: the connections are already in the kernel's queue
        assert accepted(server) == min(waiting, ACCEPT_PER_TURN)
        if waiting > ACCEPT_PER_TURN:  # the rest at the next turn
            loop.turn(2.0)
            assert accepted(server) == waiting
        loop.close()
    finally:
        for client in clients:
            client.close()
