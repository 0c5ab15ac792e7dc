"""The per-second budget of a log event (tasks/logs.py `LogBudget`)."""

from __future__ import annotations

import pytest

from tasks import logs
from tasks.logs import LogBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(logs.time, "monotonic", clock)
    return clock


def test_every_occurrence_is_logged_within_the_burst(clock: Clock) -> None:
    budget = LogBudget(burst=3, per_s=1.0)
    assert [budget.take() for _ in range(3)] == [0, 0, 0]


def test_beyond_the_burst_lines_are_left_out_and_the_next_line_counts_them(clock: Clock) -> None:
    budget = LogBudget(burst=3, per_s=1.0)
    taken = [budget.take() for _ in range(10)]
    assert taken == [0, 0, 0] + [None] * 7
    clock.now += 0.5  # still the same second
    assert budget.take() is None
    clock.now += 0.5  # a new second: the first line says how many were left out
    assert [budget.take() for _ in range(4)] == [8, 0, 0, None]
