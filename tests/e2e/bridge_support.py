"""Helpers for the bridge's end-to-end tests: topics, publishing, committed offsets, result objects,
an in-flight sampler over the bridge's /metrics, and the bridge process itself."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.serializer import Serializer

from devtools.processes import PYTHON, ManagedProcess
from devtools.services import free_port
from settings import Settings
from tasks.storage import ObjectStore

PARTITIONS = 4
_IN_FLIGHT = re.compile(r"^bridge_claims_in_flight (\S+)$", re.MULTILINE)


def bridge_env(env: dict[str, str], kafka: str, *, maxsize: int, **extra: str) -> dict[str, str]:
    """A bridge environment with its own topics and group: tests never see each other's records."""
    name = f"claims-{uuid.uuid4().hex[:8]}"
    return {**env, "KAFKA_BOOTSTRAP_SERVERS": kafka, "KAFKA_TOPIC_CLAIMS": name, "KAFKA_TOPIC_DLQ": f"{name}.dlq",
            "KAFKA_TOPIC_MODEL_SELECTED": f"{name}.model-selected", "KAFKA_TOPIC_MODEL_TRAINING": f"{name}.training",
            "KAFKA_GROUP_ID": f"group-{name}", "KAFKA_TOPIC_PARTITIONS": str(PARTITIONS),
            "QUEUE_MAXSIZE": str(maxsize), "BRIDGE_METRICS_PORT": str(free_port()), "DRAIN_TIMEOUT_S": "20", **extra}


def create_topic(kafka: str, topic: str, partitions: int = PARTITIONS) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True)
    finally:
        admin.close()


def claim_value(claim_id: str, bucket: str, object_key: str) -> bytes:
    return json.dumps({"claim_id": claim_id, "bucket": bucket, "object_key": object_key}).encode()


Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # key, value, headers


class _NullKey(Serializer):
    def serialize(self, topic: str, headers: list[tuple[str, bytes]], data: Any) -> bytes | None:
        return None if data is NULL_KEY else data


NULL_KEY = object()  # kafka-python's send() refuses key=None with value=None, not a null key from the serializer


def publish(kafka: str, topic: str, messages: list[Message], partitions: int = PARTITIONS) -> dict[int, int]:
    """Publish round-robin over the partitions; returns each partition's end (last offset + 1). A message
    may have neither key nor value (a tombstone, as other clients write them)."""
    producer = KafkaProducer(bootstrap_servers=kafka, linger_ms=5, key_serializer=_NullKey())
    try:
        futures = [producer.send(topic, key=NULL_KEY if key is None else key, value=value, headers=headers,
                                 partition=i % partitions)
                   for i, (key, value, headers) in enumerate(messages)]
        producer.flush(30)
        ends: dict[int, int] = {}
        for future in futures:
            meta = future.get(timeout=30)
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        producer.close()


def valid_claims(prefix: str, count: int, bucket: str, object_key: str,
                 headers: list[tuple[str, bytes]] | None = None) -> list[Message]:
    return [(f"{prefix}-{i}".encode(), claim_value(f"{prefix}-{i}", bucket, object_key), headers or [])
            for i in range(count)]


def committed(kafka: str, group: str, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: mark.offset for tp, mark in offsets.items() if tp.topic == topic}


def read_all(kafka: str, topic: str, count: int, timeout_s: float = 30) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, auto_offset_reset="earliest")
    try:
        partitions = consumer.partitions_for_topic(topic) or set(range(PARTITIONS))
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def wait_records(kafka: str, topic: str, count: int, watch: Iterable[ManagedProcess], timeout_s: float = 60) -> list[Any]:
    """At least `count` records of `topic`, read from the start; fails when a watched process exits first or
    after `timeout_s`, with the last log lines of the watched processes."""
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=None, auto_offset_reset="earliest")
    records: list[Any] = []

    def arrived() -> bool:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
        return len(records) >= count

    try:
        partitions = consumer.partitions_for_topic(topic) or set(range(PARTITIONS))
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        try:
            wait_until(arrived, timeout_s, f"{count} records on {topic}", watch)
        except AssertionError as error:
            raise AssertionError(f"{len(records)} read: {error}") from None
        return records
    finally:
        consumer.close()


