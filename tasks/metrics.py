"""Metric names, in one place. Every process registers what it exports from here."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)

ADMISSION = Counter(
    "inference_admission_total",
    "Admission decisions for /predict by outcome",
    ["outcome"],  # accepted, shed_full, shed_deadline, cached, unavailable, invalid
)
QUEUE_DEPTH = Gauge("inference_queue_depth", "Messages waiting in a Redis queue (all priority keys)", ["queue"])
DRAIN_RATE = Gauge("inference_queue_drain_rate", "Completions per second (EWMA) of a queue", ["queue"])
REQUEST_LATENCY = Histogram(
    "inference_http_request_duration_seconds", "HTTP request latency", ["endpoint", "status"], buckets=LATENCY_BUCKETS_S
)
EXPIRED = Counter("inference_expired_total", "Work dropped because its deadline passed", ["stage"])

# The Kafka bridge.
BRIDGE_IN_FLIGHT = Gauge("bridge_claims_in_flight", "Claims dispatched whose result has not arrived")
BRIDGE_MAXSIZE = Gauge("bridge_claims_in_flight_max", "The in-flight bound (QUEUE_MAXSIZE)")
BRIDGE_PAUSED = Gauge("bridge_consumer_paused", "1 while the bridge has paused its partitions")
BRIDGE_TRANSITIONS = Counter("bridge_flow_transitions_total", "Pauses and resumes of the bridge", ["transition"])
BRIDGE_RECORDS = Counter(
    "bridge_records_total",
    "Records handled by the bridge by outcome",
    ["outcome"],  # enqueued, completed, expired, dead_lettered, requeued, dropped, model_selected, model_training
)
BRIDGE_COMMITTED = Gauge("bridge_committed_offset", "Last offset committed", ["topic", "partition"])
BRIDGE_ASSIGNED = Gauge("bridge_assigned_partitions", "Partitions assigned to this bridge")
BATCH_SIZE = Histogram(
    "inference_batch_size", "Requests per micro-batch sent to the workers", ["stage"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)

# The workers (merged across a node's pool processes, served on WORKER_METRICS_PORT).
WORKER_TASKS = Counter("inference_worker_tasks_total", "Tasks finished by a worker, by task and state", ["task", "state"])
WORKER_TASK_DURATION = Histogram(
    "inference_worker_task_duration_seconds", "Time a task ran in a worker process", ["task"], buckets=LATENCY_BUCKETS_S
)
MODEL_LOADED = Gauge(
    "inference_model_loaded", "1 for the model version a worker process serves", ["version"], multiprocess_mode="liveall"
)
