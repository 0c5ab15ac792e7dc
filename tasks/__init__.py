"""Tasks: the inference core, the Celery app and its tasks, and what the API and the bridge share.

The inference core (knows nothing of HTTP, Celery or Kafka):

    inference.py     input validation and batch prediction: `validate_rows`, `LoadedModel`
    model_store.py   versioned model artifacts in object storage, and the pointer to the promoted one
    serving.py       the promoted model kept current, reloaded on promotion without a restart
    errors.py        the error tree (InvalidInput, ObjectMissing, StorageUnavailable, ...)

The Celery app and its tasks (the worker side):

    celery.py        entry point: `celery -A tasks worker|flower` finds `app` here
    celery_config.py the app factory: broker, result backend, lanes, delivery guarantees, task names
    predict.py       tasks.predict and tasks.predict_batch (the interactive lane)
    claim_scoring.py tasks.score_claims (the bulk lane: Parquet in, result JSON out)
    training.py      tasks.train_candidate
    deadline.py      the deadline policy every task inherits (Celery `expires`, checked last)
    worker.py        Celery signals wiring a worker: logging, start-up checks, prewarm, heartbeat
    pool.py          the prefork pool, with shutdowns that cannot hang
    runtime.py       what a pool process holds: clients and the promoted model
    transport.py     kombu's Redis transport, one client per channel
    worker_metrics.py, flower_config.py, queue_wait.py: a node's /metrics, Flower's auth, queue-wait stamps

Shared by the API and the bridge (producers of work):

    queues.py        queue depth and completion rate in one round trip; Retry-After
    results.py       results collected by one thread; the result store in one round trip
    names.py         S3 bucket and object key rules for claims
    storage.py       the object store adapter (MinIO client, our errors)
    heartbeat.py     live worker nodes, for readiness
    logs.py, metrics.py, startup.py: the log vocabulary, metric names, start-up checks

Scripts: `python -m tasks.demo_model` (train, store, promote the demo model), `python -m tasks.promote`.

Importing this package alone builds nothing: the Celery app is built from the environment in `tasks.celery`.
"""
