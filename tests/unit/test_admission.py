"""The backlog's admission policy (webapp/admission.py), pure: which requests waiting for a request thread are
refused for waiting too long, from the pace the threads take requests and the wait measured last."""

from __future__ import annotations

import pytest

from tasks.logs import now_ms
from tasks.queues import CompletionRate, QueueSample
from webapp.admission import BacklogPolicy

THREADS = 2


class FixedRate:
    rate = 100.0  # requests finished per second: 10 ms of backlog per request waiting


def policy(max_wait_ms: int, deadline_in_ms: int) -> BacklogPolicy:
    """THREADS threads taking FixedRate requests a second; deadlines `deadline_in_ms` after arrival."""
    made = BacklogPolicy(THREADS, max_waiting=1000, max_wait_ms=max_wait_ms,
                         deadline_of=lambda _headers, arrived_ms: arrived_ms + deadline_in_ms)
    made.pace = FixedRate()  # type: ignore[assignment]
    return made


def too_late(subject: BacklogPolicy, waiting: int, unread_ms: int = 0) -> bool:
    """For a request read just now, after `unread_ms` in its socket."""
    return subject.too_late({}, now_ms() - unread_ms, waiting)


@pytest.mark.parametrize(("max_wait_ms", "deadline_in_ms", "waiting", "refused"), [
    (200, 10_000, 19, False),  # 190 ms of backlog: within the 200 ms cap
    (200, 10_000, 21, True),  # 210 ms: beyond the cap, though far within half the deadline
    (0, 10_000, 21, False),  # no cap: only half the deadline (5 s) counts
    (0, 10_000, 501, True),
    (200, 300, 16, True),  # 160 ms: more than half a 300 ms deadline, within the cap
    (5, 10_000, THREADS - 1, False),  # 10 ms, beyond a 5 ms cap, but fewer waiting than threads: one is about to be free
])
def test_a_request_is_refused_when_its_wait_would_pass_the_cap_or_half_its_deadline(
    max_wait_ms: int, deadline_in_ms: int, waiting: int, refused: bool
) -> None:
    pool = policy(max_wait_ms, deadline_in_ms)
    assert too_late(pool, waiting) is refused


@pytest.mark.parametrize(("unread_ms", "waiting", "refused"), [
    (150, 0, False),  # 150 ms unread in its socket, a thread free: within the 200 ms cap
    (250, 0, True),  # the I/O thread is 250 ms behind: refused at once, whatever the backlog
    (150, 10, True),  # 150 ms unread + 100 ms of backlog
])
def test_the_time_a_request_spent_unread_in_its_socket_counts_towards_its_wait(
    unread_ms: int, waiting: int, refused: bool
) -> None:
    pool = policy(200, 10_000)
    assert too_late(pool, waiting, unread_ms=unread_ms) is refused


@pytest.mark.parametrize("deadline_in_ms", [0, -1000])
def test_a_request_past_its_deadline_is_left_to_the_view_which_answers_504(
    deadline_in_ms: int
) -> None:
    pool = policy(200, deadline_in_ms)
    assert too_late(pool, 50, unread_ms=5) is False


def test_behind_a_backlog_a_newcomer_waits_at_least_as_long_as_the_request_just_taken() -> None:
    """Fewer requests waiting than threads predict no wait from the rate; the wait just measured
    (250 ms, beyond the 200 ms cap) says otherwise. With nothing waiting, a thread is free."""
    pool = policy(200, 10_000)
    assert too_late(pool, 1) is False
    pool.waited.taken(0.25)
    assert too_late(pool, 1) is True
    assert too_late(pool, 0) is False


def test_a_pace_not_yet_measured_refuses_nothing_below_the_bound() -> None:
    """A cold server (a burst of new clients): more requests waiting than threads, no pace measured and no
    wait measured yet: nothing says the wait would be long, so nothing is refused short of QUEUE_MAXSIZE."""
    pool = BacklogPolicy(THREADS, max_waiting=1000, max_wait_ms=200, deadline_of=lambda _h, arrived_ms: arrived_ms + 10_000)
    assert too_late(pool, 19) is False


@pytest.mark.parametrize(("path", "waiting", "refused"), [
    ("/predict", 1000, True),  # at the bound
    ("/predict", 999, False),
    ("/download_processed/a.parquet", 5000, False),  # never: only queued predictions are bounded here
    ("/model", 5000, False),
])
def test_only_predictions_are_refused_at_the_bound(path: str, waiting: int, refused: bool) -> None:
    pool = BacklogPolicy(THREADS, max_waiting=1000, max_wait_ms=0, deadline_of=None)
    assert pool.refuses(path, {}, now_ms(), waiting) is refused


def test_retry_after_is_the_backlog_beyond_the_bound_over_the_pace() -> None:
    pool = policy(200, 10_000)
    assert pool.retry_after_s(1000 + 299) == 3  # 300 beyond the bound at 100 a second
    assert pool.retry_after_s(1000) == 1  # at least a second


def test_the_pace_is_measured_only_while_requests_wait() -> None:
    """Takes counted while the backlog was empty are the pace of arrivals, not of the threads: an interval
    that began before the backlog formed would read a pace far below the threads' and refuse newcomers."""
    drain = CompletionRate(min_interval_s=0.5)
    # Given a server idle for a second (a sample then, none taken), whose backlog forms just now
    drain.observe(QueueSample(0, 0, 100.0))
    drain.restart(QueueSample(0, 2, 101.0))  # the last arrival that found a thread free
    # When its threads take 60 requests in the next 0.6 s
    rate = drain.observe(QueueSample(5, 62, 101.6))
    # Then the pace is theirs: 100 a second, not 62 over 1.6 s
    assert rate == pytest.approx(100.0)
