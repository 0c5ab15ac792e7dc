"""The bridge under failure and in a group: SIGKILL mid-burst and restart, two bridges sharing the work, and a
rebalance that hands a bridge its own partitions back.

Real processes throughout: a Celery worker, `python -m bridge` (one or two), the Tansu broker, Redis, S3."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from devtools.processes import ManagedProcess, start_worker
from devtools.services import Service, free_port
from settings import Settings
from tasks.demo_model import SAMPLE_KEY
from tests.e2e.bridge_support import (
    PARTITIONS,
    assignment,
    bridge_env,
    computed_claims,
    create_topic,
    publish,
    results,
    valid_claims,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.e2e


def test_sigkill_mid_burst_loses_nothing(module_env: dict[str, str], kafka_service: Service, settings: Settings,
                                         worker: ManagedProcess, bridges: Callable[..., ManagedProcess]) -> None:
    # Given a bridge bounded at 40 in flight, working through a burst
    maxsize, count, prefix = 40, 400, f"kill-{uuid.uuid4().hex[:6]}"
    env = bridge_env(module_env, kafka_service.address, maxsize=maxsize)
    topic, group = env["KAFKA_TOPIC_CLAIMS"], env["KAFKA_GROUP_ID"]
    first = bridges(env, "bridge-a")
    ends = publish(kafka_service.address, topic, valid_claims(prefix, count, settings.bucket_processed, SAMPLE_KEY))
    wait_until(lambda: first.events("commit_offsets") and len(computed_claims(worker, prefix)) >= 100, 60,
               "a quarter of the burst computed and committed", [first, worker])
    # When it is killed without warning with claims in flight (the worker held stopped meanwhile, so that the
    # burst cannot finish first however fast the machine), and a new one starts in the same group
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        first.signal(signal.SIGKILL)
        first.wait_exit(10)
        assert len(results(settings, prefix)) < count, "the burst finished before the kill"
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    second = bridges({**env, "BRIDGE_METRICS_PORT": str(free_port())}, "bridge-b")
    # Then every claim ends with a result, and the offsets are committed to the end
    wait_until(lambda: len(results(settings, prefix)) == count, 120, "every claim has a result", [second, worker])
    wait_committed(kafka_service.address, group, topic, ends, [second])
    # And claims computed twice are at most the in-flight bound
    twice = [claim for claim, times in Counter(computed_claims(worker, prefix)).items() if times > 1]
    redelivered = [e for e in worker.events("claim_already_scored") if e["claim_id"].startswith(f"{prefix}-")]
    print(f"after SIGKILL: {len(redelivered)} redelivered claims skipped as already scored, "
          f"{len(twice)} computed twice (bound {maxsize})")
    assert len(twice) <= maxsize


def test_two_bridges_split_the_partitions_and_one_takes_over(module_env: dict[str, str], kafka_service: Service,
                                                             settings: Settings, worker: ManagedProcess,
                                                             bridges: Callable[..., ManagedProcess]) -> None:
    # Given two bridges in one group on a 4-partition topic
    env = bridge_env(module_env, kafka_service.address, maxsize=20)
    topic, group = env["KAFKA_TOPIC_CLAIMS"], env["KAFKA_GROUP_ID"]
    create_topic(kafka_service.address, topic)
    first = bridges(env, "bridge-a")
    second = bridges({**env, "BRIDGE_METRICS_PORT": str(free_port())}, "bridge-b")
    # Then they split the partitions between them
    wait_until(lambda: len(assignment(first, topic)) == 2 and len(assignment(second, topic)) == 2, 60,
               "a 2/2 split", [first, second])
    assert assignment(first, topic) | assignment(second, topic) == set(range(PARTITIONS))
    # When a burst arrives and both work on it
    prefix = f"pair-{uuid.uuid4().hex[:6]}"
    ends = publish(kafka_service.address, topic, valid_claims(prefix, 240, settings.bucket_processed, SAMPLE_KEY))
    wait_until(lambda: first.events("queue_enqueued") and second.events("queue_enqueued"), 30, "both take claims",
               [first, second])
    # And one of them is stopped
    assert first.stop() == 0
    # Then the other takes over its partitions and finishes the work, nothing lost
    wait_until(lambda: assignment(second, topic) == set(range(PARTITIONS)), 60, "bridge-b owns all four", [second])
    wait_until(lambda: len(results(settings, prefix)) == 240, 90, "every claim has a result", [second, worker])
    wait_committed(kafka_service.address, group, topic, ends, [second])


def test_a_partition_assigned_straight_back_is_read_again_from_its_first_unfinished_claim(
        module_env: dict[str, str], kafka_service: Service, settings: Settings, log_dir: Path,
        bridges: Callable[..., ManagedProcess]) -> None:
    # Given a bridge with claims in flight on every partition: it sends them to a queue no worker reads yet
    held = f"held-{uuid.uuid4().hex[:6]}"
    env = bridge_env(module_env, kafka_service.address, maxsize=100, CELERY_BATCH_QUEUE=held)
    topic, group, kafka = env["KAFKA_TOPIC_CLAIMS"], env["KAFKA_GROUP_ID"], kafka_service.address
    bridge = bridges(env, "bridge")
    prefix = f"back-{uuid.uuid4().hex[:6]}"
    ends = publish(kafka, topic, valid_claims(prefix, 40, settings.bucket_processed, SAMPLE_KEY))
    wait_until(lambda: len(bridge.events("queue_enqueued")) >= 40, 30, "40 claims in flight", [bridge])
    # When another member joins the group for a topic of its own: the bridge's partitions are revoked (its
    # claims in flight let go) and assigned straight back to it
    other_topic = f"{topic}.other"
    create_topic(kafka, other_topic, partitions=1)
    other = KafkaConsumer(other_topic, group_id=group, bootstrap_servers=kafka, enable_auto_commit=False)
    try:
        def handed_back() -> bool:
            return (any(e.get("dropped") for e in bridge.events("partitions_revoked"))
                    and assignment(bridge, topic) == set(range(PARTITIONS)))

        deadline = time.monotonic() + 60
        while not handed_back() and time.monotonic() < deadline:
            other.poll(timeout_ms=200)  # a member takes part in the group only while it polls
        assert handed_back(), "no revoke letting claims go, then all four partitions back, within 60 s"
        # Then, once a worker reads that queue, every claim has a result and the offsets are committed to the
        # ends: the claims let go were read again (kafka-python keeps the position of a partition assigned
        # back, past them)
        worker = start_worker(env, log_dir, "-Q", held, name="held")
        try:
            wait_until(lambda: len(results(settings, prefix)) == 40, 60, "every claim has a result", [bridge, worker])
            wait_committed(kafka, group, topic, ends, [bridge])
        finally:
            worker.stop()
    finally:
        other.close()
