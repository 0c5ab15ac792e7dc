"""`python -m bridge.lag [--group G] [--topic T ...] [--json]`: per partition, the group's committed offset,
the end offset and the lag between them.

Lag is end minus committed (a partition the group never committed counts from 0). Some Kafka-protocol
brokers (Tansu) report the base offset of the last batch as the end offset, so the lag reads low there;
it is never shown below 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from bridge.consumer import BOOTSTRAP_TIMEOUT_MS, admin_client
from bridge.errors import KafkaUnavailable
from settings import Settings, load_settings


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.committed or 0))


def group_lag(settings: Settings, group: str, topics: list[str]) -> list[PartitionLag]:
    admin = admin_client(settings)
    try:
        committed = admin.list_group_offsets(group).get(group, {})
        described = admin.describe_topics(topics)
    except KafkaError as error:
        raise KafkaUnavailable(f"{type(error).__name__}: {error}") from None
    finally:
        admin.close()
    partitions = sorted(TopicPartition(topic["name"], part["partition_index"])
                        for topic in described for part in topic.get("partitions", []))
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                             bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
    try:
        ends = consumer.end_offsets(partitions) if partitions else {}
    except KafkaError as error:
        raise KafkaUnavailable(f"{type(error).__name__}: {error}") from None
    finally:
        consumer.close()
    rows = []
    for tp in partitions:
        mark = committed.get(tp)
        offset = mark.offset if mark is not None and mark.offset >= 0 else None
        rows.append(PartitionLag(tp.topic, tp.partition, offset, int(ends.get(tp, 0))))
    return rows


def render(rows: list[PartitionLag], group: str) -> str:
    lines = [f"group {group}", f"{'TOPIC':<32} {'PARTITION':>9} {'COMMITTED':>10} {'END':>10} {'LAG':>8}"]
    for row in rows:
        committed = "-" if row.committed is None else str(row.committed)
        lines.append(f"{row.topic:<32} {row.partition:>9} {committed:>10} {row.end:>10} {row.lag:>8}")
    lines.append(f"{'total':<32} {'':>9} {'':>10} {'':>10} {sum(row.lag for row in rows):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Committed offset, end offset and lag of the bridge's group.")
    parser.add_argument("--group", help="consumer group (default: KAFKA_GROUP_ID)")
    parser.add_argument("--topic", action="append", help="topic (repeatable; default: KAFKA_TOPIC_CLAIMS)")
    parser.add_argument("--json", action="store_true", help="one JSON object per partition")
    args = parser.parse_args(argv)
    settings = load_settings()
    group = args.group or settings.kafka_group_id
    try:
        rows = group_lag(settings, group, args.topic or [settings.kafka_topic_claims])
    except KafkaUnavailable as error:
        print(f"Kafka at KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers} unreachable: {error}",
              file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(json.dumps({**asdict(row), "lag": row.lag}))
    else:
        print(render(rows, group))
    return 0


if __name__ == "__main__":
    sys.exit(main())
