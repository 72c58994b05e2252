"""A progress line every few seconds while a long phase runs, so a million-task
backlog does not look like a hang: ``  backlog fill: 400,000 / 1,000,000 tasks,
12,300/s``. The rate is over the interval since the previous line.

It only reads the phase's own counter, on the bench's event loop, once per
interval: the phase measures exactly what it measured without it. A phase
shorter than one interval prints nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

PROGRESS_INTERVAL_SECONDS = 5.0


class Progress:
    """``async with Progress("backlog fill", total, lambda: inserted): ...``"""

    def __init__(
        self,
        label: str,
        total: int,
        count: Callable[[], int],
        unit: str = "tasks",
        interval_seconds: float = PROGRESS_INTERVAL_SECONDS,
    ) -> None:
        self.label = label
        self.total = total
        self.count = count
        self.unit = unit
        self.interval_seconds = interval_seconds
        self._task: asyncio.Task[None] | None = None

    def line(self, count: int, per_second: float) -> str:
        return f"  {self.label}: {count:,} / {self.total:,} {self.unit}, {per_second:,.0f}/s"

    async def _print_lines(self) -> None:
        last_count, last_time = self.count(), time.monotonic()
        while True:
            await asyncio.sleep(self.interval_seconds)
            count, now = self.count(), time.monotonic()
            per_second = (count - last_count) / max(now - last_time, 1e-9)
            print(self.line(count, per_second), flush=True)
            last_count, last_time = count, now

    async def __aenter__(self) -> Progress:
        self._task = asyncio.create_task(self._print_lines())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is None:
            return
        self._task.cancel()
        # wait(), not await: a cancellation of the phase itself must still propagate.
        await asyncio.wait([self._task])
        if not self._task.cancelled() and exc is None:
            self._task.result()  # a failure of the counter is a bug: surface it
