"""The bridge under failure and in a group: SIGKILL mid-burst and restart, and two bridges sharing the work.

Real processes throughout: a Celery worker, `python -m bridge` (one or two), the Tansu broker, Redis, S3."""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from devtools.processes import ManagedProcess
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
    # When it is killed without warning, and a new one starts in the same group
    first.signal(signal.SIGKILL)
    first.wait_exit(10)
    assert len(results(settings, prefix)) < count, "the burst finished before the kill: make it larger"
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
