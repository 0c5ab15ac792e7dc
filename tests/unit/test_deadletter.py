"""The DLQ writer never raises into the poll loop: a write refused before it is sent comes back as a failed
write and is retried later; a record too large to republish with the added headers is written without its
value. The producer is a stand-in: what is checked is what the writer asks of it and reports."""

from __future__ import annotations

import queue
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

import bridge.deadletter
from bridge.deadletter import DeadLettered, DeadLetters
from bridge.dispatch import Record


class Future:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def add_errback(self, _errback: Any) -> None:
        pass


class Producer:
    """Raises the queued errors at send(), one per call, then accepts."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, **kwargs: Any) -> Future:
        self.sent.append({"topic": topic, **kwargs})
        if self.errors:
            raise self.errors.pop(0)
        return Future()


RECORD = Record("inference-data", 0, 7, b"key", b"x" * 100, [("trace", b"t1")])


def writer(producer: Producer) -> tuple[DeadLetters, queue.SimpleQueue[Any]]:
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    return DeadLetters(producer, "inference-data.dlq", events, "inference-data"), events  # type: ignore[arg-type]


def test_a_write_refused_before_it_is_sent_is_reported_then_retried_later(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a broker whose metadata cannot be had (send() raises at once)
    producer = Producer(KafkaTimeoutError("no metadata"))
    dead_letters, events = writer(producer)
    # When a record is dead-lettered
    dead_letters.send(RECORD, "invalid_json", "not JSON")
    # Then nothing is raised, the failure comes back as an event, and nothing is written again at once
    assert events.get_nowait() == DeadLettered(RECORD, "invalid_json", "not JSON", "KafkaTimeoutError")
    dead_letters.retry_later(RECORD, "invalid_json", "not JSON")
    dead_letters.resend_due()
    assert len(producer.sent) == 1
    # And once the retry time has come, it is written again
    now = bridge.deadletter.time.monotonic()
    monkeypatch.setattr(bridge.deadletter.time, "monotonic", lambda: now + bridge.deadletter.RETRY_WAIT_S + 1)
    dead_letters.resend_due()
    assert len(producer.sent) == 2 and producer.sent[1]["value"] == RECORD.value
    assert events.empty()  # its acknowledgement comes from the broker


def test_a_record_too_large_to_republish_is_written_without_its_value_and_headers() -> None:
    # Given a producer that refuses the record with the DLQ headers added as too large
    producer = Producer(MessageSizeTooLargeError("too large"))
    dead_letters, events = writer(producer)
    # When it is dead-lettered
    dead_letters.send(RECORD, "invalid_json", "not JSON")
    # Then it is written again with its key, no value and only the DLQ's headers, saying what was dropped
    assert len(producer.sent) == 2 and events.empty()
    again = producer.sent[1]
    assert again["value"] is None and again["key"] == b"key"
    headers = dict(again["headers"])
    assert headers == {"error": b"invalid_json", "error_message": b"not JSON", "value_dropped": b"100", "headers_dropped": b"1"}


def test_a_record_refused_even_without_its_value_is_a_failed_write_not_an_exception() -> None:
    producer = Producer(MessageSizeTooLargeError("too large"), MessageSizeTooLargeError("still too large"))
    dead_letters, events = writer(producer)
    dead_letters.send(RECORD, "invalid_json", "not JSON")
    assert events.get_nowait().error == "MessageSizeTooLargeError"
