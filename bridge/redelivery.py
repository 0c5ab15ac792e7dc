"""Claims whose results may never come, sent again under the same task id (a claim already scored is not
scored twice: the workers skip it).

- Redis restarted (its run id changed): the queued claims and their results went with its memory.
- A worker node's heartbeat went stale: it died with the claims it held, and with late acks their messages
  come back only after the visibility timeout.
- A claim's result is overdue (RESULT_TIMEOUT_S): sent again, up to MAX_ATTEMPTS, then dead-lettered as
  `task_failed`; one past its deadline is dropped as expired instead.

Runs in the poll thread, as steps of its turn (bridge/loop.py).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import redis

from bridge import dispatch
from bridge.claim import Claim
from tasks import heartbeat, metrics
from tasks.logs import log_event, now_ms

if TYPE_CHECKING:
    from bridge.loop import Bridge

log = logging.getLogger(__name__)

OVERDUE_CHECK_S = 1.0


class Redelivery:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self._last_overdue_check = 0.0
        self._redis_run_id = ""
        self._workers_checked = 0.0
        self._live_workers: set[bytes] = set()

    def redis_back(self) -> bool:
        """Redis answers again: if it is a new server (its run id changed), the queued claims and their
        results went with the old one's memory; send everything in flight again now. False when Redis failed
        to answer after all."""
        try:
            run_id = self.redis_run_id()
        except redis.RedisError:
            return False
        if self._redis_run_id and run_id != self._redis_run_id:
            self.resend_all("redis_restarted")
        self._redis_run_id = run_id
        return True

    def redis_run_id(self) -> str:
        info: dict[str, Any] = self.bridge.redis.info("server")  # type: ignore[assignment]
        return str(info.get("run_id", ""))

    def watch_workers(self) -> None:
        """A worker node whose heartbeat went stale died with the claims it held (acks late: their messages
        come back only after the visibility timeout): send everything in flight again now. Claims already
        finished are skipped by the workers; those still queued run once, their copies are skipped."""
        now = time.monotonic()
        if now - self._workers_checked < heartbeat.INTERVAL_S:
            return
        self._workers_checked = now
        try:
            if not self._redis_run_id:
                self._redis_run_id = self.redis_run_id()
            scores = dict(self.bridge.redis.zrange(heartbeat.WORKERS_KEY, 0, -1, withscores=True))  # type: ignore[arg-type]
        except redis.RedisError:
            return
        fresh_after = time.time() - heartbeat.STALE_S
        live = {node for node, score in scores.items() if score >= fresh_after}
        lost = sorted(node.decode() for node in self._live_workers - live if node in scores)
        self._live_workers = live
        if lost:
            log_event(log, "worker_lost", level=logging.WARNING, nodes=lost)
            self.resend_all("worker_lost")

    def resend_all(self, reason: str) -> None:
        """Make every claim in flight overdue, so that this turn sends it again."""
        for entry in self.bridge.in_flight.values():
            entry.sent_at = float("-inf")
        self._last_overdue_check = 0.0
        log_event(log, "claims_resent", level=logging.WARNING, reason=reason, count=len(self.bridge.in_flight))

    def resend_overdue(self) -> None:
        """A result that never came (worker lost): send the claim again under the same task id."""
        now = time.monotonic()
        if now - self._last_overdue_check < OVERDUE_CHECK_S:
            return
        self._last_overdue_check = now
        for entry in [e for e in self.bridge.in_flight.values() if now - e.sent_at > self.bridge.result_timeout_s]:
            deadline = entry.claim.deadline_ms
            if self.bridge.settings.enable_ttl and deadline is not None and deadline <= now_ms():
                del self.bridge.in_flight[entry.task_id]
                self.bridge.dispatcher.forget([entry.task_id])
                metrics.BRIDGE_RECORDS.labels("expired").inc()
                log_event(log, "ttl_expired", source="bridge", key=entry.claim.claim_id, task_id=entry.task_id)
                self.bridge.finish(entry.record)
            elif entry.attempts >= dispatch.MAX_ATTEMPTS:
                del self.bridge.in_flight[entry.task_id]
                self.bridge.dispatcher.forget([entry.task_id])
                self.bridge.dead_letter(entry.record, "task_failed", f"no result after {entry.attempts} attempts")
            else:
                try:
                    if isinstance(entry.claim, Claim):
                        self.bridge.dispatcher.send_claims([(entry.task_id, entry.claim)])
                    else:
                        self.bridge.dispatcher.send(entry.task_id, entry.claim)
                except Exception as error:  # noqa: BLE001 - Redis away: try again at the next check
                    log.warning("re-enqueue failed: %s", type(error).__name__, extra={"event": "queue_unavailable"})
                    return
                entry.sent_at, entry.attempts = now, entry.attempts + 1
                metrics.BRIDGE_RECORDS.labels("requeued").inc()
                log_event(log, "claim_requeued", task_id=entry.task_id, claim_id=entry.claim.claim_id,
                          attempt=entry.attempts)
