"""Deadlines and load shedding end to end: expired work never runs, a full queue answers 429 at once,
an unreachable Redis answers 503 at once, and each caller hears back by its deadline."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import requests

from devtools.processes import ManagedProcess, start_api, start_worker
from devtools.services import free_port, start_redis
from settings import Settings
from tasks.celery_config import PREDICT_BATCH_TASK, create_celery
from tasks.queues import QueueProbe, register_batch

ROW = [50.0, 49.0, 48.5, 47.0, 45.0, 52.0, 51.0, 0.5, 0.86]
# How late an answer may reach the client on a loaded 2-core machine (scheduling, the result collector's
# wake-up, loopback): generous, and still far below INFERENCE_TIMEOUT (15 s), the next thing a caller could wait for.
LATE_S = 5.0


@pytest.fixture
def idle_api(module_env: dict[str, str], module_redis: redis.Redis, log_dir: Path) -> Iterator[ManagedProcess]:
    """An API with no worker behind it (admission needs Redis and a model, not a live worker)."""
    module_redis.flushdb()
    server = start_api({**module_env, "QUEUE_MAXSIZE": "3"}, log_dir, free_port(), ready=False)
    server.wait_for(lambda: bool(server.events("model_discovered")), 30, "the promoted model")
    yield server
    server.stop()


def post(url: str, timeout_ms: int | None = None) -> requests.Response:
    headers = {"X-Request-Timeout-Ms": str(timeout_ms)} if timeout_ms is not None else {}
    return requests.post(f"{url}/predict", json={"features": ROW}, headers=headers, timeout=30)


@pytest.mark.parametrize("microbatch", ["true", "false"])
def test_work_that_expires_in_the_queue_is_never_run(
    module_env: dict[str, str], module_redis: redis.Redis, log_dir: Path, microbatch: str
) -> None:
    # Given a request with a 600 ms deadline and no worker to take it
    module_redis.flushdb()
    idle_api = start_api({**module_env, "ENABLE_MICROBATCH": microbatch}, log_dir, free_port(), ready=False)
    idle_api.wait_for(lambda: bool(idle_api.events("model_discovered")), 30, "the promoted model")
    started = time.monotonic()
    response = post(idle_api.url, timeout_ms=600)
    elapsed = time.monotonic() - started
    idle_api.stop()
    # Then its caller gets 504 at its deadline (counted from arrival, after the client started its clock),
    # not earlier, and not as late as INFERENCE_TIMEOUT
    assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"
    # (10 ms below: deadlines are whole epoch milliseconds, rounded at admission)
    assert 0.59 <= elapsed < 0.6 + LATE_S, f"answered after {elapsed:.3f}s"
    sent = idle_api.events("batch_sent" if microbatch == "true" else "queue_enqueued")
    task_id = sent[-1]["task_id"]
    # When a worker starts after the deadline
    worker = start_worker(module_env, log_dir, "--without-mingle", "--without-gossip")
    try:
        worker.wait_for(lambda: any(e.get("task_id") == task_id for e in worker.events("ttl_expired")), 30,
                        "ttl_expired for the queued task")
        # Then it dropped the task without running it, and Celery reports it revoked
        assert not any(e.get("task_id") == task_id for e in worker.events("predict_inference_start"))
        meta = json.loads(module_redis.get(f"celery-task-meta-{task_id}") or b"{}")
        assert meta.get("status") == "REVOKED"
        assert module_redis.llen("inference") == 0
    finally:
        worker.stop()


def test_a_batch_that_expires_in_the_queue_stops_counting_towards_its_depth(
    module_env: dict[str, str], module_redis: redis.Redis, settings: Settings, log_dir: Path
) -> None:
    # Given a micro-batch of 3 requests queued with a deadline that has passed (as under overload)
    module_redis.flushdb()
    app = create_celery(settings, main="expired-batch-test")
    task_id = f"expired-batch-{uuid.uuid4().hex[:8]}"
    past = int(time.time() * 1000) - 1000
    items = [{"id": f"{task_id}-{i}", "row": ROW, "deadline_ms": past} for i in range(3)]
    register_batch(module_redis, settings.celery_queue, task_id, len(items))
    app.send_task(PREDICT_BATCH_TASK, args=[items], task_id=task_id, queue=settings.celery_queue,
                  expires=datetime.fromtimestamp(past / 1000, tz=UTC))
    probe = QueueProbe(module_redis, settings.celery_queue)
    assert probe.sample().depth == 3
    # When a worker takes the message and Celery drops it as expired, before it is ever "received"
    worker = start_worker(module_env, log_dir, "--without-mingle", "--without-gossip")
    try:
        worker.wait_for(lambda: any(e.get("task_id") == task_id for e in worker.events("ttl_expired")), 30,
                        "ttl_expired for the batch")
        # Then none of its requests counts as queued any more
        assert probe.sample().depth == 0
    finally:
        worker.stop()


def test_a_deadline_already_past_is_504_without_enqueuing(idle_api: ManagedProcess, module_redis: redis.Redis) -> None:
    for headers in ({"X-Request-Timeout-Ms": "0"}, {"X-Request-Deadline-Ms": str(int(time.time() * 1000) - 1000)}):
        response = requests.post(f"{idle_api.url}/predict", json={"features": ROW}, headers=headers, timeout=5)
        assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"
    assert module_redis.llen("inference") == 0
    assert idle_api.events("queue_enqueued") == []


def test_a_full_queue_sheds_with_429_and_a_retry_after(idle_api: ManagedProcess, module_redis: redis.Redis) -> None:
    # Given the queue filled to its bound (3) by requests that wait for a worker (none comes: they stay queued,
    # and counted, past their deadline)
    fillers = [threading.Thread(target=post, args=(idle_api.url, 3000)) for _ in range(3)]
    for thread in fillers:
        thread.start()
    probe = QueueProbe(module_redis, "inference")  # counts requests, micro-batched or not
    deadline = time.monotonic() + 10
    while probe.depth() < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe.depth() == 3
    # When more requests arrive, each with a 30 s deadline
    responses = [post(idle_api.url, 30_000) for _ in range(20)]
    # Then each is refused with 429, a JSON body and an integer Retry-After, without waiting: no worker will
    # ever free a slot, so an answer long before the 30 s deadline is an answer that waited for nothing
    assert [r.status_code for r in responses] == [429] * 20
    assert all(r.json()["error"]["code"] == "queue_full" and r.headers["Retry-After"].isdigit() for r in responses)
    assert all(r.elapsed.total_seconds() < LATE_S for r in responses)
    rejected = idle_api.wait_for_event("queue_job_rejected_full", 60, count=20)
    assert len(rejected) == 20 and all(e["depth"] >= 3 and e["maxsize"] == 3 for e in rejected)
    for thread in fillers:
        thread.join(10)


def test_requests_beyond_the_backlog_bound_get_429_and_the_wait_counts_against_their_deadline(
    module_env: dict[str, str], module_redis: redis.Redis, log_dir: Path, demo_model: str
) -> None:
    # Given an API with 2 request threads, a bound of 4 and no worker, and both threads held until their
    # 8 s deadline by requests already enqueued (time enough, on a loaded machine, for the callers below to arrive
    # and be answered while the threads are still held)
    module_redis.flushdb()
    server = start_api({**module_env, "QUEUE_MAXSIZE": "4", "HTTP_THREADS": "2"}, log_dir, free_port(), ready=False)
    try:
        server.wait_for(lambda: bool(server.events("model_discovered")), 30, "the promoted model")
        answers: list[tuple[str, int, float, str]] = []  # (who, status, when answered (monotonic), body)
        lock = threading.Lock()

        def call(who: str, timeout_ms: int) -> None:
            response = post(server.url, timeout_ms)
            with lock:
                answers.append((who, response.status_code, time.monotonic(), response.text))

        hold_s = 8.0
        holders = [threading.Thread(target=call, args=("holder", int(hold_s * 1000))) for _ in range(2)]
        # The threads free up at the holders' deadline, counted from their arrival: not before this
        threads_free_at = time.monotonic() + hold_s
        for thread in holders:
            thread.start()
        server.wait_for(lambda: len(server.events("queue_enqueued")) == 2, 60, "both threads taken")
        # When 10 requests with a 1 s deadline arrive at once
        callers = [threading.Thread(target=call, args=("caller", 1000)) for _ in range(10)]
        for thread in callers:
            thread.start()
        for thread in holders + callers:
            thread.join(30)
        # Then 4 wait in the backlog and the other 6 are refused with 429
        statuses = sorted(status for who, status, _, _ in answers if who == "caller")
        assert statuses == [429] * 6 + [504] * 4, statuses
        assert [status for who, status, _, _ in answers if who == "holder"] == [504, 504]
        shed = [(at, json.loads(text)) for who, status, at, text in answers if who == "caller" and status == 429]
        assert all(body["error"]["code"] == "queue_full" for _, body in shed)
        # at once: every refusal reached its caller while both threads were still held
        assert max(at for at, _ in shed) < threads_free_at
        # And the ones that waited get their 504 only when a thread frees up (at the holders' deadline), already
        # past their own 1 s deadline (counted from arrival) and without being run: nothing more was enqueued
        late = [at for who, status, at, _ in answers if who == "caller" and status == 504]
        # (10 ms below: deadlines are whole epoch milliseconds, rounded at admission)
        assert all(threads_free_at - 0.01 <= at < threads_free_at + LATE_S for at in late), (threads_free_at, late)
        assert len(server.events("queue_enqueued")) == 2
        rejected = server.wait_for_event("queue_job_rejected_full", 60, count=6)
        assert all(e["stage"] == "http" and e["maxsize"] == 4 for e in rejected)
    finally:
        server.stop()


def test_an_unreachable_redis_is_a_fast_503_and_the_api_recovers(
    module_env: dict[str, str], log_dir: Path, demo_model: str
) -> None:
    # Given an API on a Redis of its own
    own = start_redis(workdir=log_dir)
    server = start_api({**module_env, "REDIS_URL": f"redis://{own.address}/0"}, log_dir, free_port(), ready=False)
    try:
        server.wait_for(lambda: bool(server.events("model_discovered")), 30, "the promoted model")
        assert post(server.url, 300).status_code == 504  # admitted, no worker: expires at its deadline
        # When Redis goes away
        own.stop()
        responses = [post(server.url, 5000) for _ in range(20)]
        # Then every request is answered 503 with Retry-After, without waiting for its 5 s deadline (the API's Redis
        # client does not retry), and liveness is unaffected
        assert {r.status_code for r in responses} == {503}
        assert all(r.json()["error"]["code"] == "redis_unavailable" and r.headers["Retry-After"].isdigit() for r in responses)
        assert max(r.elapsed.total_seconds() for r in responses) < LATE_S
        assert requests.get(f"{server.url}/healthz", timeout=2).status_code == 200
        ready = requests.get(f"{server.url}/readyz", timeout=2)
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unreachable"
        # And when Redis is back, requests are admitted again without a restart
        own.start_again()
        assert post(server.url, 300).status_code == 504
    finally:
        server.stop()
        own.stop()
