"""Task-Scheduler: three duties on their own clocks.

- The dispatcher (with a broker): publishes a fair, bounded window of queued
  task ids to RabbitMQ as workers take them (taskflow/dispatcher.py).
- Every ``worker_liveness_check_ms``: the tasks of workers whose Postgres
  session ended (they died) are rescued as soon as that is seen, by the same
  rule as a lapsed lease, and queued again at once
  (db/migrations/0008_worker_sessions.sql).
- Every ``scheduler_interval_ms``, a tick, in bounded batches:

  1. rescue ``processing`` rows whose lease expired (the worker died, hung or
     was cut off): ``retrying`` and due now, or ``failed`` (out of retries,
     or quarantined after ``max_lease_crashes`` lost workers);
  2. promote due ``postponed``/``retrying`` rows to ``queued``, where the
     dispatcher (woken by the promotion's NOTIFY) picks them up;
  2b. create the task of each schedule slot that has come (SPEC §9;
     taskflow/schedules.py has the missed-slot rule), and plan the next slot
     of schedules just resumed;
  3. drop the task_history partitions past ``history_retention_days`` and
     create the next ones (db/functions/05_history_partitions.sql), and
     delete finished tasks (with the rest of their history) past
     ``task_retention_days``;
  4. every few minutes, remove the temporary files crashed writers left in
     the file areas, once older than ``temporary_file_max_age_seconds``.

Steps 1, 2 and 2b use SKIP LOCKED, so several schedulers share the work (and a
slot's task is unique in the database, whatever happens); steps 3
and 4 run under a try-advisory-lock, so only one scheduler does them per tick.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from taskflow.config import Settings
from taskflow.dispatcher import Dispatcher
from taskflow.enqueue import new_task_id
from taskflow.files.sweep import TemporaryFileSweep
from taskflow.metrics import LEASES_RESCUED, TASKS_CREATED, TASKS_PROMOTED
from taskflow.retention import prune_expired
from taskflow.schedules import plan_schedule
from taskflow.store.dispatch import FairLimits
from taskflow.store.engine import EngineStore
from taskflow.store.inserts import Admission
from taskflow.store.operators import OperatorStore
from taskflow.store.pool import DATABASE_ERRORS, Record
from taskflow.store.schedules import ScheduleStore, SlotPlan
from taskflow.waiting import wait_event

log = logging.getLogger(__name__)

PRUNE_LOCK_ID = 0x74660002
TEMPORARY_FILES_LOCK_ID = 0x74660003
MAX_BATCHES_PER_TICK = 50
# Leftovers of crashed writers are rare and harmless for a while: a pass over
# the file areas every few minutes, in slices short enough that a tick which
# carries one still rescues and promotes on time.
TEMPORARY_FILES_PASS_SECONDS = 300
TEMPORARY_FILES_SLICE_SECONDS = 0.2
TEMPORARY_FILES_SLICE_ENTRIES = 50_000


@dataclass
class TickReport:
    rescued: int = 0
    promoted: int = 0
    scheduled: int = 0
    pruned: int = 0
    temporary_files_removed: int = 0


class Scheduler:
    """Given its stores and, with a broker, its dispatcher (``taskflow.runtime``
    builds them)."""

    def __init__(
        self,
        settings: Settings,
        store: EngineStore,
        operators: OperatorStore,
        *,
        dispatcher: Dispatcher | None,
        schedules: ScheduleStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.operators = operators
        self.dispatcher = dispatcher
        # Schedules are read on the engine's pool unless given their own.
        self.schedules = schedules or ScheduleStore(store.pool)
        # Slot tasks are held to the creation limits, as the API's are.
        self.admission = Admission.from_settings(settings)
        self.batch = settings.scheduler_batch_size
        self.ticks = 0
        self._prune_behind = False
        self.temporary_files = TemporaryFileSweep(
            settings.base_file_path, older_than_seconds=settings.temporary_file_max_age_seconds
        )
        self._temporary_files_due_at = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        await self.operators.write_dispatch_settings(
            FairLimits.from_settings(self.settings), written_by=f"scheduler:{socket.gethostname()}"
        )
        log.info(
            "scheduler started",
            extra={
                "event": "scheduler_started",
                "interval_ms": self.settings.scheduler_interval_ms,
            },
        )
        duties = [
            self._every(self.settings.scheduler_interval_ms, self.tick, stop, "tick"),
            # Dead workers are looked for more often than the tick: the look is
            # one cheap query, and their tasks wait for nothing else.
            self._every(self.settings.worker_liveness_check_ms, self.rescue_dead, stop, "liveness"),
        ]
        if self.dispatcher is not None:
            duties.append(self.dispatcher.run(stop))
        await asyncio.gather(*duties)
        log.info("scheduler stopped", extra={"event": "scheduler_stopped"})

    async def _every(
        self,
        interval_ms: int,
        duty: Callable[[], Awaitable[TickReport]],
        stop: asyncio.Event,
        name: str,
    ) -> None:
        while not stop.is_set():
            try:
                await duty()
            except DATABASE_ERRORS as exc:
                log.warning(
                    "tick failed", extra={"event": "tick_failed", "duty": name, "error": str(exc)}
                )
            except Exception as exc:  # a scheduler that stops ticking strands every lease
                log.error(
                    "tick crashed", exc_info=exc, extra={"event": "tick_crashed", "duty": name}
                )
            await wait_event(stop, interval_ms / 1000)

    async def rescue_dead(self) -> TickReport:
        """Rescue the tasks of workers whose session ended, and queue them at once."""
        report = TickReport()
        await self._rescue(report, self.store.rescue_lost_workers, "session_ended")
        if report.rescued:
            await self._promote(report)
        return report

    async def tick(self) -> TickReport:
        report = TickReport()
        self.ticks += 1
        await self._rescue(report, self.store.rescue_expired_leases, "lease_expired")
        await self._promote(report)
        await self._create_slot_tasks(report)
        # Once a minute; every tick while the last round left some behind (a
        # round is capped so a tick stays short), so retention keeps pace with
        # any sustained rate, not only with what one round a minute deletes.
        if self.ticks % 60 == 1 or self._prune_behind:
            await self.store.with_duty_lock(PRUNE_LOCK_ID, lambda: self._prune(report))
        if time.monotonic() >= self._temporary_files_due_at:
            await self.store.with_duty_lock(
                TEMPORARY_FILES_LOCK_ID, lambda: self._remove_temporary_files(report)
            )
        if (
            report.rescued
            or report.promoted
            or report.scheduled
            or report.pruned
            or report.temporary_files_removed
        ):
            log.info("tick", extra={"event": "tick", **vars(report)})
        return report

    async def _promote(self, report: TickReport) -> None:
        for _ in range(MAX_BATCHES_PER_TICK):
            promoted = await self.store.promote_due_tasks(self.batch)
            report.promoted += len(promoted)
            TASKS_PROMOTED.inc(len(promoted))
            if len(promoted) < self.batch:
                break

    async def run_due_schedules(self, now: datetime | None = None) -> TickReport:
        """The schedules' duty alone; ``now`` stands in for the database's
        clock (tests walk it across many slots and DST changes)."""
        report = TickReport()
        await self._create_slot_tasks(report, now)
        return report

    async def _create_slot_tasks(self, report: TickReport, now: datetime | None = None) -> None:
        for _ in range(MAX_BATCHES_PER_TICK):
            run = await self.schedules.create_slot_tasks(
                self.batch, plan_slot, now=now, admission=self.admission
            )
            report.scheduled += len(run.created)
            for row in run.created:
                TASKS_CREATED.labels(row["type"]).inc()
                log.debug(
                    "schedule slot; task created",
                    extra={
                        "event": "schedule_slot",
                        "schedule_id": str(row["schedule_id"]),
                        "task_id": str(row["id"]),
                        "task_type": row["type"],
                        "slot": row["scheduled_for"].isoformat(),
                    },
                )
            if run.claimed < self.batch:
                break

    async def _rescue(
        self,
        report: TickReport,
        rescue: Callable[[int, int], Awaitable[list[Record]]],
        how: str,
    ) -> None:
        """Take a lost worker's tasks, a batch at a time. Counted attempts
        come back retrying and due now (promoted just after, in this tick);
        attempts that never started come back queued."""
        for _ in range(MAX_BATCHES_PER_TICK):
            rescued = await rescue(self.batch, self.settings.max_lease_crashes)
            report.rescued += len(rescued)
            for row in rescued:
                LEASES_RESCUED.labels(row["status"]).inc()
                log.warning(
                    "worker lost; task rescued",
                    extra={
                        "event": "task_rescued",
                        "how": how,
                        "task_id": str(row["id"]),
                        "worker_id": row["worker_id"],
                        "status": row["status"],
                        "started": row["started"],
                    },
                )
            if len(rescued) < self.batch:
                break

    async def _prune(self, report: TickReport) -> None:
        history_behind = True
        for _ in range(MAX_BATCHES_PER_TICK):
            upkeep = await self.store.history_upkeep(
                self.settings.history_retention_days, self.batch
            )
            report.pruned += upkeep.deleted_rows + upkeep.dropped_rows
            if upkeep.dropped_rows or upkeep.created_partitions:
                log.info(
                    "history partitions",
                    extra={
                        "event": "history_partitions",
                        "dropped_rows": upkeep.dropped_rows,
                        "created_partitions": upkeep.created_partitions,
                    },
                )
            if upkeep.deleted_rows < self.batch:
                history_behind = False
                break
        expired = await prune_expired(
            self.operators, self.settings.task_retention_days, batch_size=min(self.batch, 500)
        )
        report.pruned += expired.tasks
        self._prune_behind = history_behind or expired.behind

    async def _remove_temporary_files(self, report: TickReport) -> None:
        # Directory listings and unlinks block: in a thread, a slice a tick.
        result = await asyncio.to_thread(
            self.temporary_files.run,
            max_entries=TEMPORARY_FILES_SLICE_ENTRIES,
            budget_seconds=TEMPORARY_FILES_SLICE_SECONDS,
        )
        report.temporary_files_removed += result.removed
        if result.finished:
            self._temporary_files_due_at = time.monotonic() + TEMPORARY_FILES_PASS_SECONDS


def plan_slot(row: Record) -> SlotPlan:
    """A due (or unplanned) schedule's slot task and next slot. A cron or
    time zone this process cannot read (changed by hand in psql, or a zone
    its time zone data lacks) pauses the schedule instead of failing the
    whole batch every tick."""
    try:
        plan = plan_schedule(row["cron"], row["timezone"], row["next_run_at"], row["now"])
    except ValueError as exc:
        log.error(
            "schedule cannot be planned; paused",
            extra={"event": "schedule_paused", "schedule_id": str(row["id"]), "error": str(exc)},
        )
        return SlotPlan(schedule_id=row["id"], next_run_at=None)
    if plan.next_run_at is None:
        log.warning(
            "schedule has no further slot; paused",
            extra={"event": "schedule_paused", "schedule_id": str(row["id"])},
        )
    return SlotPlan(
        schedule_id=row["id"],
        next_run_at=plan.next_run_at,
        slot=plan.slot,
        task_id=new_task_id() if plan.slot is not None else None,
    )
