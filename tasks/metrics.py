"""Metric names, in one place: what each process serves, and the label values it shows from the start.

Metrics are not registered in prometheus-client's default registry: `EXPORTED` says which process serves
which metric, and each process serves exactly those (`registry()` for the API and the bridge; the worker
node filters its merged multiprocess view by `names()`). README's metrics table and
tests/e2e/test_metrics.py are held against `EXPORTED`.

prometheus-client shows a labelled metric only once one of its label sets exists, so `initialise()` creates
every label set known at start-up and operators read 0 rather than nothing. Label values that only appear
later create their series then (`LATER_LABELS`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from settings import Settings
from tasks.celery_config import CLAIM_TASK, PREDICT_BATCH_TASK, PREDICT_TASK, TRAIN_TASK

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)
# Queue waits reach further than request latencies: a claim may wait behind QUEUE_MAXSIZE others.
QUEUE_WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300)

# Label values known in advance.
ADMISSION_OUTCOMES = ("accepted", "shed_full", "shed_deadline", "cached", "unavailable", "invalid")
EXPIRED_STAGES = ("admission", "queue", "worker")
RECORD_OUTCOMES = ("enqueued", "completed", "expired", "dead_lettered", "requeued", "dropped", "model_selected",
                   "model_training")
TRANSITIONS = ("pause", "resume")
COMMIT_OUTCOMES = ("ok", "failed")
DLQ_ERRORS = ("invalid_json", "invalid_claim", "invalid_deadline", "object_missing", "schema_mismatch",
              "storage_unavailable", "task_failed")  # docs/interface.md's DLQ error codes
TASKS = (PREDICT_TASK, PREDICT_BATCH_TASK, CLAIM_TASK, TRAIN_TASK)
TASK_STATES = ("SUCCESS", "FAILURE")  # others (RETRY, IGNORED) appear when they happen

# The API.
ADMISSION = Counter(
    "inference_admission_total", "Admission decisions for /predict by outcome", ["outcome"], registry=None,
)
# The queue gauges read the same Redis from every API process: with several processes (multiprocess
# mode) a scrape shows the value written last, by whichever process sampled the queue last.
QUEUE_DEPTH = Gauge("inference_queue_depth", "Requests waiting in a lane's Redis queue (all priority keys, batch items)",
                    ["queue"], multiprocess_mode="mostrecent", registry=None)
DRAIN_RATE = Gauge("inference_queue_drain_rate", "Completions per second (EWMA) of a queue", ["queue"],
                   multiprocess_mode="mostrecent", registry=None)
BACKLOG = Gauge(
    "inference_backlog",
    "Autoscaling signal: requests waiting in both lanes plus task messages delivered to workers and not yet acknowledged",
    multiprocess_mode="mostrecent", registry=None,
)
REQUEST_LATENCY = Histogram(
    "inference_http_request_duration_seconds", "HTTP request latency", ["endpoint", "status"], buckets=LATENCY_BUCKETS_S,
    registry=None,
)
# Where work was when its deadline passed: admission (before it was accepted), queue (accepted, waiting in
# the API's micro-batcher or in Redis), worker (received by a worker, dropped just before inference).
EXPIRED = Counter("inference_expired_total", "Work dropped because its deadline passed, by stage", ["stage"], registry=None)
BATCH_SIZE = Histogram(
    "inference_batch_size", "Requests per micro-batch sent to the workers", ["stage"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=None,
)

# The Kafka bridge.
BRIDGE_IN_FLIGHT = Gauge("bridge_claims_in_flight", "Claims dispatched whose result has not arrived", registry=None)
BRIDGE_MAXSIZE = Gauge("bridge_claims_in_flight_max", "The in-flight bound (QUEUE_MAXSIZE)", registry=None)
BRIDGE_PAUSED = Gauge("bridge_consumer_paused", "1 while the bridge has paused its partitions", registry=None)
BRIDGE_TRANSITIONS = Counter("bridge_flow_transitions_total", "Pauses and resumes of the bridge", ["transition"], registry=None)
BRIDGE_RECORDS = Counter("bridge_records_total", "Records handled by the bridge by outcome", ["outcome"], registry=None)
BRIDGE_ASSIGNED = Gauge("bridge_assigned_partitions", "Partitions assigned to this bridge", registry=None)
# Per partition this bridge owns, read from Kafka every second (bridge/lag.py), removed when it is revoked.
BRIDGE_COMMITTED = Gauge("bridge_committed_offset", "The group's committed offset (0 before any commit)",
                         ["topic", "partition"], registry=None)
BRIDGE_END_OFFSET = Gauge("bridge_end_offset", "The partition's end offset (next offset to be written)",
                          ["topic", "partition"], registry=None)
BRIDGE_LAG = Gauge("bridge_consumer_lag", "Records between the group's committed offset and the end offset",
                   ["topic", "partition"], registry=None)
BRIDGE_COMMITS = Counter("bridge_commits_total", "Offset commits sent to Kafka by outcome (one covers every partition that moved)",
                         ["outcome"], registry=None)
BRIDGE_DEAD_LETTERED = Counter("bridge_dead_lettered_total", "Records written to KAFKA_TOPIC_DLQ, by error code",
                               ["error"], registry=None)

# The workers (merged across a node's pool processes, served on WORKER_METRICS_PORT).
WORKER_TASKS = Counter("inference_worker_tasks_total", "Tasks finished by a worker, by task and state", ["task", "state"],
                       registry=None)
WORKER_TASK_DURATION = Histogram(
    "inference_worker_task_duration_seconds", "Time a task ran in a worker process", ["task"], buckets=LATENCY_BUCKETS_S,
    registry=None,
)
QUEUE_WAIT = Histogram(
    "inference_queue_wait_seconds", "Time a task waited between its enqueue and a worker starting it, by queue",
    ["queue"], buckets=QUEUE_WAIT_BUCKETS_S, registry=None,
)
MODEL_LOADED = Gauge(
    "inference_model_loaded", "1 for the model version a process serves (workers) or describes (API)", ["version"],
    multiprocess_mode="liveall", registry=None,
)

API, WORKER, BRIDGE = "api", "worker", "bridge"
EXPORTED: dict[str, tuple[MetricWrapperBase, ...]] = {
    API: (ADMISSION, QUEUE_DEPTH, DRAIN_RATE, BACKLOG, REQUEST_LATENCY, EXPIRED, BATCH_SIZE, MODEL_LOADED),
    WORKER: (WORKER_TASKS, WORKER_TASK_DURATION, QUEUE_WAIT, EXPIRED, BATCH_SIZE, MODEL_LOADED),
    BRIDGE: (BRIDGE_IN_FLIGHT, BRIDGE_MAXSIZE, BRIDGE_PAUSED, BRIDGE_TRANSITIONS, BRIDGE_RECORDS, BRIDGE_ASSIGNED,
             BRIDGE_COMMITTED, BRIDGE_END_OFFSET, BRIDGE_LAG, BRIDGE_COMMITS, BRIDGE_DEAD_LETTERED, EXPIRED),
}
#: Labelled metrics whose label values are known only later: their series appear with them.
LATER_LABELS: dict[MetricWrapperBase, str] = {
    REQUEST_LATENCY: "with the first answered request of each endpoint and status",
    MODEL_LOADED: "when a model version is loaded",
    BRIDGE_COMMITTED: "within a second of the partition's assignment",
    BRIDGE_END_OFFSET: "within a second of the partition's assignment",
    BRIDGE_LAG: "within a second of the partition's assignment",
}


def initial_labels(process: str, settings: Settings) -> dict[MetricWrapperBase, list[tuple[str, ...]]]:
    """The label sets `process` creates at start-up, per metric."""
    lanes = _each((settings.celery_queue, settings.celery_batch_queue))
    stages = {API: ("admission", "queue"), WORKER: ("queue", "worker"), BRIDGE: ("admission",)}[process]
    found: dict[MetricWrapperBase, list[tuple[str, ...]]] = {EXPIRED: _each(stages)}
    if process == API:
        found |= {ADMISSION: _each(ADMISSION_OUTCOMES), QUEUE_DEPTH: lanes, DRAIN_RATE: lanes, BATCH_SIZE: _each(("api",))}
    elif process == WORKER:
        found |= {QUEUE_WAIT: lanes, BATCH_SIZE: _each(("worker",)), WORKER_TASK_DURATION: _each(TASKS),
                  WORKER_TASKS: [(task, state) for task in TASKS for state in TASK_STATES]}
    else:
        found |= {BRIDGE_TRANSITIONS: _each(TRANSITIONS), BRIDGE_RECORDS: _each(RECORD_OUTCOMES),
                  BRIDGE_COMMITS: _each(COMMIT_OUTCOMES), BRIDGE_DEAD_LETTERED: _each(DLQ_ERRORS)}
    return found


def initialise(process: str, settings: Settings) -> None:
    """Create every label set `process` knows at start-up, so that its series read 0 from the first scrape."""
    for metric, label_sets in initial_labels(process, settings).items():
        for values in label_sets:
            metric.labels(*values)


def registry(process: str) -> CollectorRegistry:
    """What `process` serves on /metrics: its metrics, and the interpreter's process, platform and GC collectors.

    In prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR set: several API processes on one
    port), the metrics of every process sharing the directory, merged; the process, platform and GC
    collectors would describe only the process that happened to answer, so they are left out."""
    served = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        served.register(Only(multiprocess.MultiProcessCollector(None), names(process)))
        return served
    for collector in (*EXPORTED[process], PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        served.register(collector)
    return served


class Only:
    """The families of `inner` named in `names`: every process creates every metric of this module, and
    the multiprocess files hold the unlabelled ones of other processes too (at 0)."""

    def __init__(self, inner: Any, names: set[str]) -> None:
        self.inner = inner
        self.names = names

    def collect(self) -> list[Any]:
        return [family for family in self.inner.collect() if family.name in self.names]


def family_name(metric: MetricWrapperBase) -> str:
    """The metric's family name in the exposition (a counter's without `_total`)."""
    return next(iter(metric.describe())).name


def series_name(metric: MetricWrapperBase) -> str:
    """The name operators query and the README lists: counters with `_total`, histograms by their base name."""
    name = family_name(metric)
    return f"{name}_total" if metric._type == "counter" else name


def names(process: str) -> set[str]:
    """Family names of the metrics `process` serves."""
    return {family_name(metric) for metric in EXPORTED[process]}


def _each(values: Iterable[str]) -> list[tuple[str, ...]]:
    return [(value,) for value in values]
