"""Which offset is safe to commit, per partition: pure bookkeeping, no Kafka in here.

A record is *started* when the bridge takes it (dispatched to a worker) and *finished* when its result
arrived, it went to the DLQ, or it expired. Records finished the moment they are polled are *skipped*.
Per partition the committable offset is the lowest started-and-unfinished offset, or the last polled
offset + 1 when nothing is pending: committing it never marks an unfinished claim as consumed, so a crash
redelivers at most the claims that were in flight.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass
class PartitionOffsets:
    next_offset: int | None = None  # last polled + 1
    pending: set[int] = field(default_factory=set)
    _heap: list[int] = field(default_factory=list)  # pending offsets, plus finished ones not yet popped

    def polled(self, offset: int) -> None:
        if self.next_offset is None or offset + 1 > self.next_offset:
            self.next_offset = offset + 1

    def start(self, offset: int) -> None:
        self.polled(offset)
        if offset not in self.pending:
            self.pending.add(offset)
            heapq.heappush(self._heap, offset)

    def finish(self, offset: int) -> bool:
        if offset not in self.pending:
            return False
        self.pending.discard(offset)
        while self._heap and self._heap[0] not in self.pending:
            heapq.heappop(self._heap)
        return True

    def committable(self) -> int | None:
        if self._heap:
            return self._heap[0]
        return self.next_offset


class OffsetTracker(Generic[P]):
    """Offsets per partition `P` (a TopicPartition in the bridge, anything hashable in tests)."""

    def __init__(self) -> None:
        self._partitions: dict[P, PartitionOffsets] = {}
        self._committed: dict[P, int] = {}

    def _get(self, partition: P) -> PartitionOffsets:
        return self._partitions.setdefault(partition, PartitionOffsets())

    def start(self, partition: P, offset: int) -> None:
        """The record at `offset` was taken and is now in flight."""
        self._get(partition).start(offset)

    def skip(self, partition: P, offset: int) -> None:
        """The record at `offset` was polled and is finished already (expired, or nothing to do)."""
        self._get(partition).polled(offset)

    def finish(self, partition: P, offset: int) -> bool:
        """The record's work is done; False when it was not in flight here (partition dropped, or twice)."""
        offsets = self._partitions.get(partition)
        return offsets is not None and offsets.finish(offset)

    def owns(self, partition: P, offset: int) -> bool:
        offsets = self._partitions.get(partition)
        return offsets is not None and offset in offsets.pending

    def drop(self, partitions: Iterable[P]) -> int:
        """Forget partitions no longer owned; returns how many in-flight records were let go."""
        dropped = 0
        for partition in partitions:
            offsets = self._partitions.pop(partition, None)
            self._committed.pop(partition, None)
            if offsets is not None:
                dropped += len(offsets.pending)
        return dropped

    @property
    def in_flight(self) -> int:
        return sum(len(offsets.pending) for offsets in self._partitions.values())

    def positions(self, partitions: Iterable[P] | None = None) -> dict[P, int]:
        """The committable offset of every (or the named) partition that has polled anything."""
        chosen = self._partitions if partitions is None else {p: self._partitions[p] for p in partitions
                                                               if p in self._partitions}
        found = {p: offsets.committable() for p, offsets in chosen.items()}
        return {p: offset for p, offset in found.items() if offset is not None}

    def to_commit(self, partitions: Iterable[P] | None = None) -> dict[P, int]:
        """Committable offsets that moved since the last `committed` call."""
        return {p: offset for p, offset in self.positions(partitions).items() if self._committed.get(p) != offset}

    def committed(self, offsets: dict[P, int]) -> None:
        for partition, offset in offsets.items():
            if partition in self._partitions:
                self._committed[partition] = offset

    def uncommitted(self, partitions: Iterable[P]) -> None:
        """A commit of these partitions failed: offer their offsets again next time."""
        for partition in partitions:
            self._committed.pop(partition, None)
