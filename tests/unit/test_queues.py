"""Queue keys, drain rate and Retry-After: the arithmetic behind load shedding."""

import pytest

from tasks.queues import CompletionRate, QueueSample, queue_keys, retry_after_s


def test_queue_keys_cover_every_priority_sub_queue() -> None:
    keys = queue_keys("inference")
    assert keys[0] == "inference"
    assert {"inference\x06\x163", "inference\x06\x166", "inference\x06\x169"} <= set(keys)


@pytest.mark.parametrize("depth, rate, expected", [
    (100, 50.0, 2), (100, 30.0, 4), (1, 1000.0, 1), (10_000, 1.0, 30), (5, 0.0, 30),
])
def test_retry_after_is_depth_over_drain_rate_rounded_up_and_capped(depth: int, rate: float, expected: int) -> None:
    assert retry_after_s(depth, rate) == expected


def test_drain_rate_follows_the_completion_counter() -> None:
    rate = CompletionRate(alpha=0.5, min_interval_s=0.5)
    assert rate.observe(QueueSample(0, 0, at=0.0)) == 0.0
    assert rate.observe(QueueSample(0, 100, at=1.0)) == pytest.approx(100.0)
    assert rate.observe(QueueSample(0, 150, at=1.2)) == pytest.approx(100.0)  # too soon: unchanged
    assert rate.observe(QueueSample(0, 200, at=2.0)) == pytest.approx(100.0)
    assert rate.observe(QueueSample(0, 200, at=3.0)) == pytest.approx(50.0)  # workers stopped: decays


def test_an_idle_gap_is_not_read_as_a_slow_drain() -> None:
    rate = CompletionRate(alpha=0.5, min_interval_s=0.5, max_interval_s=2.0)
    rate.observe(QueueSample(0, 0, at=0.0))
    assert rate.observe(QueueSample(0, 100, at=1.0)) == pytest.approx(100.0)
    # Nobody asked for a minute, then a burst: 5 completions over 60 s is not the drain rate
    assert rate.observe(QueueSample(0, 105, at=61.0)) == pytest.approx(100.0)
    assert rate.observe(QueueSample(0, 145, at=61.5)) == pytest.approx(90.0)  # 80/s measured in the burst


def test_drain_rate_before_any_interval_is_zero_so_nothing_is_refused_on_it() -> None:
    rate = CompletionRate(min_interval_s=0.5)
    rate.observe(QueueSample(0, 3, at=0.0))
    assert rate.observe(QueueSample(0, 4, at=30.0)) == 0.0


def test_drain_rate_survives_a_counter_reset() -> None:
    rate = CompletionRate(min_interval_s=0.1)
    rate.observe(QueueSample(0, 500, at=0.0))
    rate.observe(QueueSample(0, 10, at=1.0))
    assert rate.observe(QueueSample(0, 60, at=2.0)) == pytest.approx(50.0)
