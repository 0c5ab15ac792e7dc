"""Which requests the server's backlog refuses for waiting too long (webapp/server.py `too_late`)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from waitress.server import create_server

from tasks.logs import now_ms
from tasks.queues import DrainRate, QueueSample
from webapp.server import EventLoop, ProbeFirstDispatcher, QuietChannel

THREADS = 2


class FixedRate:
    rate = 100.0  # requests finished per second: 10 ms of backlog per request waiting


def dispatcher(max_wait_ms: int, deadline_in_ms: int) -> ProbeFirstDispatcher:
    """A pool of THREADS finishing FixedRate requests a second; deadlines `deadline_in_ms` after arrival."""
    pool = ProbeFirstDispatcher(THREADS, max_waiting=1000, max_wait_ms=max_wait_ms)
    pool.drain = FixedRate()  # type: ignore[assignment]
    pool.deadline_of = lambda _headers, arrived_ms: arrived_ms + deadline_in_ms
    return pool


@pytest.fixture
def pools() -> Iterator[list[ProbeFirstDispatcher]]:
    made: list[ProbeFirstDispatcher] = []
    yield made
    for pool in made:
        pool.shutdown(timeout=1)


def request(unread_ms: int = 0) -> SimpleNamespace:
    """A request read just now, after `unread_ms` in its socket."""
    return SimpleNamespace(headers={}, arrived_ms=now_ms() - unread_ms)


@pytest.mark.parametrize(("max_wait_ms", "deadline_in_ms", "waiting", "refused"), [
    (200, 10_000, 19, False),  # 190 ms of backlog: within the 200 ms cap
    (200, 10_000, 21, True),  # 210 ms: beyond the cap, though far within half the deadline
    (0, 10_000, 21, False),  # no cap: only half the deadline (5 s) counts
    (0, 10_000, 501, True),
    (200, 300, 16, True),  # 160 ms: more than half a 300 ms deadline, within the cap
    (5, 10_000, THREADS - 1, False),  # 10 ms, beyond a 5 ms cap, but fewer waiting than threads: one is about to be free
])
def test_a_request_is_refused_when_its_wait_would_pass_the_cap_or_half_its_deadline(
    pools: list[ProbeFirstDispatcher], max_wait_ms: int, deadline_in_ms: int, waiting: int, refused: bool
) -> None:
    pool = dispatcher(max_wait_ms, deadline_in_ms)
    pools.append(pool)
    assert pool.too_late(request(), waiting) is refused


@pytest.mark.parametrize(("unread_ms", "waiting", "refused"), [
    (150, 0, False),  # 150 ms unread in its socket, a thread free: within the 200 ms cap
    (250, 0, True),  # the I/O thread is 250 ms behind: refused at once, whatever the backlog
    (150, 10, True),  # 150 ms unread + 100 ms of backlog
])
def test_the_time_a_request_spent_unread_in_its_socket_counts_towards_its_wait(
    pools: list[ProbeFirstDispatcher], unread_ms: int, waiting: int, refused: bool
) -> None:
    pool = dispatcher(200, 10_000)
    pools.append(pool)
    assert pool.too_late(request(unread_ms), waiting) is refused


@pytest.mark.parametrize("deadline_in_ms", [0, -1000])
def test_a_request_past_its_deadline_is_left_to_the_view_which_answers_504(
    pools: list[ProbeFirstDispatcher], deadline_in_ms: int
) -> None:
    pool = dispatcher(200, deadline_in_ms)
    pools.append(pool)
    assert pool.too_late(request(unread_ms=5), waiting=50) is False


def test_behind_a_backlog_a_newcomer_waits_at_least_as_long_as_the_request_just_taken(
    pools: list[ProbeFirstDispatcher],
) -> None:
    """Fewer requests waiting than threads predict no wait from the rate; the wait just measured
    (250 ms, beyond the 200 ms cap) says otherwise. With nothing waiting, a thread is free."""
    pool = dispatcher(200, 10_000)
    pools.append(pool)
    assert pool.too_late(request(), waiting=1) is False
    pool.waited.taken(0.25)
    assert pool.too_late(request(), waiting=1) is True
    assert pool.too_late(request(), waiting=0) is False


def app(_environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def test_the_drain_rate_counts_only_requests_the_threads_take_from_the_backlog(
    pools: list[ProbeFirstDispatcher],
) -> None:
    """/healthz is answered by the I/O thread and never waits for a request thread: counting it (as the
    app's completions did) made the backlog seem to drain faster than it does."""
    pool = ProbeFirstDispatcher(THREADS, max_waiting=1000, max_wait_ms=200)
    pools.append(pool)
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
        assert pool.waited.taken_count == 2
    finally:
        client.close()
        loop.close()
        server.close()


def test_a_pace_not_yet_measured_refuses_nothing_below_the_bound(pools: list[ProbeFirstDispatcher]) -> None:
    """A cold server (a burst of new clients): more requests waiting than threads, no pace measured and no
    wait measured yet: nothing says the wait would be long, so nothing is refused short of QUEUE_MAXSIZE."""
    pool = ProbeFirstDispatcher(THREADS, max_waiting=1000, max_wait_ms=200)
    pool.deadline_of = lambda _headers, arrived_ms: arrived_ms + 10_000
    pools.append(pool)
    assert pool.too_late(request(), waiting=19) is False


def test_the_pace_is_measured_only_while_requests_wait() -> None:
    """Takes counted while the backlog was empty are the pace of arrivals, not of the threads: an interval
    that began before the backlog formed would read a pace far below the threads' and refuse newcomers."""
    drain = DrainRate(min_interval_s=0.5)
    # Given a server idle for a second (a sample then, none taken), whose backlog forms just now
    drain.observe(QueueSample(0, 0, 100.0))
    drain.restart(QueueSample(0, 2, 101.0))  # the last arrival that found a thread free
    # When its threads take 60 requests in the next 0.6 s
    rate = drain.observe(QueueSample(5, 62, 101.6))
    # Then the pace is theirs: 100 a second, not 62 over 1.6 s
    assert rate == pytest.approx(100.0)
