"""Which requests the server's backlog refuses for waiting too long (webapp/server.py `too_late`)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from webapp.server import ProbeFirstDispatcher

THREADS = 2
ARRIVED_MS = 1_000_000


class FixedRate:
    rate = 100.0  # requests finished per second: 10 ms of backlog per request waiting


def dispatcher(max_wait_ms: int, deadline_in_ms: int) -> ProbeFirstDispatcher:
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


REQUEST = SimpleNamespace(headers={}, arrived_ms=ARRIVED_MS)


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
    assert pool.too_late(REQUEST, waiting) is refused
