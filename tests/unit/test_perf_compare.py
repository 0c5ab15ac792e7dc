"""perf `compare`'s CPU per prediction: each process tree's CPU seconds over the valid answers, and their total."""

from __future__ import annotations

import math

import pytest

from perf.compare import cpu_ms_per_answer


def test_cpu_per_answer_is_each_tree_and_the_total_in_milliseconds() -> None:
    # Given 1.5 s of API CPU, 0.45 s of worker CPU and no Redis CPU over 3,000 valid answers
    cpu_s = {"http server": 1.5, "worker": 0.45, "redis": 0.0}
    # When it is divided per answer
    per = cpu_ms_per_answer(cpu_s, 3000)
    # Then each tree is in milliseconds per answer, and the total is their sum
    assert per == pytest.approx({"http server": 0.5, "worker": 0.15, "redis": 0.0, "total": 0.65})


def test_without_answers_there_is_no_figure_rather_than_an_infinite_one() -> None:
    per = cpu_ms_per_answer({"http server": 2.0}, 0)
    assert math.isnan(per["http server"]) and math.isnan(per["total"])
