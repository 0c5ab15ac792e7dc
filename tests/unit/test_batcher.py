"""The micro-batcher with a recording sender: when batches go out, and how each item hears back. Waits run
in threads of their own, as request threads do."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from celery import states

from tasks import metrics
from tasks.errors import DeadlineExceeded, InvalidInput
from tasks.logs import now_ms
from tasks.results import Outcome
from webapp.batcher import Item, MicroBatcher, Sent


class Workers:
    """Records batches; the test decides when and how each one completes."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[Item], Future[Outcome]]] = []
        self.forgotten: list[str] = []
        self.sent = threading.Event()

    def send(self, items: list[Item]) -> Sent:
        task_id = f"t{len(self.batches)}"
        outcome: Future[Outcome] = Future()
        self.batches.append((task_id, items, outcome))
        self.sent.set()
        return Sent(task_id, outcome, lambda: self.forgotten.append(task_id))

    def complete(self, index: int, results: list[dict[str, object]] | None = None, state: str = states.SUCCESS) -> None:
        task_id, items, outcome = self.batches[index]
        results = results or [{"prediction": float(i)} for i in range(len(items))]
        outcome.set_result(Outcome(task_id, state, {"model_version": "v1", "results": results}))

    def wait_batches(self, count: int, timeout_s: float = 2) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.batches) < count and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(self.batches) >= count, f"{len(self.batches)} batches sent, expected {count}"


@pytest.fixture
def workers() -> Workers:
    return Workers()


def expired_count(stage: str) -> float:
    return metrics.registry(metrics.API).get_sample_value("inference_expired_total", {"stage": stage}) or 0.0


def batcher(size: int = 4, timeout_ms: int = 50, workers: Workers | None = None) -> MicroBatcher:
    assert workers is not None
    return MicroBatcher(workers.send, size=size, timeout_ms=timeout_ms)


def later(ms: int = 5000) -> int:
    return now_ms() + ms


@pytest.fixture
def waiting() -> Iterator[Callable[[MicroBatcher, Item], Future[tuple[float, str]]]]:
    """Wait for an item in a thread of its own, as its request thread would."""
    pool = ThreadPoolExecutor(16)
    yield lambda subject, item: pool.submit(subject.wait, item)
    pool.shutdown(wait=False, cancel_futures=True)


Waiting = Callable[[MicroBatcher, Item], "Future[tuple[float, str]]"]


