"""Pause/resume hysteresis over the bridge's depth (claims in flight, guarded by the bulk queue's length).

Backpressure is a bound, not a buffer: at >= PAUSE_THRESHOLD_PCT of QUEUE_MAXSIZE the bridge pauses all
of its partitions (and keeps polling, so the group does not evict it); at <= RESUME_THRESHOLD_PCT it
resumes. The gap between the two keeps it from flapping on every completion: a wide gap means fewer
pause/resume round trips, a narrow one keeps workers fed more evenly. `room` is the hard bound: records
beyond it are never taken, whatever a poll returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Transition(Enum):
    PAUSE = "pause"
    RESUME = "resume"


@dataclass
class FlowControl:
    maxsize: int
    pause_pct: int
    resume_pct: int
    paused: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.resume_pct < self.pause_pct <= 100:
            raise ValueError("need 0 <= resume_pct < pause_pct <= 100")
        if self.maxsize < 1:
            raise ValueError("maxsize must be at least 1")

    @property
    def pause_at(self) -> int:
        return max(1, math.ceil(self.maxsize * self.pause_pct / 100))

    @property
    def resume_at(self) -> int:
        return min(self.pause_at - 1, math.floor(self.maxsize * self.resume_pct / 100))

    def pct(self, depth: int) -> float:
        return round(100 * depth / self.maxsize, 1)

    def room(self, depth: int) -> int:
        """How many more claims may be taken now."""
        return max(0, self.maxsize - depth)

    def update(self, depth: int) -> Transition | None:
        """The transition `depth` calls for, if any (the state changes with it)."""
        if not self.paused and depth >= self.pause_at:
            self.paused = True
            return Transition.PAUSE
        if self.paused and depth <= self.resume_at:
            self.paused = False
            return Transition.RESUME
        return None
