"""The dead-letter queue: a record that cannot be processed is republished to KAFKA_TOPIC_DLQ with its
original key, value (a null value stays null) and headers, plus headers `error` (the code) and
`error_message`; a record from a model topic also gets `source_topic`, the topic it came from. Its offset
counts as done only once the DLQ write is acknowledged: the acknowledgement comes back to the poll thread
through `events`, like a result.

Records other clients wrote may be ones kafka-python's producer refuses: a header with a null value (it
takes (str, bytes) pairs only) is written with an empty value; a record with neither key nor value (a
tombstone) goes through the key serializer, which send() does not check, and keeps its null key.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.serializer import Serializer

from bridge.consumer import make_producer
from bridge.dispatch import Record
from settings import Settings

MESSAGE_MAX_BYTES = 500
ADDED = ("error", "error_message", "source_topic")  # headers of these names in the original are replaced


@dataclass(frozen=True)
class DeadLettered:
    record: Record
    code: str
    message: str
    error: str | None  # None when the DLQ acknowledged the write


class _NullKey(Serializer):
    """Keys as they are, and NULL_KEY as a null one."""

    def serialize(self, topic: str, headers: list[tuple[str, bytes]], data: Any) -> bytes | None:
        return None if data is NULL_KEY else data


NULL_KEY = object()


def dlq_producer(settings: Settings) -> KafkaProducer:
    return make_producer(settings, key_serializer=_NullKey())


def _header(key: object, value: object) -> tuple[str, bytes] | None:
    """An original header as the producer takes it; None for what is no header at all."""
    if isinstance(key, bytes | bytearray | memoryview):
        key = bytes(key).decode("utf-8", "replace")
    if not isinstance(key, str):
        return None
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if not isinstance(value, bytes | bytearray | memoryview | None):
        return None
    return key.encode("utf-8", "replace").decode("utf-8"), bytes(value or b"")


def dlq_headers(record: Record, code: str, message: str, source_topic: str | None = None) -> list[tuple[str, bytes]]:
    original = [header for entry in record.headers if isinstance(entry, tuple | list) and len(entry) == 2
                and (header := _header(*entry)) is not None and header[0] not in ADDED]
    added = [("error", code.encode()), ("error_message", message.encode("utf-8", "replace")[:MESSAGE_MAX_BYTES])]
    if source_topic is not None:
        added.append(("source_topic", source_topic.encode("utf-8", "replace")))
    return [*original, *added]


class DeadLetters:
    def __init__(self, producer: KafkaProducer, topic: str, events: queue.SimpleQueue[Any], claims_topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.events = events
        self.claims_topic = claims_topic

    def send(self, record: Record, code: str, message: str) -> None:
        source = None if record.topic == self.claims_topic else record.topic
        key = NULL_KEY if record.key is None else record.key
        future = self.producer.send(self.topic, key=key, value=record.value,
                                    headers=dlq_headers(record, code, message, source))
        future.add_callback(lambda _: self.events.put(DeadLettered(record, code, message, None)))
        future.add_errback(lambda exc: self.events.put(DeadLettered(record, code, message, type(exc).__name__)))

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self.producer.flush(timeout=timeout_s)
        finally:
            self.producer.close(timeout=timeout_s)
