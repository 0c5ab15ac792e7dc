"""Admission against a real Redis: the queue length counts every priority key, a full queue sheds with a
computed Retry-After, and an unreachable Redis answers 503 fast instead of hanging."""

import socket
import time

import pytest
import redis

from devtools.services import free_port
from settings import Settings
from tasks.queues import PRIORITY_SEP, QueueProbe, completed_key
from webapp.errors import ApiError
from webapp.gateway import Gateway

# Scheduling delay a loaded 2-core machine may add to a bounded wait.
LOAD_MARGIN_S = 1.5


def test_queue_length_sums_the_priority_sub_queues(redis_client: redis.Redis) -> None:
    redis_client.lpush("inference", "a", "b")
    redis_client.lpush(f"inference{PRIORITY_SEP}3", "c")
    redis_client.lpush(f"inference{PRIORITY_SEP}9", "d", "e", "f")
    redis_client.set(completed_key("inference"), 42)
    sample = QueueProbe(redis_client, "inference").sample()
    assert (sample.depth, sample.completed) == (6, 42)


def test_a_full_queue_is_shed_with_a_numeric_retry_after(base_settings: Settings, redis_client: redis.Redis) -> None:
    # Given a bound of 5, five queued messages and workers that completed 10 since the last sample
    gateway = Gateway(base_settings.model_copy(update={"queue_maxsize": 5}))
    redis_client.lpush("inference", *range(5))
    gateway.completions.min_interval_s = 0.0
    gateway.sample_max_age_s = 0.0  # every call samples Redis
    redis_client.set(completed_key("inference"), 0)
    with pytest.raises(ApiError) as first:
        gateway.admit()
    assert first.value.status == 429
    redis_client.set(completed_key("inference"), 10)
    # When admission is asked
    with pytest.raises(ApiError) as raised:
        gateway.admit()
    # Then it is a 429 with an integer Retry-After derived from the measured rate
    assert (raised.value.status, raised.value.code) == (429, "queue_full")
    assert int(raised.value.headers["Retry-After"]) >= 1
    # And one slot freed admits again
    redis_client.rpop("inference")
    assert gateway.admit().depth == 4


def test_the_bound_is_off_when_use_bounded_queue_is_false(base_settings: Settings, redis_client: redis.Redis) -> None:
    gateway = Gateway(base_settings.model_copy(update={"queue_maxsize": 1, "use_bounded_queue": False}))
    redis_client.lpush("inference", 1, 2, 3)
    assert gateway.admit().depth == 3


@pytest.mark.parametrize("redis_at", ["nothing listening", "a listener that never answers"])
def test_unreachable_redis_is_a_503_without_retrying_or_hanging(base_settings: Settings, redis_at: str) -> None:
    # Given Redis unreachable: a port that refuses connections, or one that accepts them and never answers
    # (the case a timeout must bound)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = free_port() if redis_at == "nothing listening" else silent.getsockname()[1]
        gateway = Gateway(base_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"}))
        # When admission is asked
        started = time.monotonic()
        with pytest.raises(ApiError) as raised:
            gateway.admit()
        took = time.monotonic() - started
    # Then it is a 503 with an integer Retry-After, within the gateway's own Redis timeouts (50 ms to connect,
    # 500 ms to read, no retry) and a margin for a loaded machine, not after retries or a hang
    assert (raised.value.status, raised.value.code) == (503, "redis_unavailable")
    assert raised.value.headers["Retry-After"].isdigit()
    assert took < 0.5 + LOAD_MARGIN_S, f"took {took:.2f}s"
