"""kafka-python, wrapped: the group consumer, producers and topic set-up, raising our errors only.

kafka-python consumers are not thread-safe: one `GroupConsumer` belongs to the poll thread. Its
rebalance listener runs on kafka-python's IO thread and may only do non-blocking work (commit_async).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kafka
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.record.default_records import DefaultRecordBatch
from kafka.structs import OffsetAndMetadata

from bridge.errors import CommitFailed, KafkaUnavailable
from settings import Settings
from tasks.logs import log_event

log = logging.getLogger(__name__)

# Group membership: a member that stops heartbeating for SESSION_TIMEOUT_MS is evicted and its
# partitions move to the others. 6 s notices a dead bridge quickly without evicting one that is busy for
# a moment (heartbeats run on kafka-python's IO thread, not in the poll loop); a new member also waits
# about this long for its first assignment on some brokers (Tansu). Heartbeats at 1/6 of it.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
# Longest wait for the first broker connection of any client; start-up waits STARTUP_TIMEOUT_S around it.
BOOTSTRAP_TIMEOUT_MS = 5000
REQUEST_TIMEOUT_MS = 10000
# At most this much per partition per fetch (kafka-python's default is 1 MiB, ~8,000 claims): poll() hands
# out one partition's fetched records before the next one's, so with the default a backlog drained one
# partition after another (perf kafka-burst lag plot: partition 0 untouched for 80 s) while the in-flight
# bound held the rest. 64 KiB (~500 claims) lets every partition move in each round of fetches.
PARTITION_FETCH_BYTES = 64 * 1024
COMMIT_TIMEOUT_MS = 5000


class _LenientText(bytearray):
    """A slice of a record batch whose `decode` replaces what is not UTF-8 (U+FFFD) instead of raising."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytearray.decode(self, encoding, "replace")


class _LenientBatch(bytearray):
    """A record batch's bytes whose slices are `_LenientText`."""

    def __getitem__(self, index: Any) -> Any:
        item = bytearray.__getitem__(self, index)
        return _LenientText(item) if isinstance(index, slice) else item


def read_header_keys_leniently() -> bool:
    """Make kafka-python read a record's header keys as Kafka's Java client does: bytes that are not UTF-8
    become U+FFFD. kafka-python 3.0.12 decodes them strictly, inside the fetcher: one record with such a key
    (other clients can write one) raises UnicodeDecodeError out of every poll() at that offset, and the
    partition stalls for good. Its record batch keeps its bytes in the `_buffer` slot (the header key is a
    slice of it that is decoded); the slot is wrapped so that every buffer put there reads leniently.
    Applied once, on kafka-python 3.0.x only; elsewhere it is left alone and says so (False)."""
    slot = DefaultRecordBatch.__dict__.get("_buffer")
    if isinstance(slot, property):
        return True  # already applied
    if not kafka.__version__.startswith("3.0.") or type(slot).__name__ != "member_descriptor":
        return False

    def put(batch: DefaultRecordBatch, value: Any) -> None:
        slot.__set__(batch, value if isinstance(value, _LenientBatch) else _LenientBatch(value))

    DefaultRecordBatch._buffer = property(slot.__get__, put)  # type: ignore[attr-defined]
    return True


@contextmanager
def translated(what: str) -> Iterator[None]:
    try:
        yield
    except (CommitFailedError, RebalanceInProgressError) as error:
        raise CommitFailed(f"{what}: {type(error).__name__}") from None
    except KafkaError as error:
        raise KafkaUnavailable(f"{what}: {type(error).__name__}: {error}") from None


def admin_client(settings: Settings) -> KafkaAdminClient:
    with translated(f"Kafka at {settings.kafka_bootstrap_servers}"):
        return KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="bridge-admin",
                                bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS, request_timeout_ms=REQUEST_TIMEOUT_MS)


def ensure_topics(settings: Settings, admin: KafkaAdminClient) -> list[str]:
    """Create the bridge's topics that are missing; returns the names created.

    Claims and the DLQ get KAFKA_TOPIC_PARTITIONS partitions. Model topics get one: promotions must be
    applied in the order they were published, and they are few."""
    wanted = {
        settings.kafka_topic_claims: settings.kafka_topic_partitions,
        settings.kafka_topic_dlq: settings.kafka_topic_partitions,
        settings.kafka_topic_model_selected: 1,
        settings.kafka_topic_model_training: 1,
    }
    with translated("create topics"):
        existing = set(admin.list_topics())
        missing = {name: {"num_partitions": partitions, "replication_factor": settings.kafka_replication_factor}
                   for name, partitions in wanted.items() if name not in existing}
        if missing:
            # raise_errors=False: another bridge may create the same topic at the same moment.
            admin.create_topics(missing, raise_errors=False, wait_for_metadata=True)
    if missing:
        log_event(log, "topics_created", topics=sorted(missing))
    return sorted(missing)


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "linger_ms": 5,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        "request_timeout_ms": REQUEST_TIMEOUT_MS,
        **overrides,
    }
    with translated("producer"):
        return KafkaProducer(**config)


