"""The offset tracker: per partition, the committed offset never passes an unfinished claim."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.offsets import OffsetTracker

pytestmark = pytest.mark.unit

P = ("claims", 0)


def test_nothing_polled_nothing_to_commit() -> None:
    assert OffsetTracker().to_commit() == {}


def test_commits_the_lowest_unfinished_offset() -> None:
    # Given three claims in flight
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.start(P, offset)
    # When the later two finish first
    tracker.finish(P, 12)
    tracker.finish(P, 11)
    # Then the commit stays at the first, unfinished one
    assert tracker.to_commit() == {P: 10}
    # And when it finishes too, the commit moves past all of them
    tracker.finish(P, 10)
    assert tracker.to_commit() == {P: 13}
    assert tracker.in_flight == 0


def test_skipped_records_advance_only_when_nothing_below_is_pending() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.start(P, 0)
    tracker.skip(P, 1)  # expired at intake
    assert tracker.to_commit() == {P: 0}
    tracker.finish(P, 0)
    assert tracker.to_commit() == {P: 2}


def test_to_commit_reports_only_moved_offsets() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.skip(P, 4)
    tracker.committed(tracker.to_commit())
    assert tracker.to_commit() == {}
    tracker.skip(P, 5)
    assert tracker.to_commit() == {P: 6}


def test_a_failed_commit_is_offered_again() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.skip(P, 0)
    tracker.committed({P: 1})
    tracker.uncommitted([P])
    assert tracker.to_commit() == {P: 1}


def test_dropped_partitions_forget_their_claims() -> None:
    # Given claims in flight on two partitions
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    other = ("claims", 1)
    tracker.start(P, 0)
    tracker.start(other, 0)
    # When one partition is revoked
    assert tracker.drop([P]) == 1
    # Then its late result is not ours to finish, and only the other partition remains
    assert tracker.finish(P, 0) is False
    assert tracker.owns(other, 0)
    assert tracker.to_commit() == {other: 0}


def test_finishing_twice_is_harmless() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.start(P, 3)
    assert tracker.finish(P, 3) is True
    assert tracker.finish(P, 3) is False
    assert tracker.to_commit() == {P: 4}


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[int, bool]], list[int]]:
    """Records on one partition (offset, dispatched or finished at intake), and an order of completions."""
    count = draw(st.integers(min_value=1, max_value=60))
    first = draw(st.integers(min_value=0, max_value=1000))
    records = [(first + i, draw(st.booleans())) for i in range(count)]
    started = [offset for offset, dispatched in records if dispatched]
    return records, draw(st.permutations(started))


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_committed_offset_never_passes_an_unfinished_claim(
    history: tuple[list[tuple[int, bool]], list[int]], data: st.DataObject
) -> None:
    records, completions = history
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    unfinished: set[int] = set()
    polled = 0
    done = 0
    last_committed = -1
    # Interleave polling and completions in any order the strategy picks, committing after every step.
    while polled < len(records) or done < len(completions):
        can_complete = [offset for offset in completions[done:done + 1] if offset in unfinished]
        poll = polled < len(records) and (not can_complete or data.draw(st.booleans()))
        if poll:
            offset, dispatched = records[polled]
            polled += 1
            if dispatched:
                tracker.start(P, offset)
                unfinished.add(offset)
            else:
                tracker.skip(P, offset)
        else:
            offset = completions[done]
            done += 1
            assert tracker.finish(P, offset)
            unfinished.discard(offset)
        commit = tracker.to_commit().get(P)
        if commit is not None:
            # Then the commit never marks an unfinished claim as consumed, and never goes backwards
            assert all(commit <= offset for offset in unfinished)
            assert commit >= last_committed
            tracker.committed({P: commit})
            last_committed = commit
    # And once everything finished, it reaches the end of what was polled
    assert tracker.positions()[P] == records[-1][0] + 1
    assert tracker.in_flight == 0
