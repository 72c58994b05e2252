"""Task-Worker: the process that ties intake, slots, attempts and recording.

The flow for one task:

1. Its id arrives from RabbitMQ, or, with no broker, the worker asks Postgres
   for the next rows after a NOTIFY or a poll (:mod:`taskflow.worker.intake`).
2. The row is claimed by a guarded UPDATE that sets ``processing``, bumps
   ``attempts``, records this worker, a lease deadline and a fresh fencing
   token. Claimed rows run in free slots, plus a few claimed ahead while
   handlers are short (:mod:`taskflow.worker.slots`).
3. The handler runs under its timeout (:mod:`taskflow.worker.attempt`); a
   heartbeat extends the lease.
4. The outcome is written by an UPDATE fenced on the token, batched with other
   outcomes ready at the same moment, and the one retry rule decides what
   follows (:mod:`taskflow.worker.recording`).

Liveness: before it registers or claims anything, the worker's listening
session takes an advisory lock keyed by the worker's liveness key, and holds
it while the process lives. When the process dies its session ends, the lock
goes, and the scheduler rescues its tasks within a tick
(db/migrations/0008_worker_sessions.sql). When the session ends while the
process lives on (Postgres restarted, the connection broke), the scheduler
will take it for dead too, so the worker stops every handler at once and
claims nothing until a new session holds the lock again; then it hands back
what it stopped (fenced, so nothing the scheduler already rescued).

The worker is given its store, broker and listener (``taskflow.runtime``
builds them); it starts consuming and listening, and never closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from taskflow.broker import Broker
from taskflow.config import Settings
from taskflow.handlers import Registry
from taskflow.metrics import START_LATENCY_SECONDS, Children
from taskflow.store.dispatch import DispatchStore
from taskflow.store.engine import EngineStore, Outcome
from taskflow.store.pool import DATABASE_ERRORS, Listener, Record
from taskflow.waiting import wait_any, wait_event
from taskflow.worker.attempt import AttemptEnd, run_attempt
from taskflow.worker.context import Contexts, Running
from taskflow.worker.intake import Intake
from taskflow.worker.recording import Recorder, keep_leases
from taskflow.worker.slots import Slots

log = logging.getLogger(__name__)
_START_LATENCY_SECONDS = Children(START_LATENCY_SECONDS)

LISTEN_CHANNELS = ("taskflow_queued", "taskflow_cancel")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: EngineStore,
        dispatch: DispatchStore,
        *,
        broker: Broker | None,
        listener: Listener,
        worker_id: str,
        concurrency: int | None = None,
        burst: bool = False,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.broker = broker
        self.listener = listener
        self.worker_id = worker_id
        self.concurrency = concurrency or settings.num_workers
        self.burst = burst
        self.running: dict[UUID, Running] = {}
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        # Attempts stopped when the session ended, handed back once it is back.
        self._interrupted: list[tuple[UUID, int]] = []
        self._spawned: set[asyncio.Task[None]] = set()
        self.slots: Slots[tuple[Record, Running]] = Slots(
            self.concurrency, settings.worker_claim_ahead_ms / 1000
        )
        self.intake = Intake(
            settings,
            store,
            dispatch,
            self.slots,
            worker_id=worker_id,
            start=self._start,
            broker_live=self._broker_live,
            live=listener.connected,
            stop=self._stop,
        )
        self.recorder = Recorder(settings, store)
        self.contexts = Contexts(settings, store)

    @property
    def completed(self) -> int:
        return self.recorder.completed

    def _broker_live(self) -> bool:
        return self.broker is not None and self.broker.connected.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (or, in burst mode, until there is no work)."""
        liveness_key = await self.store.next_liveness_key()

        async def hold_liveness_lock(connection: Any) -> None:
            await self.store.take_liveness_lock(connection, liveness_key)

        self.listener.on_session(hold_liveness_lock)
        self.listener.on_notify(self._on_notify)
        listening = self._supervised("listener", lambda: self.listener.run(self._stop))
        await wait_any(self.listener.connected, stop, timeout=None)
        await self.store.register_worker(
            self.worker_id,
            socket.gethostname(),
            self.concurrency,
            self.settings.amqp_queue if self.broker is not None else None,
            liveness_key=liveness_key,
        )
        log.info(
            "worker started",
            extra={
                "event": "worker_started",
                "worker_id": self.worker_id,
                "concurrency": self.concurrency,
                "broker": self.broker is not None,
            },
        )
        background = [
            listening,
            self._supervised("finisher", self.recorder.run),
            self._supervised("heartbeat", self._keep_leases),
            self._supervised("claim", self.intake.claim_delivered_loop),
            self._supervised(
                "db-claim",
                lambda: self.intake.claim_from_postgres_loop(burst=self.burst, idle=self._idle),
            ),
        ]
        if self.broker is not None:
            await self.broker.consume(self.intake.on_delivery, prefetch=self.concurrency)
        stopper = asyncio.create_task(stop.wait())
        idle = asyncio.create_task(self._idle.wait())
        try:
            await asyncio.wait({stopper, idle}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            idle.cancel()
            await self._shutdown(background)

    def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        return asyncio.create_task(self._supervise(name, loop), name=f"worker {name}")

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Keep a background loop alive: one unexpected error must not leave the
        worker claiming nothing while it looks healthy."""
        while not self._stop.is_set():
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "worker loop crashed; restarting it",
                    exc_info=exc,
                    extra={"event": "loop_crashed", "loop": name},
                )
                await wait_event(self._stop, 0.5)

    async def _shutdown(self, background: list[asyncio.Task[None]]) -> None:
        """Soft stop, then hard stop: stop taking work, let running handlers
        finish within the grace period, then cancel them and hand them back."""
        self.intake.accepting = False  # tasks claimed ahead do not start now: they go back
        if self.broker is not None:
            await self.broker.stop_consuming()
        # Deliveries not yet claimed go back to RabbitMQ when the channel closes.
        self.intake.deliveries.clear()
        grace = self.settings.shutdown_grace_seconds
        jobs = [r.job for r in self.running.values() if r.job is not None]
        if jobs:
            log.info(
                "draining",
                extra={"event": "worker_draining", "running": len(jobs), "grace_seconds": grace},
            )
            await asyncio.wait(jobs, timeout=grace)
        # An attempt whose outcome is being written is finished, not handed back.
        leftovers = [r for r in self.running.values() if not r.recorded]
        self.slots.ready.clear()
        for running in leftovers:
            running.stop("shutdown")
        if leftovers:
            await asyncio.gather(*(r.job for r in leftovers if r.job), return_exceptions=True)
            await self._hand_back([(r.task_id, r.claim_token) for r in leftovers])
        if self._interrupted:
            await self._hand_back_interrupted()
        self._stop.set()
        # Let in-flight outcome writes land before the pool closes.
        await asyncio.sleep(0)
        while self.recorder.pending:
            await asyncio.sleep(0.01)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.suppress(*DATABASE_ERRORS):
            await self.store.deregister_worker(self.worker_id)
        log.info(
            "worker stopped",
            extra={"event": "worker_stopped", "worker_id": self.worker_id, "done": self.completed},
        )

    async def _hand_back(self, claims: list[tuple[UUID, int]]) -> None:
        try:
            handed = await self.store.hand_back_tasks(claims)
        except DATABASE_ERRORS as exc:
            log.warning(
                "hand back failed; the scheduler rescues them",
                extra={"event": "hand_back_failed", "error": str(exc)},
            )
            return
        # Queued again, they are picked anew (the hand-back NOTIFYs the
        # dispatchers and idle workers).
        log.info(
            "handed back unfinished tasks", extra={"event": "handed_back", "count": len(handed)}
        )

    # ----- notifications

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == "lost":
            self._session_lost()
            return
        if channel == "connected" and self._interrupted:
            task = asyncio.get_running_loop().create_task(self._hand_back_interrupted())
            self._spawned.add(task)
            task.add_done_callback(self._spawned.discard)
        if channel != "taskflow_cancel":
            # New tasks, or a session that is back: look at once.
            self.intake.notified()
            self.intake.claim_wake.set()
            return
        try:
            task_id = UUID(payload)
        except ValueError:
            return
        running = self.running.get(task_id)
        if running is not None and not running.recorded:
            running.stop("cancelled")
            log.info("cancelling running task", extra={"event": "task_cancel", "task_id": payload})

    def _session_lost(self) -> None:
        """The liveness lock went with the session: the scheduler may rescue
        every task of this worker from now on, so none may go on running."""
        stopped = [r for r in self.running.values() if not r.recorded]
        if not stopped:
            return
        log.warning(
            "session lost; stopping every task",
            extra={"event": "session_lost", "worker_id": self.worker_id, "tasks": len(stopped)},
        )
        for running in stopped:
            running.stop("session_lost")
            self._interrupted.append((running.task_id, running.claim_token))
        # Claimed ahead, never started: they go back too, and never start here.
        for _row, running in self.slots.ready:
            self.running.pop(running.task_id, None)
        self.slots.ready.clear()

    async def _hand_back_interrupted(self) -> None:
        claims, self._interrupted = self._interrupted, []
        await self._hand_back(claims)

    # ----- running a task

    def _start(self, row: Record) -> None:
        """Take a claimed row: it runs in a free slot, or waits for the next one."""
        running = Running(
            task_id=row["id"],
            claim_token=row["claim_token"],
            task_type=row["type"],
            attempt=row["attempts"],
        )
        self.running[running.task_id] = running
        self.slots.ready.append((row, running))
        self._start_ready()

    def _start_ready(self) -> None:
        while self.intake.accepting and (taken := self.slots.take_startable()) is not None:
            row, running = taken
            if running.stop_reason is not None:  # cancelled or lost while it waited
                self.slots.release()
                self.running.pop(running.task_id, None)
                continue
            running.slot_held = True
            waited = (datetime.now(UTC) - row["run_at"]).total_seconds()
            _START_LATENCY_SECONDS(running.task_type).observe(max(waited, 0.0))
            job = asyncio.create_task(self._execute(row, running), name=f"task {row['id']}")
            running.job = job
            # A callback, not a finally: a job cancelled before its first step
            # never enters its body, and its slot must come back all the same.
            job.add_done_callback(functools.partial(self._job_done, running))

    def _release_slot(self, running: Running) -> None:
        if running.slot_held:
            running.slot_held = False
            self.slots.release()
            self._start_ready()
            self.intake.wake()

    def _job_done(self, running: Running, _job: object = None) -> None:
        self._release_slot(running)
        if self.running.get(running.task_id) is running:
            del self.running[running.task_id]

    async def _execute(self, row: Record, running: Running) -> None:
        fields = {
            "task_id": str(running.task_id),
            "task_type": running.task_type,
            "attempt": running.attempt,
            "worker_id": self.worker_id,
        }
        started = time.monotonic()
        try:
            try:
                end = await self._attempt(row, running, fields)
            except asyncio.CancelledError:
                if running.stop_reason is None:
                    raise
                log.info(
                    "task stopped",
                    extra={**fields, "event": "task_stopped", "reason": running.stop_reason},
                )
                return
            running.recorded = True  # from here on, a heartbeat must not cancel us
            # The handler is done: its slot takes the next task while the
            # outcome is written (the lease still covers this one until then).
            self._release_slot(running)
            outcome = Outcome(
                task_id=running.task_id,
                claim_token=running.claim_token,
                ending=end.ending,
                result=end.result,
                has_result=end.has_result,
                error=end.error,
                delay_seconds=end.delay_seconds,
                handler_started=started,
            )
            await self.recorder.record(outcome, fields)
        except Exception as exc:  # our own bookkeeping failed; the lease rescues the task
            log.error("recording failed", exc_info=exc, extra={**fields, "event": "record_crashed"})

    async def _attempt(self, row: Record, running: Running, fields: dict[str, Any]) -> AttemptEnd:
        def lost() -> None:
            running.stop_reason = running.stop_reason or "lease_lost"

        make_context = await self.contexts.prepare(
            row,
            task_id=running.task_id,
            claim_token=running.claim_token,
            task_type=running.task_type,
            attempt=running.attempt,
            on_lost=lost,
        )
        task_type = self.registry.get(running.task_type)
        return await run_attempt(
            task_type,
            running.task_type,
            row["payload"],
            make_context,
            timeout_seconds=(
                self.registry.timeout_for(running.task_type, self.settings)
                if task_type is not None
                else 0.0
            ),
            observe_seconds=self.slots.observe_handler_time,
            log_fields=fields,
        )

    # ----- leases

    async def _keep_leases(self) -> None:
        await keep_leases(
            self.store,
            self.worker_id,
            self.settings.lease_seconds,
            self._stop,
            held=lambda: [(r.task_id, r.claim_token) for r in self.running.values()],
            lost=self._lease_lost,
        )

    def _lease_lost(self, task_id: UUID) -> None:
        running = self.running.get(task_id)
        if running is not None and not running.recorded:
            # Rescued or cancelled while we ran it: stop, someone else owns it now.
            running.stop("lease_lost")
            log.warning(
                "lease lost; stopping task", extra={"event": "lease_lost", "task_id": str(task_id)}
            )