class GroupConsumer:
    """The bridge's member of KAFKA_GROUP_ID: subscribe, poll, pause, resume, seek and commit."""

    def __init__(self, settings: Settings, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        self.manual_commit = settings.use_manual_commit
        if not read_header_keys_leniently():
            log.warning("kafka-python %s: header keys that are not UTF-8 are not handled; one such record stalls "
                        "its partition", kafka.__version__, extra={"event": "kafka_client_unpatched"})
        with translated("consumer"):
            self.consumer = KafkaConsumer(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                group_id=settings.kafka_group_id,
                client_id=f"bridge-{settings.kafka_group_id}",
                auto_offset_reset="earliest",  # a new group starts from the beginning (docs/interface.md)
                enable_auto_commit=not settings.use_manual_commit,
                max_poll_records=settings.max_poll_records,
                fetch_max_wait_ms=settings.fetch_max_wait_ms,
                session_timeout_ms=SESSION_TIMEOUT_MS,
                heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                request_timeout_ms=max(REQUEST_TIMEOUT_MS, settings.fetch_max_wait_ms + 1000),
                max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
            )
            self.consumer.subscribe(topics, listener=listener)

    def poll(self, timeout_ms: int, max_records: int) -> list[ConsumerRecord]:
        self._release_parked()
        with translated("poll"):
            batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max(1, max_records))
        return [record for records in batches.values() for record in records]

    def _release_parked(self) -> None:
        """Work around kafka-python 3.0.12's fetcher (its port of KAFKA-7548): records already fetched for a
        partition that is then paused are parked, and put back only while the fetcher's in-line slot is None;
        but a drained slot is left in place, not None, so after a resume (or a reassignment) that partition is
        never fetched again and its claims stall. A drained slot holds nothing, so clearing it changes nothing
        else. Guarded: a kafka-python without these internals is left alone."""
        fetcher = getattr(self.consumer, "_fetcher", None)
        slot = getattr(fetcher, "_next_partition_records", None)
        if slot is not None and not slot and getattr(fetcher, "_paused_partition_records", None):
            fetcher._next_partition_records = None  # type: ignore[union-attr]

    def forget_fetched(self, partitions: set[TopicPartition]) -> None:
        """Drop what kafka-python's fetcher parked for these partitions while they were paused (KAFKA-7548
        port): after a revoke or a new assignment their position comes from the committed offset again,
        and a parked batch from before keeps the partition out of every fetch until it is put back, which
        the fetcher does only when its in-line slot is free and nothing is paused at that moment (seen: a
        partition taken over mid-pause never fetched again). Dropped records are fetched again from the
        position. Guarded like `_release_parked`."""
        fetcher = getattr(self.consumer, "_fetcher", None)
        parked = getattr(fetcher, "_paused_partition_records", None)
        completions = getattr(fetcher, "_paused_completed_fetches", None)
        for tp in partitions:
            if isinstance(parked, dict) and (records := parked.pop(tp, None)) is not None:
                records.drain()
            if isinstance(completions, dict):
                completions.pop(tp, None)

    def assignment(self) -> set[TopicPartition]:
        return set(self.consumer.assignment())

    def pause(self, partitions: set[TopicPartition]) -> None:
        if partitions:
            self.consumer.pause(*partitions)

    def resume(self, partitions: set[TopicPartition]) -> None:
        if partitions:
            self.consumer.resume(*partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        with translated("seek"):
            self.consumer.seek(partition, offset)

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Blocking commit, from the poll thread only."""
        if offsets and self.manual_commit:
            with translated("commit"):
                self.consumer.commit(_with_metadata(offsets), timeout_ms=COMMIT_TIMEOUT_MS)

    def commit_async(self, offsets: dict[TopicPartition, int], callback: Any = None) -> None:
        """Non-blocking commit: the only kind allowed in a rebalance callback (kafka-python 3.x)."""
        if offsets and self.manual_commit:
            with translated("commit"):
                self.consumer.commit_async(_with_metadata(offsets), callback=callback)

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=not self.manual_commit, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as error:
            log.warning("consumer close: %s", type(error).__name__, extra={"event": "consumer_close_failed"})


def _with_metadata(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    # OffsetAndMetadata(offset, metadata, leader_epoch): kafka-python 3.x wants all three.
    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
