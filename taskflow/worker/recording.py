"""Recording outcomes and keeping leases.

Outcomes that are ready at the same moment share one fenced UPDATE (group
commit); the finish statement applies the one retry rule
(:mod:`taskflow.retries`). A heartbeat extends the leases of the attempts
this worker holds and reports the ones it no longer holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from taskflow.batching import Batcher
from taskflow.config import Settings
from taskflow.metrics import TASKS_FINISHED, Children
from taskflow.store.engine import EngineStore, Outcome
from taskflow.store.pool import DATABASE_ERRORS
from taskflow.waiting import wait_event

log = logging.getLogger(__name__)
_TASKS_FINISHED = Children(TASKS_FINISHED)


class Recorder:
    """Writes outcomes, fenced on each attempt's claim token."""

    def __init__(self, settings: Settings, store: EngineStore) -> None:
        self.store = store
        self.lease_seconds = settings.lease_seconds
        self.backoff_base_ms = settings.retry_backoff_base_ms
        self.backoff_max_ms = settings.retry_backoff_max_ms
        self.batcher: Batcher[Outcome, str | None] = Batcher(self._flush)
        self.completed = 0

    @property
    def pending(self) -> bool:
        return bool(self.batcher.pending)

    async def run(self) -> None:
        await self.batcher.run()

    async def record(self, outcome: Outcome, log_fields: dict[str, Any]) -> None:
        """Write the outcome, retrying while Postgres is away, for as long as the
        lease could still be ours; past that the rescuer owns the task."""
        deadline = time.monotonic() + self.lease_seconds
        delay = 0.1
        while True:
            try:
                status = await self.batcher.submit(outcome)
                break
            except DATABASE_ERRORS as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "could not record outcome",
                        extra={**log_fields, "event": "record_failed", "error": str(exc)},
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2)
        if status is None:
            log.warning(
                "outcome discarded: the lease was lost",
                extra={**log_fields, "event": "fenced_out"},
            )
            return
        _TASKS_FINISHED(log_fields["task_type"], status).inc()
        if status == "done":
            self.completed += 1
        log.log(
            logging.DEBUG if status == "done" else logging.INFO,
            "task outcome",
            extra={**log_fields, "event": "task_outcome", "status": status, "error": outcome.error},
        )

    async def _flush(self, outcomes: list[Outcome]) -> list[str | None]:
        statuses = await self.store.finish_processing_tasks(
            outcomes, backoff_base_ms=self.backoff_base_ms, backoff_max_ms=self.backoff_max_ms
        )
        return [statuses.get(outcome.task_id) for outcome in outcomes]


async def keep_leases(
    store: EngineStore,
    worker_id: str,
    lease_seconds: float,
    stop: asyncio.Event,
    *,
    held: Callable[[], Sequence[tuple[UUID, int]]],
    lost: Callable[[UUID], None],
) -> None:
    """Heartbeat every third of a lease: extend what ``held`` returns, and call
    ``lost`` for each attempt whose lease was not extended (rescued or
    cancelled meanwhile: someone else owns it now)."""
    interval = max(lease_seconds / 3, 0.2)
    while not await wait_event(stop, interval):
        claims = list(held())
        try:
            kept = await store.extend_leases(worker_id, claims, lease_seconds)
        except DATABASE_ERRORS as exc:
            log.warning("heartbeat failed", extra={"event": "heartbeat_failed", "error": str(exc)})
            continue
        for task_id, _ in claims:
            if task_id not in kept:
                lost(task_id)
