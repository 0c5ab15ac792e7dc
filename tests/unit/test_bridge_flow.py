"""Pause/resume hysteresis: pause at >= pause%, resume at <= resume%, never flapping in between."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.flow import FlowControl, Transition

pytestmark = pytest.mark.unit


def test_pauses_at_the_threshold_and_resumes_below_the_other() -> None:
    flow = FlowControl(maxsize=40, pause_pct=80, resume_pct=50)
    assert (flow.pause_at, flow.resume_at) == (32, 20)
    assert flow.update(31) is None
    assert flow.update(32) is Transition.PAUSE
    assert flow.paused
    # Between the thresholds nothing changes, in either direction
    assert flow.update(25) is None
    assert flow.update(40) is None
    assert flow.update(21) is None
    assert flow.update(20) is Transition.RESUME
    assert not flow.paused
    assert flow.update(25) is None


def test_room_is_the_hard_bound() -> None:
    flow = FlowControl(maxsize=10, pause_pct=80, resume_pct=50)
    assert flow.room(0) == 10
    assert flow.room(7) == 3
    assert flow.room(10) == 0
    assert flow.room(12) == 0


def test_pct() -> None:
    assert FlowControl(maxsize=40, pause_pct=80, resume_pct=50).pct(33) == 82.5


@pytest.mark.parametrize(("pause", "resume"), [(50, 50), (40, 60), (101, 50)])
def test_rejects_thresholds_that_cannot_work(pause: int, resume: int) -> None:
    with pytest.raises(ValueError, match="resume_pct"):
        FlowControl(maxsize=10, pause_pct=pause, resume_pct=resume)


@given(st.integers(1, 2000), st.integers(1, 100), st.data())
def test_resume_is_always_below_pause(maxsize: int, pause: int, data: st.DataObject) -> None:
    resume = data.draw(st.integers(0, pause - 1))
    flow = FlowControl(maxsize=maxsize, pause_pct=pause, resume_pct=resume)
    assert 0 <= flow.resume_at < flow.pause_at <= maxsize


@given(st.lists(st.integers(0, 60), max_size=200))
def test_transitions_alternate(depths: list[int]) -> None:
    flow = FlowControl(maxsize=40, pause_pct=80, resume_pct=50)
    seen = [t for t in (flow.update(d) for d in depths) if t is not None]
    assert all(a is not b for a, b in zip(seen, seen[1:], strict=False))
    if seen:
        assert seen[0] is Transition.PAUSE
