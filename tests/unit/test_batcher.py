"""The micro-batcher with a recording sender: when batches go out, and how each item hears back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

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


def batcher(workers: Workers, size: int = 4, timeout_ms: int = 50, max_in_flight: int = 1) -> MicroBatcher:
    return MicroBatcher(workers.send, size=size, timeout_ms=timeout_ms, max_in_flight=max_in_flight).start()


def later(ms: int = 5000) -> int:
    return now_ms() + ms


def test_a_lone_request_is_sent_at_once_when_the_pipeline_is_idle(workers: Workers) -> None:
    subject = batcher(workers, timeout_ms=10_000)
    started = time.monotonic()
    future = subject.submit([1.0], later(), "a")
    workers.wait_batches(1)
    # Sent without waiting for its 10 s batch timeout (half of it is a margin any loaded machine keeps)
    assert time.monotonic() - started < 5.0
    workers.complete(0)
    assert future.result(timeout=1) == (0.0, "v1")
    subject.stop()


def test_requests_gather_while_a_batch_is_out_and_flush_at_the_size(workers: Workers) -> None:
    subject = batcher(workers, size=3, timeout_ms=10_000)
    first = subject.submit([1.0], later(), "first")
    workers.wait_batches(1)
    futures = [subject.submit([float(i)], later(), f"r{i}") for i in range(4)]
    workers.wait_batches(2)
    assert [item.id for item in workers.batches[1][1]] == ["r0", "r1", "r2"]  # full at 3
    assert subject.pending == 1
    workers.complete(0)
    workers.complete(1)
    assert first.result(timeout=1)[0] == 0.0
    assert [f.result(timeout=1)[0] for f in futures[:3]] == [0.0, 1.0, 2.0]
    workers.wait_batches(3)  # the pipeline freed: the last one goes
    subject.stop()


def test_a_partial_batch_goes_after_the_timeout(workers: Workers) -> None:
    subject = batcher(workers, size=100, timeout_ms=30)
    subject.submit([1.0], later(), "first")
    workers.wait_batches(1)
    started = time.monotonic()
    subject.submit([2.0], later(), "second")
    workers.wait_batches(2)
    # Held for its 30 ms timeout (less the timer's granularity), then sent without waiting for a full batch of
    # 100 that never comes; the upper bound is a margin for a loaded machine, not a speed goal
    assert 0.02 <= time.monotonic() - started < 5.0
    subject.stop()


def test_an_item_already_expired_at_flush_is_not_sent(workers: Workers) -> None:
    subject = batcher(workers, size=2, timeout_ms=10_000)
    subject.submit([0.0], later(), "busy")
    workers.wait_batches(1)
    expired_in_queue = expired_count("queue")
    expired = subject.submit([1.0], now_ms() - 1, "expired")
    alive = subject.submit([2.0], later(), "alive")
    workers.wait_batches(2)
    assert [item.id for item in workers.batches[1][1]] == ["alive"]
    with pytest.raises(DeadlineExceeded):
        expired.result(timeout=1)
    assert expired_count("queue") == expired_in_queue + 1  # dropped while queued in the API
    workers.complete(1)
    assert alive.result(timeout=1) == (0.0, "v1")
    subject.stop()


def test_each_item_gets_its_own_result_or_failure(workers: Workers) -> None:
    subject = batcher(workers, size=3, timeout_ms=10_000)
    subject.submit([0.0], later(), "busy")
    workers.wait_batches(1)
    ok, bad, late = (subject.submit([float(i)], later(), name) for i, name in enumerate(["ok", "bad", "late"]))
    workers.wait_batches(2)
    workers.complete(1, [{"prediction": 7.5},
                         {"error": {"code": "wrong_feature_count", "message": "3 values; expects 9"}},
                         {"expired": True}])
    assert ok.result(timeout=1) == (7.5, "v1")
    with pytest.raises(InvalidInput) as invalid:
        bad.result(timeout=1)
    assert invalid.value.code == "wrong_feature_count"
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=1)
    subject.stop()


def test_a_batch_revoked_in_the_queue_fails_every_item_with_the_deadline(workers: Workers) -> None:
    subject = batcher(workers, size=2)
    futures = [subject.submit([1.0], later(), "a")]
    workers.wait_batches(1)
    workers.complete(0, state=states.REVOKED)
    with pytest.raises(DeadlineExceeded):
        futures[0].result(timeout=1)
    subject.stop()


def test_a_batch_nobody_answers_is_given_up_after_its_last_deadline(workers: Workers) -> None:
    subject = batcher(workers)
    future = subject.submit([1.0], now_ms() + 100, "orphan")
    workers.wait_batches(1)
    deadline = time.monotonic() + 2
    while not workers.forgotten and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers.forgotten == ["t0"]
    with pytest.raises(DeadlineExceeded):
        future.result(timeout=1)
    subject.submit([2.0], later(), "next")  # and the pipeline is free again
    workers.wait_batches(2)
    subject.stop()
