"""Rebalances: kafka-python 3.x calls the listener on its IO thread, where a blocking commit raises.

On revoke the listener commits, without blocking (commit_async), the offsets of the poll thread's last
snapshot (safe offsets only move forward, so a snapshot is never past an unfinished claim), then hands
the change to the poll thread through its event queue: only the poll thread touches its own state.
"""

from __future__ import annotations

import logging
import queue
from typing import Any, Protocol

from kafka import ConsumerRebalanceListener, TopicPartition

from bridge.consumer import GroupConsumer
from bridge.errors import CommitFailed, KafkaUnavailable
from tasks import metrics
from tasks.logs import log_event

log = logging.getLogger(__name__)


class Owner(Protocol):
    safe_offsets: dict[TopicPartition, int]
    consumer: GroupConsumer | None
    events: queue.SimpleQueue[Any]


class Revoked:
    def __init__(self, partitions: set[TopicPartition]) -> None:
        self.partitions = partitions


class Assigned:
    def __init__(self, partitions: set[TopicPartition]) -> None:
        self.partitions = partitions


class Rebalance(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: commit_async from the poll thread's last snapshot (offsets only
    move forward, so a snapshot is never past an unfinished claim), then hand the change over."""

    def __init__(self, bridge: Owner) -> None:
        self.bridge = bridge

    def on_partitions_revoked(self, revoked: Any) -> None:
        partitions = set(revoked)
        snapshot = self.bridge.safe_offsets
        offsets = {tp: snapshot[tp] for tp in partitions if tp in snapshot}
        consumer = self.bridge.consumer
        if offsets and consumer is not None:
            try:
                consumer.commit_async(offsets, callback=_counted)
                log_event(log, "commit_offsets", tps=names(offsets), offsets=labelled(offsets), on="revoke")
            except (CommitFailed, KafkaUnavailable) as error:
                metrics.BRIDGE_COMMITS.labels("failed").inc()
                log.warning("commit on revoke failed: %s", error, extra={"event": "commit_failed"})
        self.bridge.events.put(Revoked(partitions))

    def on_partitions_lost(self, lost: Any) -> None:
        self.bridge.events.put(Revoked(set(lost)))  # no longer ours: nothing may be committed for them

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.bridge.events.put(Assigned(set(assigned)))


def _counted(_offsets: Any, response: Any) -> None:
    """kafka-python's commit_async callback: `response` is an exception when the commit failed."""
    metrics.BRIDGE_COMMITS.labels("failed" if isinstance(response, Exception) else "ok").inc()


def names(offsets: dict[TopicPartition, int]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in offsets)


def labelled(offsets: dict[TopicPartition, int]) -> dict[str, int]:
    return {f"{tp.topic}:{tp.partition}": offset for tp, offset in sorted(offsets.items())}
