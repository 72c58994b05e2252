"""Task-Scheduler: one tick every ``scheduler_interval_ms``.

Each tick, in bounded batches:

1. rescue ``processing`` rows whose lease expired (the worker died or hung):
   to ``retrying`` (run again now) or ``failed`` (out of retries, or quarantined
   after ``max_lease_crashes`` lost workers);
2. promote due ``postponed``/``retrying`` rows to ``queued`` and publish their ids;
3. republish ``queued`` rows nobody claimed for ``republish_after_seconds``
   (a publish that failed, an API that died between commit and publish) —
   only while the broker's queue is empty, since otherwise the ids are there;
4. prune history of finished tasks past ``history_retention_days``, and
   finished tasks themselves (with the rest of their history) past
   ``task_retention_days``.

Steps 1 and 2 use SKIP LOCKED, so several schedulers share the work; steps 3 and
4 run under a try-advisory-lock, so only one scheduler does them per tick.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from uuid import UUID

from taskflow.broker import Broker
from taskflow.config import Settings
from taskflow.metrics import LEASES_RESCUED, TASKS_PROMOTED
from taskflow.retention import prune_expired
from taskflow.store.engine import EngineStore
from taskflow.store.operators import OperatorStore
from taskflow.store.pool import DATABASE_ERRORS
from taskflow.waiting import wait_event

log = logging.getLogger(__name__)

REPUBLISH_LOCK_ID = 0x74660001
PRUNE_LOCK_ID = 0x74660002
MAX_BATCHES_PER_TICK = 50


@dataclass
class TickReport:
    rescued: int = 0
    promoted: int = 0
    republished: int = 0
    pruned: int = 0
    publish_failed: int = 0


class Scheduler:
    """Given its stores and broker (``taskflow.runtime`` builds them)."""

    def __init__(
        self,
        settings: Settings,
        store: EngineStore,
        operators: OperatorStore,
        *,
        broker: Broker | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.operators = operators
        self.broker = broker
        self.batch = settings.scheduler_batch_size
        self.ticks = 0

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.scheduler_interval_ms / 1000
        log.info(
            "scheduler started",
            extra={
                "event": "scheduler_started",
                "interval_ms": self.settings.scheduler_interval_ms,
            },
        )
        while not stop.is_set():
            try:
                await self.tick()
            except DATABASE_ERRORS as exc:
                log.warning("tick failed", extra={"event": "tick_failed", "error": str(exc)})
            except Exception as exc:  # a scheduler that stops ticking strands every lease
                log.error("tick crashed", exc_info=exc, extra={"event": "tick_crashed"})
            await wait_event(stop, interval)
        log.info("scheduler stopped", extra={"event": "scheduler_stopped"})

    async def _publish(self, task_ids: list[UUID], report: TickReport) -> None:
        # Without a broker the promotion itself sent NOTIFY (see the schema).
        if not task_ids or self.broker is None:
            return
        if not await self.broker.publish_ids(task_ids):
            # The rows are queued in Postgres all the same: wake the workers
            # that claim from it; the republish pass retries the broker.
            report.publish_failed += len(task_ids)
            await self.store.notify_queued()

    async def tick(self) -> TickReport:
        report = TickReport()
        self.ticks += 1
        for _ in range(MAX_BATCHES_PER_TICK):
            rescued = await self.store.rescue_expired_leases(
                self.batch, self.settings.max_lease_crashes
            )
            report.rescued += len(rescued)
            for row in rescued:
                LEASES_RESCUED.labels(row["status"]).inc()
                log.warning(
                    "lease expired; worker lost",
                    extra={
                        "event": "lease_rescued",
                        "task_id": str(row["id"]),
                        "worker_id": row["worker_id"],
                        "status": row["status"],
                    },
                )
            if len(rescued) < self.batch:
                break
        for _ in range(MAX_BATCHES_PER_TICK):
            promoted = await self.store.promote_due_tasks(self.batch)
            report.promoted += len(promoted)
            TASKS_PROMOTED.inc(len(promoted))
            await self._publish(promoted, report)
            if len(promoted) < self.batch:
                break
        if self.broker is not None:
            await self.store.with_duty_lock(REPUBLISH_LOCK_ID, lambda: self._republish(report))
        if self.ticks % 60 == 1:
            await self.store.with_duty_lock(PRUNE_LOCK_ID, lambda: self._prune(report))
        if report.rescued or report.promoted or report.republished or report.pruned:
            log.info("tick", extra={"event": "tick", **vars(report)})
        return report

    async def _republish(self, report: TickReport) -> None:
        if self.broker is None or not self.broker.connected.is_set():
            return
        depth = await self.broker.queue_depth()
        if depth is None or depth > 0:
            return
        stale = await self.store.republish_stale_queued(
            self.settings.republish_after_seconds, self.batch
        )
        report.republished += len(stale)
        await self._publish(stale, report)

    async def _prune(self, report: TickReport) -> None:
        for _ in range(MAX_BATCHES_PER_TICK):
            deleted = await self.store.prune_history(
                self.settings.history_retention_days, self.batch
            )
            report.pruned += deleted
            if deleted < self.batch:
                break
        expired = await prune_expired(
            self.operators, self.settings.task_retention_days, batch_size=min(self.batch, 500)
        )
        report.pruned += expired.tasks