def results(settings: Settings, prefix: str) -> set[str]:
    """Claim ids under `prefix` that have a result object in BUCKET_LOGS."""
    names = ObjectStore(settings).client.list_objects(settings.bucket_logs, prefix=f"claims/{prefix}-", recursive=True)
    return {item.object_name.removeprefix("claims/").removesuffix(".json") for item in names}


def computed_claims(worker: ManagedProcess, prefix: str) -> list[str]:
    """Claim ids the worker started computing (one entry per computation)."""
    return [e["claim_id"] for e in worker.events("predict_inference_start")
            if str(e.get("claim_id", "")).startswith(f"{prefix}-")]


def start_bridge(env: dict[str, str], log_dir: Path, name: str = "bridge", ready: bool = True) -> ManagedProcess:
    bridge = ManagedProcess(name, [PYTHON, "-m", "bridge"], env, log_dir).start()
    bridge.url = f"http://127.0.0.1:{env['BRIDGE_METRICS_PORT']}"
    if ready:
        bridge.wait_for(lambda: _status(f"{bridge.url}/readyz") == 200, 60, "/readyz 200")
    return bridge


def same_process(bridge: ManagedProcess, pid: int) -> None:
    """The bridge is still the process `pid`, it started once, and every line it logged is its own."""
    assert bridge.alive() and bridge.pid == pid, f"the bridge died:\n{bridge.output()[-3000:]}"
    assert len(bridge.events("bridge_started")) == 1
    assert {event["pid"] for event in bridge.events()} == {pid}


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.RequestException:
        return 0


def assignment(bridge: ManagedProcess, topic: str) -> set[int]:
    """The bridge's current partitions of `topic`, replayed from its rebalance events."""
    owned: set[int] = set()
    for event in bridge.events():
        parts = {int(tp.rsplit(":", 1)[1]) for tp in event.get("tps", []) if tp.rsplit(":", 1)[0] == topic}
        if event.get("event") == "partitions_assigned":
            owned |= parts
        elif event.get("event") == "partitions_revoked":
            owned -= parts
    return owned


class InFlightSampler:
    """Reads the bridge's in-flight gauge from /metrics every `interval_s` in a thread."""

    def __init__(self, url: str, interval_s: float = 0.05) -> None:
        self.url = url
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InFlightSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                found = _IN_FLIGHT.search(requests.get(f"{self.url}/metrics", timeout=1).text)
            except requests.RequestException:
                continue
            if found:
                self.samples.append(float(found.group(1)))


def wait_until(check: Any, timeout_s: float, what: str, watch: Iterable[ManagedProcess] = ()) -> None:
    """Poll `check` until true; fail with `what` (and the last log lines of `watch`) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        for process in watch:
            if not process.alive():
                raise AssertionError(f"{process.name} exited waiting for {what}:\n{process.output()[-3000:]}")
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n{p.output()[-2000:]}" for p in watch)
    raise AssertionError(f"{what}: not within {timeout_s}s\n{tails}")


def wait_committed(kafka: str, group: str, topic: str, ends: dict[int, int], watch: Iterable[ManagedProcess],
                   timeout_s: float = 60) -> None:
    """Wait until the group's committed offsets equal `ends`; on failure, say which offsets were seen last."""
    seen: dict[int, int] = {}

    def reached() -> bool:
        seen.clear()
        seen.update(committed(kafka, group, topic))
        return seen == ends

    try:
        wait_until(reached, timeout_s, f"commits reach {ends}", watch)
    except AssertionError as error:
        raise AssertionError(f"last committed {seen}: {error}") from None
