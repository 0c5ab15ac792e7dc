"""The API's /metrics: its registry (tasks.metrics.EXPORTED["api"]), with the queue gauges sampled as it is scraped.

Admission sets the interactive lane's depth on every request from the sample it takes anyway; nothing
else would keep the bulk lane's depth, the drain rates or the backlog current, and an idle API would show
stale values. So each scrape samples both lanes and the unacknowledged messages: three small Redis round
trips per scrape, none per request. When Redis does not answer, the gauges keep their last values and
the scrape still succeeds.

`inference_backlog`, the autoscaling signal, is requests waiting in both lanes (as admission counts them:
the messages in each queue, the extra requests inside micro-batch messages and this API's rows not yet
sent) plus the task messages workers hold and have not acknowledged, i.e. running or prefetched
(`task_acks_late`): the work the workers have in front of them.
"""

from __future__ import annotations

import redis
from prometheus_client import generate_latest

from tasks import metrics
from tasks.queues import CompletionRate, QueueProbe, unacknowledged
from webapp.gateway import Gateway


class ScrapedMetrics:
    def __init__(self, gateway: Gateway) -> None:
        settings = gateway.settings
        metrics.initialise(metrics.API, settings)
        self.gateway = gateway
        self.registry = metrics.registry(metrics.API)
        self.interactive = settings.celery_queue
        self.probes = {lane: QueueProbe(gateway.redis, lane) for lane in (settings.celery_queue, settings.celery_batch_queue)}
        # Admission keeps the interactive lane's rate; the bulk lane's is measured here, scrape to scrape.
        self.rates = {settings.celery_queue: gateway.completions, settings.celery_batch_queue: CompletionRate()}

    def render(self) -> bytes:
        self.refresh()
        return generate_latest(self.registry)

    def refresh(self) -> None:
        try:
            samples = {lane: probe.sample() for lane, probe in self.probes.items()}
            held = unacknowledged(self.gateway.redis)
        except redis.RedisError:
            return
        batcher = self.gateway.batcher
        waiting = 0
        for lane, sample in samples.items():
            depth = sample.depth + (batcher.pending if batcher is not None and lane == self.interactive else 0)
            waiting += depth
            metrics.QUEUE_DEPTH.labels(lane).set(depth)
            metrics.DRAIN_RATE.labels(lane).set(self.rates[lane].observe(sample))
        metrics.BACKLOG.set(waiting + held)