def test_a_lone_request_is_sent_at_once(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(timeout_ms=10_000, workers=workers)
    started = time.monotonic()
    answer = waiting(subject, subject.submit([1.0], later(), "a"))
    workers.wait_batches(1)
    # Sent without waiting for its 10 s batch timeout (half of it is a margin any loaded machine keeps)
    assert time.monotonic() - started < 5.0
    workers.complete(0)
    assert answer.result(timeout=2) == (0.0, "v1")


def test_requests_close_together_gather_and_flush_at_the_size(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(size=3, timeout_ms=10_000, workers=workers)
    first = waiting(subject, subject.submit([1.0], later(), "first"))
    workers.wait_batches(1)
    # Given requests arriving right after one another (within the batch timeout), while a batch is out
    answers = [waiting(subject, subject.submit([float(i)], later(), f"r{i}")) for i in range(4)]
    workers.wait_batches(2)
    assert [item.id for item in workers.batches[1][1]] == ["r0", "r1", "r2"]  # full at 3
    assert subject.pending == 1
    workers.complete(0)
    workers.complete(1)
    assert first.result(timeout=2)[0] == 0.0
    assert [a.result(timeout=2)[0] for a in answers[:3]] == [0.0, 1.0, 2.0]


def test_one_client_at_a_time_is_never_held(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(size=10, timeout_ms=10_000, workers=workers)
    # Given requests one after the other, each sent when the previous one has its answer
    for index in range(3):
        answer = waiting(subject, subject.submit([float(index)], later(), f"r{index}"))
        # Then each goes at once (nobody else is inside the API to share a batch with), long before its 10 s timeout
        workers.wait_batches(index + 1, timeout_s=5)
        workers.complete(index)
        assert answer.result(timeout=5) == (0.0, "v1")


def test_a_request_arriving_while_another_is_inside_waits_for_company(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(size=2, timeout_ms=10_000, workers=workers)
    waiting(subject, subject.submit([1.0], later(), "first"))
    workers.wait_batches(1)
    # When another arrives while the first still waits for its answer
    waiting(subject, subject.submit([2.0], later(), "a"))
    assert len(workers.batches) == 1  # held: others may follow
    waiting(subject, subject.submit([3.0], later(), "b"))
    workers.wait_batches(2)
    assert [item.id for item in workers.batches[1][1]] == ["a", "b"]


def test_a_partial_batch_goes_after_the_timeout(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(size=100, timeout_ms=30, workers=workers)
    waiting(subject, subject.submit([1.0], later(), "first"))
    workers.wait_batches(1)
    started = time.monotonic()
    waiting(subject, subject.submit([2.0], later(), "second"))
    workers.wait_batches(2)
    # Held for its 30 ms timeout (less the timer's granularity), then sent by its own request's wait without
    # a full batch of 100 that never comes; the upper bound is a margin for a loaded machine, not a speed goal
    assert 0.02 <= time.monotonic() - started < 5.0


def test_an_item_already_expired_at_flush_is_not_sent(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(size=2, timeout_ms=10_000, workers=workers)
    waiting(subject, subject.submit([0.0], later(), "busy"))
    workers.wait_batches(1)
    expired_in_queue = expired_count("queue")
    expired_item = subject.submit([1.0], now_ms() - 1, "expired")
    alive_item = subject.submit([2.0], later(), "alive")  # the batch is full: it goes
    expired, alive = waiting(subject, expired_item), waiting(subject, alive_item)
    workers.wait_batches(2)
    assert [item.id for item in workers.batches[1][1]] == ["alive"]
    with pytest.raises(DeadlineExceeded):
        expired.result(timeout=2)
    assert expired_count("queue") == expired_in_queue + 1  # dropped while queued in the API
    workers.complete(1)
    assert alive.result(timeout=2) == (0.0, "v1")


def test_each_item_gets_its_own_result_or_failure(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(size=3, timeout_ms=10_000, workers=workers)
    waiting(subject, subject.submit([0.0], later(), "busy"))
    workers.wait_batches(1)
    ok, bad, late = (waiting(subject, subject.submit([float(i)], later(), name)) for i, name in enumerate(["ok", "bad", "late"]))
    workers.wait_batches(2)
    workers.complete(1, [{"prediction": 7.5},
                         {"error": {"code": "wrong_feature_count", "message": "3 values; expects 9"}},
                         {"expired": True}])
    assert ok.result(timeout=2) == (7.5, "v1")
    with pytest.raises(InvalidInput) as invalid:
        bad.result(timeout=2)
    assert invalid.value.code == "wrong_feature_count"
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=2)


def test_a_batch_revoked_in_the_queue_fails_every_item_with_the_deadline(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(size=2, workers=workers)
    answer = waiting(subject, subject.submit([1.0], later(), "a"))
    workers.wait_batches(1)
    workers.complete(0, state=states.REVOKED)
    with pytest.raises(DeadlineExceeded):
        answer.result(timeout=2)


def test_an_item_whose_deadline_passes_in_the_open_batch_leaves_it(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(size=10, timeout_ms=10_000, workers=workers)
    waiting(subject, subject.submit([0.0], later(), "busy"))
    workers.wait_batches(1)
    expired_in_queue = expired_count("queue")
    # Given a request whose deadline comes before its batch's timeout
    answer = waiting(subject, subject.submit([1.0], now_ms() + 50, "short"))
    # Then it hears of its deadline, leaves the open batch, and is never sent
    with pytest.raises(DeadlineExceeded):
        answer.result(timeout=5)
    assert subject.pending == 0 and len(workers.batches) == 1
    assert expired_count("queue") == expired_in_queue + 1


def test_a_batch_nobody_answers_is_given_up_after_its_last_deadline(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(workers=workers)
    answer = waiting(subject, subject.submit([1.0], now_ms() + 100, "orphan"))
    workers.wait_batches(1)
    # Then its request hears of its deadline, and the batch is no longer awaited
    with pytest.raises(DeadlineExceeded):
        answer.result(timeout=5)
    assert workers.forgotten == ["t0"]


def test_a_batch_goes_when_arrivals_pause_before_its_timeout(workers: Workers, waiting: Waiting) -> None:
    subject = batcher(size=1000, timeout_ms=10_000, workers=workers)
    waiting(subject, subject.submit([0.0], later(), "busy"))
    workers.wait_batches(1)
    # Given a burst of rows arriving back to back (as from clients each waiting for its answer), then none
    started = time.monotonic()
    for i in range(100):
        waiting(subject, subject.submit([float(i)], later(), f"r{i}"))
    # Then the batch goes once arrivals have paused, long before its 10 s timeout (half of it is the margin a
    # loaded machine keeps), whole
    workers.wait_batches(2, timeout_s=6)
    assert time.monotonic() - started < 5.0
    assert len(workers.batches[1][1]) == 100
