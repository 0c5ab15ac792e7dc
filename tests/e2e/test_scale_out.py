"""Scale-out: two worker nodes and two bridges in one consumer group share a burst of claims.

Real processes throughout: two `celery -A tasks worker` nodes, two `python -m bridge`, the Tansu broker, Redis, S3.
Prints how partitions and claims were spread (run with -s to see it)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

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

BURST = 400


def test_two_workers_and_two_bridges_share_a_burst(module_env: dict[str, str], kafka_service: Service,
                                                   settings: Settings, log_dir: Path,
                                                   bridges: Callable[..., ManagedProcess]) -> None:
    kafka, prefix = kafka_service.address, f"scale-{uuid.uuid4().hex[:6]}"
    env = bridge_env(module_env, kafka, maxsize=40)
    topic, group = env["KAFKA_TOPIC_CLAIMS"], env["KAFKA_GROUP_ID"]
    # Given two worker nodes of one process each (names worker-a@host, worker-b@host) on the module's queues
    nodes: list[ManagedProcess] = []
    try:
        for name in ("worker-a", "worker-b"):
            nodes.append(start_worker({**env, "QUEUE_WORKERS": "1", "WORKER_METRICS_PORT": str(free_port())}, log_dir,
                                      "--without-mingle", "--without-gossip", name=name))
        # And two bridges in one group on a 4-partition claims topic, each owning two partitions
        create_topic(kafka, topic)
        pair = [bridges(env, "bridge-a"), bridges({**env, "BRIDGE_METRICS_PORT": str(free_port())}, "bridge-b")]
        wait_until(lambda: all(len(assignment(bridge, topic)) == PARTITIONS // 2 for bridge in pair), 60,
                   "a 2/2 split", pair)
        owned = [sorted(assignment(bridge, topic)) for bridge in pair]
        assert set(owned[0]) | set(owned[1]) == set(range(PARTITIONS))
        # When a burst of claims arrives, spread over the four partitions
        ends = publish(kafka, topic, valid_claims(prefix, BURST, settings.bucket_processed, SAMPLE_KEY))
        # Then every claim gets its result and both bridges commit their partitions to the end
        wait_until(lambda: len(results(settings, prefix)) == BURST, 90, "every claim has a result", [*pair, *nodes])
        wait_committed(kafka, group, topic, ends, pair)
        taken = [{e["claim_id"] for e in bridge.events("queue_enqueued") if str(e.get("claim_id", "")).startswith(f"{prefix}-")}
                 for bridge in pair]
        computed = [computed_claims(node, prefix) for node in nodes]
        still_owned = [sorted(assignment(bridge, topic)) for bridge in pair]
    finally:
        for node in nodes:
            node.stop()
    everything = Counter(computed[0] + computed[1])
    twice = sorted(claim for claim, times in everything.items() if times > 1)
    lost = BURST - len(results(settings, prefix))
    print(f"\n{BURST} claims over {PARTITIONS} partitions: bridge-a partitions {owned[0]} took {len(taken[0])} claims, "
          f"bridge-b partitions {owned[1]} took {len(taken[1])}; worker-a computed {len(computed[0])} claims, "
          f"worker-b {len(computed[1])}; lost {lost}; duplicates {len(twice)}")
    # And the work was spread: each bridge took the claims of its own partitions, each worker node computed some
    assert still_owned == owned, f"a rebalance during the burst: {owned} -> {still_owned}"
    assert taken[0] and taken[1] and not taken[0] & taken[1]
    assert taken[0] | taken[1] == {f"{prefix}-{i}" for i in range(BURST)}
    assert all(int(claim.rsplit("-", 1)[1]) % PARTITIONS in owned[index] for index in (0, 1) for claim in taken[index])
    assert computed[0] and computed[1], "one worker node computed nothing"
    assert set(everything) == {f"{prefix}-{i}" for i in range(BURST)}
    assert lost == 0 and not twice
