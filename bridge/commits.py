"""The commit step: each owned partition's safe offset (offsets.py), committed when it moved, at most once per
COMMIT_INTERVAL_S and at once when forced (a drain, a revoke). A failed commit is retried at the next one."""

from __future__ import annotations

import logging
import time

from kafka import TopicPartition

from bridge.consumer import GroupConsumer
from bridge.errors import CommitFailed, KafkaUnavailable
from bridge.offsets import OffsetTracker
from bridge.rebalance import labelled, names
from tasks import metrics
from tasks.logs import log_event

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0


class Committer:
    def __init__(self, tracker: OffsetTracker[TopicPartition], *, manual: bool) -> None:
        self.tracker = tracker
        self.manual = manual
        self._last_commit = 0.0

    def commit(self, consumer: GroupConsumer, assigned: set[TopicPartition], *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_INTERVAL_S:
            return
        self._last_commit = now
        if not self.manual:
            return
        offsets = self.tracker.to_commit(assigned)
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except (CommitFailed, KafkaUnavailable) as error:
            metrics.BRIDGE_COMMITS.labels("failed").inc()
            log.warning("commit failed: %s", error, extra={"event": "commit_failed"})
            return
        self.tracker.committed(offsets)
        metrics.BRIDGE_COMMITS.labels("ok").inc()
        log_event(log, "commit_offsets", tps=names(offsets), offsets=labelled(offsets))
