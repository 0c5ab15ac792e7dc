"""Admission at the HTTP backlog: which requests waiting for a request thread are refused at once (429)
rather than answered late. Pure: no waitress, no Flask; the server (webapp/http/) asks it about every
request it reads and tells it every request a thread takes.

Each admitted /predict holds a request thread until its answer, so under overload the backlog of requests
waiting for a thread, not the Redis queue, is where requests wait; without a bound it grows until the
deadlines of everything in it have passed. A request is refused when QUEUE_MAXSIZE requests already wait
(shared among the API processes on the port), or when its wait would pass HTTP_BACKLOG_WAIT_MS or
QUEUE_WAIT_SHARE of its deadline. Its wait is predicted from two witnesses: the backlog at the pace the
threads take requests (measured only while requests wait: while a thread is free the pace of takes is the
pace of arrivals), and the wait of the request taken last. Only /predict is refused here: a download or
/model waits for a thread, bounded by the connections alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tasks.logs import now_ms
from tasks.queues import CompletionRate, QueueSample, retry_after_s

# A request is refused when it would spend more than this share of its deadline waiting for a thread:
# the rest is for the queue, the worker and the answer.
QUEUE_WAIT_SHARE = 0.5
# Requests the backlog bound may refuse: the work that goes to the queue. The others (downloads, /model)
# wait for a thread without it: QUEUE_MAXSIZE and HTTP_BACKLOG_WAIT_MS are about queued predictions.
BOUNDED_PATHS = frozenset({"/predict"})

DeadlineOf = Callable[[Mapping[str, str], int], int]


class BacklogWait:
    """The backlog as the request threads see it: how many requests they have taken from it (its count over
    time is the threads' pace; /healthz and the probes, answered elsewhere, are not counted), and how long
    the last one had waited since it was queued: behind a backlog, a newcomer waits at least that long.

    Written by request threads, read by the I/O thread, without a lock: `last_ms` is one reference, and a
    lost increment of the count (a thread switch inside `+=`) is one request off a rate."""

    def __init__(self) -> None:
        self.last_ms = 0.0
        self.taken_count = 0

    def taken(self, waited_s: float) -> None:
        self.last_ms = waited_s * 1000
        self.taken_count += 1


class BacklogPolicy:
    """The backlog's bound: `arrived` for every request queued for a thread, `refuses` for each that may be
    refused, `retry_after_s` for the refusal's Retry-After."""

    def __init__(self, threads: int, *, max_waiting: int = 0, max_wait_ms: int = 0,
                 deadline_of: DeadlineOf | None = None) -> None:
        self.threads = threads
        self.max_waiting = max_waiting  # 0: no bound
        self.max_wait_ms = max_wait_ms
        self.deadline_of = deadline_of
        self.waited = BacklogWait()
        self.pace = CompletionRate()  # requests the threads take per second

    def arrived(self, waiting: int, now_s: float) -> None:
        """A request found `waiting` others queued for a thread (at monotonic time `now_s`)."""
        sample = QueueSample(waiting, self.waited.taken_count, now_s)
        if waiting:
            self.pace.observe(sample)
        else:  # a thread is free: the pace of takes is the pace of arrivals, not of the threads
            self.pace.restart(sample)

    def refuses(self, path: str, headers: Mapping[str, str], arrived_ms: int, waiting: int) -> bool:
        return bool(self.max_waiting) and path in BOUNDED_PATHS and (
            waiting >= self.max_waiting or self.too_late(headers, arrived_ms, waiting))

    def too_late(self, headers: Mapping[str, str], arrived_ms: int, waiting: int) -> bool:
        """Whether this request, counting the time it already spent unread in its socket and the wait for
        a thread (the backlog at the pace the threads take requests, or the last wait measured if longer),
        would wait longer than QUEUE_WAIT_SHARE of its deadline or HTTP_BACKLOG_WAIT_MS: refused now rather
        than run late (or answered 504 after the wait). A backlog longer than it takes to keep the threads
        busy adds waiting, not throughput; and when the I/O thread falls behind reading (the machine's CPU
        is saturated), refusing at once, at a tenth of the cost of serving, is what lets it catch up
        instead of falling further behind."""
        if self.deadline_of is None:
            return False
        unread_ms = max(0, now_ms() - arrived_ms)
        rate = self.pace.rate
        queued_ms = waiting / rate * 1000 if waiting >= self.threads and rate > 0 else 0.0
        if waiting:
            queued_ms = max(queued_ms, self.waited.last_ms)
        if not unread_ms and not queued_ms:
            return False
        try:
            budget_ms = self.deadline_of(headers, arrived_ms) - arrived_ms
        except Exception:  # noqa: BLE001 - a malformed deadline header: the view answers it 400
            return False
        if budget_ms <= 0:
            return False  # past its deadline already: the view answers it 504 deadline_exceeded
        limit_ms = budget_ms * QUEUE_WAIT_SHARE
        if self.max_wait_ms:
            limit_ms = min(limit_ms, self.max_wait_ms)
        return unread_ms + queued_ms > limit_ms

    def retry_after_s(self, waiting: int) -> int:
        """Retry-After for a refusal: the backlog beyond the bound over the threads' pace."""
        return retry_after_s(max(1, waiting - self.max_waiting + 1), self.pace.rate)
