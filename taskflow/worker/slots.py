"""Slot accounting: how many handlers may start, and how far ahead to claim.

Pure bookkeeping, no I/O: the worker asks it what it may claim and tells it
what it claimed, started and finished.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# At most this many times the slots are claimed ahead. The bound that
# matters is time (worker_claim_ahead_ms of work at recent handler times);
# this one only caps what a wrong estimate can hold back (claimed-ahead tasks
# wait for this worker's slots, with their leases). Short handlers reach it:
# 16, not 4, took a drain of no-op tasks from ~7,200 to ~10,000 tasks/s, a
# claim statement carrying ~20 tasks instead of ~10 (taskflow bench --drain
# 30000, 2 processes x 8 slots). Celery's prefetch for short tasks is larger.
CLAIM_AHEAD_SLOTS_FACTOR = 16
# Weight of the newest handler time in the moving average.
HANDLER_TIME_WEIGHT = 0.1


@dataclass
class Slots(Generic[T]):
    """``concurrency`` slots, each running one handler; tasks claimed ahead of
    a free slot wait in ``ready``, in claim order.

    A slot is a running handler: writing its outcome does not hold one. Ids in
    a claim statement that has not answered yet count against the slots too,
    so two claim paths never take more than the slots can start.
    """

    concurrency: int
    claim_ahead_seconds: float
    running: int = 0
    claiming: int = 0
    handler_seconds: float | None = None  # moving average
    ready: collections.deque[T] = field(default_factory=collections.deque)

    @property
    def free(self) -> int:
        return self.concurrency - self.running - len(self.ready) - self.claiming

    def claim_capacity(self) -> int:
        """Free slots plus the claim-ahead allowance.

        One claim statement per free slot is what a task would cost in
        Postgres if handlers were instant; claiming a little ahead lets one
        statement take a message's worth of ids. The allowance is what the
        slots are expected to start within ``claim_ahead_seconds``, judged by
        recent handler times, so long handlers get none: a task claimed ahead
        holds its lease while it waits, and no other worker can take it.
        """
        return self.free + self.claim_ahead()

    def claim_ahead(self) -> int:
        average = self.handler_seconds
        if self.claim_ahead_seconds <= 0 or average is None:
            return 0
        expected = self.concurrency * self.claim_ahead_seconds / max(average, 1e-6)
        return min(int(expected), CLAIM_AHEAD_SLOTS_FACTOR * self.concurrency)

    def observe_handler_time(self, seconds: float) -> None:
        previous = self.handler_seconds
        self.handler_seconds = (
            seconds
            if previous is None
            else previous * (1 - HANDLER_TIME_WEIGHT) + seconds * HANDLER_TIME_WEIGHT
        )

    def take_startable(self) -> T | None:
        """The next ready task, its slot taken, if a slot is free."""
        if not self.ready or self.running >= self.concurrency:
            return None
        self.running += 1
        return self.ready.popleft()

    def release(self) -> None:
        self.running -= 1
