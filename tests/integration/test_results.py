"""The result collector against a real Redis: one thread resolves every awaited task."""

import time

import pytest
import redis
from celery import states

from settings import Settings
from tasks.celery_config import create_celery
from tasks.results import ResultCollector, store_many

# Both ways of hearing about results: polling the keys, and the pattern subscription (with its safety poll).
MODES = pytest.mark.parametrize("subscribe", [False, True], ids=["polling", "subscribed"])


@MODES
def test_results_resolve_their_futures_and_are_deleted(base_settings: Settings, redis_client: redis.Redis,
                                                       subscribe: bool) -> None:
    app = create_celery(base_settings, main="test-results")
    collector = ResultCollector(redis_client, app.backend, subscribe=subscribe).start()
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


@MODES
def test_forgotten_tasks_are_no_longer_polled(base_settings: Settings, redis_client: redis.Redis, subscribe: bool) -> None:
    app = create_celery(base_settings, main="test-results")
    collector = ResultCollector(redis_client, app.backend, subscribe=subscribe).start()
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


def test_subscribed_collector_still_finds_results_stored_without_a_message(base_settings: Settings,
                                                                          redis_client: redis.Redis) -> None:
    app = create_celery(base_settings, main="test-results")
    collector = ResultCollector(redis_client, app.backend, subscribe=True).start()
    try:
        # Given an awaited task, and a result for another process's task published meanwhile
        future = collector.watch("quiet")
        other = collector.watch("other")
        collector.forget(["other"])
        app.backend.store_result("other", {"predictions": [2.0]}, states.SUCCESS)
        # When its result is stored without a publish (as the claims' batch results are)
        store_many(app.backend, [("quiet", states.SUCCESS, {"predictions": [3.0]})])
        # Then the safety poll resolves it, and the other process's result is left where it is
        assert future.result(timeout=5).result == {"predictions": [3.0]}
        assert not other.done() and redis_client.exists(app.backend.get_key_for_task("other")) == 1
    finally:
        collector.stop()


def test_a_stored_success_is_never_overwritten_and_any_other_state_is(base_settings: Settings,
                                                                     redis_client: redis.Redis) -> None:
    app = create_celery(base_settings, main="test-results")
    backend = app.backend
    # Given a task that was retried, then failed: the failure replaces the retry
    backend.mark_as_retry("r", ValueError("again"))
    backend.mark_as_failure("r", ValueError("boom"))
    assert backend.get_task_meta("r")["status"] == states.FAILURE
    # Given a task that succeeded, then ran again (a duplicate) and failed or expired: the success stays
    backend.store_result("s", {"predictions": [2.0]}, states.SUCCESS)
    backend.mark_as_failure("s", ValueError("duplicate"))
    backend.mark_as_revoked("s", reason="expired")
    meta = backend.get_task_meta("s")
    assert meta["status"] == states.SUCCESS and meta["result"] == {"predictions": [2.0]}
    # And a stored result expires with result_expires
    assert 0 < redis_client.ttl(backend.get_key_for_task("s")) <= app.conf.result_expires


def test_storing_a_result_counts_a_completion_on_its_queue(base_settings: Settings, redis_client: redis.Redis) -> None:
    from celery.app.task import Context

    from tasks.queues import completed_key

    app = create_celery(base_settings, main="test-results")
    # Given tasks delivered from the interactive queue that succeed, fail and expire
    request = Context(delivery_info={"routing_key": "inference"})
    app.backend.store_result("c1", {"predictions": [1.0]}, states.SUCCESS, request=request)
    app.backend.mark_as_failure("c2", ValueError("boom"), request=request)
    app.backend.mark_as_revoked("c3", reason="expired", request=request)
    # Then each counts once towards the queue's drain rate; a result stored outside a delivery counts nowhere
    app.backend.store_result("c4", {"predictions": [1.0]}, states.SUCCESS)
    assert int(redis_client.get(completed_key("inference")) or 0) == 3
