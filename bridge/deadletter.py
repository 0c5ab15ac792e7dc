"""The dead-letter queue: a record that cannot be processed is republished to KAFKA_TOPIC_DLQ with its
original key, value (a null value stays null) and headers, plus headers `error` (the code) and
`error_message`; a record from a model topic also gets `source_topic`, the topic it came from. Its offset
counts as done only once the DLQ write is acknowledged: the acknowledgement comes back to the poll thread
through `events`, like a result.

Records other clients wrote may be ones kafka-python's producer refuses: a header with a null value (it
takes (str, bytes) pairs only) is written with an empty value; a record with neither key nor value (a
tombstone) goes through the key serializer, which send() does not check, and keeps its null key. A record
that is too large to republish with the added headers (it was just under the size limit) is written
without its value and its original headers (and without its key, if that alone is over KEY_KEPT_BYTES),
with headers `value_dropped` (the value's size in bytes) and `headers_dropped` (how many there were).

A write that fails (the broker away, or refused) is reported to the poll thread like an acknowledgement,
with the error, and written again at `resend_due` after RETRY_WAIT_S: `send` never raises, so no record
can stop the poll loop from here.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.serializer import Serializer

from bridge.consumer import make_producer
from bridge.dispatch import Record
from settings import Settings

MESSAGE_MAX_BYTES = 500
ADDED = ("error", "error_message", "source_topic", "value_dropped", "headers_dropped")  # replaced if the original has them
KEY_KEPT_BYTES = 64 * 1024
RETRY_WAIT_S = 1.0
# How long send() may block waiting for the DLQ topic's metadata or buffer space, in the poll thread:
# short, so a broker outage costs a retry later, not a stalled loop (kafka-python's default is 60 s).
MAX_BLOCK_MS = 2000


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
    return make_producer(settings, key_serializer=_NullKey(), max_block_ms=MAX_BLOCK_MS)


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


def _without_payload(record: Record, key: Any, code: str, message: str, source: str | None) -> dict[str, Any]:
    """The DLQ record for one too large to republish whole: its key (if small) and the added headers only."""
    headers = [*dlq_headers(Record(record.topic, record.partition, record.offset, None, None, []), code, message, source),
               ("value_dropped", str(len(record.value or b"")).encode()),
               ("headers_dropped", str(len(record.headers)).encode())]
    small_key = key if key is NULL_KEY or len(key) <= KEY_KEPT_BYTES else NULL_KEY
    return {"key": small_key, "value": None, "headers": headers}


class DeadLetters:
    def __init__(self, producer: KafkaProducer, topic: str, events: queue.SimpleQueue[Any], claims_topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.events = events
        self.claims_topic = claims_topic
        self._due: list[tuple[float, Record, str, str]] = []  # (when, record, code, message): writes to retry

    def send(self, record: Record, code: str, message: str) -> None:
        """Write `record` to the DLQ; its outcome comes back through `events` as a `DeadLettered`."""
        source = None if record.topic == self.claims_topic else record.topic
        key = NULL_KEY if record.key is None else record.key
        headers = dlq_headers(record, code, message, source)
        try:
            try:
                future = self.producer.send(self.topic, key=key, value=record.value, headers=headers)
            except MessageSizeTooLargeError:
                future = self.producer.send(self.topic, **_without_payload(record, key, code, message, source))
        except (KafkaError, ValueError, TypeError) as error:  # refused before it was sent: report it like a failed write
            self.events.put(DeadLettered(record, code, message, type(error).__name__))
            return
        future.add_callback(lambda _: self.events.put(DeadLettered(record, code, message, None)))
        future.add_errback(lambda exc: self.events.put(DeadLettered(record, code, message, type(exc).__name__)))

    def retry_later(self, record: Record, code: str, message: str) -> None:
        self._due.append((time.monotonic() + RETRY_WAIT_S, record, code, message))

    def resend_due(self) -> None:
        """Write again the records whose retry time has come."""
        if not self._due:
            return
        now = time.monotonic()
        due = [entry for entry in self._due if entry[0] <= now]
        self._due = [entry for entry in self._due if entry[0] > now]
        for _, record, code, message in due:
            self.send(record, code, message)

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaError:
            pass  # the broker is away: what was not written is read again from the last commit
        finally:
            self.producer.close(timeout=timeout_s)
