"""What the poll thread does with a rebalance that kafka-python's IO thread handed over (rebalance.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kafka import TopicPartition

from tasks import metrics
from tasks.logs import log_event

if TYPE_CHECKING:
    from bridge.loop import Bridge

log = logging.getLogger(__name__)


def revoked(bridge: Bridge, partitions: set[TopicPartition]) -> None:
    """Partitions taken away: their claims in flight are dropped (their results will be dropped too: the new
    owner redoes them), and where all was finished is kept in case they come straight back."""
    bridge.revoked_at.update(bridge.tracker.positions(partitions))
    dropped = [entry.task_id for entry in bridge.in_flight.values() if entry.record.tp in partitions]
    for task in dropped:
        del bridge.in_flight[task]
    bridge.dispatcher.forget(dropped)
    bridge.tracker.drop(partitions)
    if bridge.consumer is not None:
        bridge.consumer.forget_fetched(partitions)
    bridge.assigned -= partitions
    bridge.lag.watch(bridge.assigned)
    metrics.BRIDGE_ASSIGNED.set(len(bridge.assigned))
    metrics.BRIDGE_RECORDS.labels("dropped").inc(len(dropped))
    log_event(log, "partitions_revoked", tps=sorted(f"{tp.topic}:{tp.partition}" for tp in partitions),
              dropped=len(dropped))

def assigned(bridge: Bridge, partitions: set[TopicPartition]) -> None:
    """Partitions given: read from their committed offset, or, if they come straight back, from where all was
    finished when they went; paused again if the bridge is paused."""
    assert bridge.consumer is not None
    bridge.consumer.forget_fetched(partitions)
    # kafka-python keeps the position of a partition assigned again (SubscriptionState.assign_from_subscribed):
    # it would go on after the claims dropped at the revoke. Read them again from where all was finished
    # (a claim already scored is not computed twice); records this turn's poll returned from the old
    # position are left to that read. Everything below that offset is finished: it is committed next,
    # even if nothing more arrives (the commit on revoke came from an older snapshot and may be lower).
    for tp in partitions & bridge.revoked_at.keys():
        offset = bridge.revoked_at[tp]
        bridge.hold(tp, offset)
        bridge.rewound[tp] = offset
        if offset > 0:
            bridge.tracker.skip(tp, offset - 1)
    bridge.revoked_at.clear()
    bridge.assigned |= partitions
    bridge.lag.watch(bridge.assigned)
    metrics.BRIDGE_ASSIGNED.set(len(bridge.assigned))
    if bridge.flow.paused or bridge.draining:
        bridge.consumer.pause(partitions)  # kafka-python forgets pause state on rebalance
    log_event(log, "partitions_assigned", tps=sorted(f"{tp.topic}:{tp.partition}" for tp in partitions),
              paused=bridge.flow.paused)
