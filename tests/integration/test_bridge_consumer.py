"""The bridge's consumer wrapper against the real Kafka-protocol broker: a partition paused in the middle
of a fetched batch, then resumed, delivers the rest of its records (kafka-python 3.0.12 would stall it)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaProducer, TopicPartition

from bridge.consumer import GroupConsumer
from devtools.services import Service
from settings import Settings

pytestmark = pytest.mark.integration

PER_PARTITION = 20


class Quiet(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    def on_partitions_assigned(self, assigned: Any) -> None:
        return None


def poll_until(consumer: GroupConsumer, done: Any, max_records: int, timeout_s: float = 20) -> list[Any]:
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while not done(records) and time.monotonic() < deadline:
        records.extend(consumer.poll(100, max_records))
    return records


def test_a_partition_paused_mid_batch_resumes(base_settings: Settings, kafka_service: Service) -> None:
    # Given two partitions of 20 records each, each written as one batch
    topic = f"pause-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_service.address)
    admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}}, wait_for_metadata=True)
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_service.address, linger_ms=50)
    for partition in (0, 1):
        for i in range(PER_PARTITION):
            producer.send(topic, value=f"{partition}-{i}".encode(), partition=partition)
    producer.flush()
    producer.close()
    settings = base_settings.model_copy(update={"kafka_bootstrap_servers": kafka_service.address,
                                                "kafka_group_id": f"g-{topic}"})
    consumer = GroupConsumer(settings, [topic], Quiet())
    try:
        # When the first few records of one partition are taken and that partition is paused
        first = poll_until(consumer, lambda got: bool(got), max_records=3)
        paused = TopicPartition(topic, first[0].partition)
        consumer.pause({paused})
        # And the other partition is drained while it is paused
        other = poll_until(consumer, lambda got: len(got) >= PER_PARTITION, max_records=3)
        assert {r.partition for r in other} == {1 - paused.partition}
        # Then, once resumed, the paused partition delivers the rest of its records
        consumer.resume({paused})
        rest = poll_until(consumer, lambda got: len(got) >= PER_PARTITION - len(first), max_records=3)
        assert [r.offset for r in first + rest] == list(range(PER_PARTITION))
    finally:
        consumer.close()
