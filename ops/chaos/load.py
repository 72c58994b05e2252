"""The producer: keeps the workers busy with a mix of short and long tasks.

It keeps a fixed number of unfinished tasks of each kind (``long_in_flight``,
``short_in_flight``), topping them up every ``REFILL_SECONDS``: the workers
always have something running, and yet a task rescued from a killed worker
finds a free slot among the survivors instead of a backlog, so the run
measures recovery, not queueing. Tasks are inserted with the store's own
insert (the one the API uses); the dispatcher in the scheduler sends them on.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from uuid import UUID

from ops.bench.stack import CLEANUP_DATABASE_ERRORS
from ops.chaos.options import ChaosOptions
from ops.chaos.plugin import TASK_TYPE_NAME
from ops.chaos.report import TERMINAL
from ops.chaos.stack import ChaosStore
from taskflow.enqueue import new_task_id
from taskflow.store.tasks import NewTask
from taskflow.waiting import wait_event

REFILL_SECONDS = 0.1
# The most a task may be retried: a kill counts as a failed attempt, and the
# run is about recovery, not about running out of retries.
MAX_RETRIES = 10
SELECT_FINISHED = "SELECT id FROM tasks WHERE id = ANY($1::uuid[]) AND status::text = ANY($2)"


class Producer:
    def __init__(
        self, store: ChaosStore, user_id: int, options: ChaosOptions, marks: Path, seed: int
    ) -> None:
        self.store = store
        self.user_id = user_id
        self.options = options
        self.marks = str(marks)
        self.rng = random.Random(seed)
        self.created: set[UUID] = set()
        # Inserts that raised (Postgres restarting): they may have committed.
        self.unconfirmed: set[UUID] = set()
        self.long_ids: set[UUID] = set()
        self.short_ids: set[UUID] = set()
        self.open_long: set[UUID] = set()
        self.open_short: set[UUID] = set()
        self.errors = 0

    def _task(self, seconds: float, later_seconds: float | None = None) -> NewTask:
        payload: dict[str, object] = {"seconds": round(seconds, 4), "marks": self.marks}
        if later_seconds is not None:
            payload["later_seconds"] = later_seconds
        return NewTask(new_task_id(), TASK_TYPE_NAME, payload, 0, MAX_RETRIES, None)

    async def _insert(self, tasks: list[NewTask]) -> None:
        ids = {task.id for task in tasks}
        self.unconfirmed |= ids
        await self.store.insert_tasks(self.user_id, tasks)
        self.unconfirmed -= ids
        self.created |= ids

    async def create_probe(self, seconds: float, later_seconds: float) -> UUID:
        """One long task for the freeze: ``seconds`` on its first attempt."""
        task = self._task(seconds, later_seconds)
        await self._insert([task])
        self.long_ids.add(task.id)
        return task.id

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._refill()
            except CLEANUP_DATABASE_ERRORS:
                self.errors += 1  # Postgres is restarting: the next round tries again
            await wait_event(stop, REFILL_SECONDS)

    async def _refill(self) -> None:
        open_ids = list(self.open_long | self.open_short)
        if open_ids:
            rows = await self.store.pool.fetch(SELECT_FINISHED, open_ids, sorted(TERMINAL))
            finished = {row["id"] for row in rows}
            self.open_long -= finished
            self.open_short -= finished
        long_tasks = [
            self._task(self.rng.uniform(*self.options.long_seconds))
            for _ in range(self.options.long_in_flight - len(self.open_long))
        ]
        short_tasks = [
            self._task(self.rng.uniform(*self.options.short_ms) / 1000)
            for _ in range(self.options.short_in_flight - len(self.open_short))
        ]
        if not long_tasks and not short_tasks:
            return
        await self._insert(long_tasks + short_tasks)
        for ids, opened, tasks in (
            (self.long_ids, self.open_long, long_tasks),
            (self.short_ids, self.open_short, short_tasks),
        ):
            ids.update(task.id for task in tasks)
            opened.update(task.id for task in tasks)
