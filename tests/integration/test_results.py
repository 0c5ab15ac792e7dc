"""The result collector against a real Redis: one thread resolves every awaited task."""

import time

import redis
from celery import states

from settings import Settings
from tasks.celery_app import create_celery
from tasks.results import ResultCollector


def test_results_resolve_their_futures_and_are_deleted(base_settings: Settings, redis_client: redis.Redis) -> None:
    app = create_celery(base_settings, main="test-results")
    collector = ResultCollector(redis_client, app.backend).start()
    try:
        # Given three awaited tasks
        futures = {task_id: collector.watch(task_id) for task_id in ("t1", "t2", "t3")}
        # When a worker stores a success, a revocation and a failure
        app.backend.store_result("t1", {"predictions": [1.0]}, states.SUCCESS)
        app.backend.mark_as_revoked("t2", reason="expired")
        app.backend.mark_as_failure("t3", ValueError("boom"))
        # Then each future carries its outcome, and the result keys are gone
        outcomes = {task_id: future.result(timeout=5) for task_id, future in futures.items()}
        assert outcomes["t1"].ok and outcomes["t1"].result == {"predictions": [1.0]}
        assert outcomes["t2"].expired
        assert outcomes["t3"].state == states.FAILURE and isinstance(outcomes["t3"].result, ValueError)
        assert redis_client.exists(*(app.backend.get_key_for_task(t) for t in futures)) == 0
        assert collector.pending == 0
    finally:
        collector.stop()


def test_forgotten_tasks_are_no_longer_polled(base_settings: Settings, redis_client: redis.Redis) -> None:
    app = create_celery(base_settings, main="test-results")
    collector = ResultCollector(redis_client, app.backend).start()
    try:
        future = collector.watch("late")
        collector.forget(["late"])
        app.backend.store_result("late", {"predictions": [1.0]}, states.SUCCESS)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline and not future.done():
            time.sleep(0.01)
        assert not future.done() and collector.pending == 0
    finally:
        collector.stop()
