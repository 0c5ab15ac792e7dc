"""The Celery application factory: broker, result backend, lanes and the delivery guarantees.

Both producers (API, bridge) and workers build their app here, so they agree on queues and options.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from settings import Settings
from tasks import queue_wait

PREDICT_TASK = "tasks.predict"
PREDICT_BATCH_TASK = "tasks.predict_batch"
CLAIM_TASK = "tasks.score_claims"
TRAIN_TASK = "tasks.train_candidate"

# The longest a message may stay delivered-but-unacknowledged before Redis hands it to another worker.
# It must exceed the longest task (hard time limit below) plus the time a prefetched message waits in
# a worker; too short and slow tasks run twice, too long and a dead worker's task waits that long.
TASK_TIME_LIMIT_S = 300
VISIBILITY_TIMEOUT_S = 3600


class InferenceCelery(Celery):
    """A Celery app that carries the validated settings for the tasks and signals that need them."""

    settings: Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    interactive, bulk = settings.celery_queue, settings.celery_batch_queue
    transport = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        # Workers BRPOP their queues in the declared order instead of round-robin: interactive first.
        "queue_order_strategy": "priority",
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "health_check_interval": 10,
    }
    return {
        "broker_url": settings.redis_url,
        "broker_transport": "tasks.transport:Transport",
        "result_backend": f"tasks.results.ResultBackend+{settings.redis_url}",
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_S},
        "redis_socket_connect_timeout": 2,
        "redis_socket_timeout": 5,
        "redis_backend_health_check_interval": 10,
        "broker_connection_retry_on_startup": True,
        "task_queues": (Queue(interactive, routing_key=interactive), Queue(bulk, routing_key=bulk)),
        "task_default_queue": interactive,
        "task_routes": {
            PREDICT_TASK: {"queue": interactive},
            PREDICT_BATCH_TASK: {"queue": interactive},
            CLAIM_TASK: {"queue": bulk},
            TRAIN_TASK: {"queue": bulk},
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # At-least-once: ack after the task ran, and give the message back when the child process dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per process: a prefetched message waits behind a running one and cannot
        # be taken by an idle worker; the cost is one broker round trip per task.
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT_S,
        # Results live only until the awaiting caller read them (it deletes them); unread ones expire.
        "result_expires": 600,
        "result_extended": False,
        "task_ignore_result": False,
        # Fail fast when Redis is gone: the API answers 503 instead of blocking a thread.
        "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.05, "interval_max": 0.1},
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_concurrency": settings.queue_workers,
        # Prefork, with a shutdown that cannot hang on a task message half written to a pool process.
        "worker_pool": "tasks.pool:TaskPool",
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def create_celery(settings: Settings, *, main: str = "tasks") -> InferenceCelery:
    app = InferenceCelery(main, set_as_current=True)
    app.settings = settings
    app.conf.update(celery_config(settings))
    queue_wait.stamp_messages()  # every message carries its enqueue time, for the workers' queue-wait histogram
    return app
