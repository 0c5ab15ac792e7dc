"""The Kafka bridge: claims in, Celery tasks out, offsets committed only after results.

    __main__.py   `python -m bridge`: settings, logging, start-up checks, run
    startup.py    wait for Kafka (STARTUP_TIMEOUT_S), create missing topics
    errors.py     the bridge's error types
    consumer.py   kafka-python wrapped: our exceptions, the group's consumer, producer and topics
    payload.py    a value as a JSON object, and the field checks claims and model records share (pure, total)
    claim.py      a record becomes a Claim or a ClaimRejected with its DLQ code
    offsets.py    per partition, the offset that is safe to commit (pure)
    flow.py       pause/resume hysteresis over the in-flight count (pure)
    dispatch.py   claims to Celery tasks and their results back, through one collector thread
    deadletter.py the DLQ producer
    models.py     model-selected and model-training records: parsed (pure), then promoted or dispatched
    work.py       a record as the work its topic asks for (pure)
    rebalance.py  the rebalance listener: commit_async on revoke, changes handed to the poll loop
    assignment.py what the poll loop does with a revoke or an assignment
    redelivery.py claims whose results may never come, sent again (Redis restarted, worker lost, overdue)
    commits.py    the commit step: safe offsets, at most once a second
    loop.py       the poll loop that ties them together; only it touches the consumer
    http.py       /metrics, /healthz, /readyz
    lag.py        committed offset, end offset and lag per partition: `python -m bridge.lag`, and the
                  LagMonitor thread that exports them as metrics
"""
