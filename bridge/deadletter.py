"""The dead-letter queue: a record that cannot be processed is republished to KAFKA_TOPIC_DLQ with its
original key, value (a null value stays null) and headers, plus headers `error` (the code) and
`error_message`. Its offset counts as done only once the DLQ write is acknowledged: the acknowledgement
comes back to the poll thread through `events`, like a result."""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer

from bridge.dispatch import Record

MESSAGE_MAX_BYTES = 500


@dataclass(frozen=True)
class DeadLettered:
    record: Record
    code: str
    message: str
    error: str | None  # None when the DLQ acknowledged the write


def dlq_headers(record: Record, code: str, message: str) -> list[tuple[str, bytes]]:
    original = [(key.decode() if isinstance(key, bytes) else key, value) for key, value in record.headers
                if (key.decode(errors="replace") if isinstance(key, bytes) else key) not in {"error", "error_message"}]
    return [*original, ("error", code.encode()), ("error_message", message.encode()[:MESSAGE_MAX_BYTES])]


class DeadLetters:
    def __init__(self, producer: KafkaProducer, topic: str, events: queue.SimpleQueue[Any]) -> None:
        self.producer = producer
        self.topic = topic
        self.events = events

    def send(self, record: Record, code: str, message: str) -> None:
        future = self.producer.send(self.topic, key=record.key, value=record.value,
                                    headers=dlq_headers(record, code, message))
        future.add_callback(lambda _: self.events.put(DeadLettered(record, code, message, None)))
        future.add_errback(lambda exc: self.events.put(DeadLettered(record, code, message, type(exc).__name__)))

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self.producer.flush(timeout=timeout_s)
        finally:
            self.producer.close(timeout=timeout_s)
