"""Lag per partition: the group's committed offset, the end offset and the lag between them.

`python -m bridge.lag [--group G] [--topic T ...] [--json]` prints them for the operator; `LagMonitor` exports
them as metrics for the partitions a running bridge owns (bridge_committed_offset, bridge_end_offset,
bridge_consumer_lag), read every LAG_INTERVAL_S by a thread of its own over its own Kafka clients: the poll
loop never waits on these requests, and the bridge's group consumer stays the poll thread's alone.

Lag is end minus committed (a partition the group never committed counts from 0). Some Kafka-protocol
brokers (Tansu) report the base offset of the last batch as the end offset, so the lag reads low there;
it is never shown below 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from kafka import KafkaConsumer, TopicPartition

from bridge.consumer import BOOTSTRAP_TIMEOUT_MS, admin_client, translated
from bridge.errors import BridgeError, KafkaUnavailable
from settings import Settings, load_settings
from tasks import metrics

log = logging.getLogger(__name__)

# One OffsetFetch and one ListOffsets per leader each second: cheap for the broker, and fresher than
# Prometheus scrapes. A read waits at most END_OFFSETS_TIMEOUT_MS, on the monitor's thread only.
LAG_INTERVAL_S = 1.0
END_OFFSETS_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.committed or 0))


class LagReader:
    """The group's committed offsets (admin client) and the partitions' end offsets (a consumer outside
    any group), raising KafkaUnavailable for every Kafka error."""

    def __init__(self, settings: Settings) -> None:
        self.admin = admin_client(settings)
        try:
            with translated("lag consumer"):
                self.consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
                                              bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
        except KafkaUnavailable:
            self.admin.close()
            raise

    def partitions(self, topics: list[str]) -> list[TopicPartition]:
        with translated("describe topics"):
            described = self.admin.describe_topics(topics)
        return sorted(TopicPartition(topic["name"], part["partition_index"])
                      for topic in described for part in topic.get("partitions", []))

    def read(self, group: str, partitions: Iterable[TopicPartition]) -> list[PartitionLag]:
        chosen = sorted(partitions)
        with translated("lag"):
            committed = self.admin.list_group_offsets(group).get(group, {})
            ends = self.consumer.end_offsets(chosen, timeout_ms=END_OFFSETS_TIMEOUT_MS) if chosen else {}
        rows = []
        for tp in chosen:
            mark = committed.get(tp)
            offset = mark.offset if mark is not None and mark.offset >= 0 else None
            rows.append(PartitionLag(tp.topic, tp.partition, offset, int(ends.get(tp) or 0)))
        return rows

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()


def group_lag(settings: Settings, group: str, topics: list[str]) -> list[PartitionLag]:
    reader = LagReader(settings)
    try:
        return reader.read(group, reader.partitions(topics))
    finally:
        reader.close()


class LagMonitor:
    """Committed offset, end offset and lag of the partitions the bridge owns, as gauges. The poll thread
    tells it the assignment (`watch`); the monitor alone writes these series, and removes a partition's
    as soon as it is revoked, so that the bridge that owns it now is the only one reporting it."""

    def __init__(self, settings: Settings, interval_s: float = LAG_INTERVAL_S) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.partitions: frozenset[TopicPartition] = frozenset()
        self._shown: set[TopicPartition] = set()
        self._reader: LagReader | None = None
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-monitor", daemon=True)

    def watch(self, partitions: Iterable[TopicPartition]) -> None:
        self.partitions = frozenset(partitions)

    def start(self) -> LagMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(END_OFFSETS_TIMEOUT_MS / 1000 + 1)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.sample()
                except Exception:  # noqa: BLE001 - a metrics thread must outlive a surprise; say so and go on
                    log.exception("lag sample failed", extra={"event": "lag_unavailable"})
                self._stop.wait(self.interval_s)
        finally:
            if self._reader is not None:
                self._reader.close()

    def sample(self) -> None:
        partitions = self.partitions
        self._forget(self._shown - partitions)
        if not partitions:
            return
        try:
            if self._reader is None:
                self._reader = LagReader(self.settings)
            rows = self._reader.read(self.settings.kafka_group_id, partitions)
        except BridgeError as error:  # Kafka unreachable, or the group coordinator busy: try next time
            if not self._failing:
                log.warning("lag not read: %s", error, extra={"event": "lag_unavailable"})
            self._failing = True
            return
        self._failing = False
        for row in rows:
            labels = (row.topic, str(row.partition))
            metrics.BRIDGE_COMMITTED.labels(*labels).set(row.committed or 0)
            metrics.BRIDGE_END_OFFSET.labels(*labels).set(row.end)
            metrics.BRIDGE_LAG.labels(*labels).set(row.lag)
            self._shown.add(TopicPartition(row.topic, row.partition))
        self._forget(self._shown - self.partitions)  # revoked while it was reading

    def _forget(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            for gauge in (metrics.BRIDGE_COMMITTED, metrics.BRIDGE_END_OFFSET, metrics.BRIDGE_LAG):
                try:
                    gauge.remove(tp.topic, str(tp.partition))
                except KeyError:
                    pass
            self._shown.discard(tp)


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
