"""Task-Worker: receive ids, claim rows, run handlers, record outcomes.

The flow for one task:

1. An id arrives from RabbitMQ (or, with no broker, the worker asks Postgres for
   the next rows after a NOTIFY or a poll).
2. The row is claimed by a guarded UPDATE (``status = 'queued'``) that sets
   ``processing``, bumps ``attempts``, records this worker, a lease deadline and
   a fresh fencing token. Ids that arrive together are claimed in one statement.
   A duplicate or stale id claims nothing and is dropped. A message (which
   may carry several ids) is acked once the claims of all its ids have
   committed, never before: from then on the leases, not the message, keep
   the tasks safe. Ids are claimed into free slots, plus a few more while
   handlers are short (see ``claim_capacity``); the other ids waiting for a slot
   stay queued in Postgres, so a worker that idles while another holds a
   backlog of ids takes the oldest queued rows itself (see ``_db_loop``).
3. The handler runs under its timeout; a heartbeat extends the lease.
4. The outcome is written by an UPDATE fenced on the token, batched with other
   outcomes that are ready at the same moment.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from taskflow.backoff import backoff_seconds
from taskflow.batching import Batcher
from taskflow.broker import Broker
from taskflow.config import Settings
from taskflow.errors import PermanentError, TransientError
from taskflow.files import UserFiles
from taskflow.handlers import Registry, TaskContext
from taskflow.metrics import HANDLER_SECONDS, START_LATENCY_SECONDS, TASKS_FINISHED
from taskflow.models import TaskStatus
from taskflow.store import DATABASE_ERRORS, Listener, Outcome, Record, Store
from taskflow.waiting import wait_event

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[None]]
STORE_ERRORS = DATABASE_ERRORS
# At most this many times the slots are claimed ahead.
CLAIM_AHEAD_SLOTS_FACTOR = 4


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Running:
    task_id: UUID
    claim_token: int
    task_type: str
    attempt: int
    job: asyncio.Task[None] | None = None  # None while claimed ahead, waiting for a slot
    stop_reason: str | None = None  # "cancelled", "lease_lost", "shutdown"
    recorded: bool = False  # the outcome is written; the lease no longer matters
    slot_held: bool = False

    def stop(self, reason: str) -> None:
        """Stop the handler, or keep it from starting if it is still waiting."""
        self.stop_reason = self.stop_reason or reason
        if self.job is not None:
            self.job.cancel()


@dataclass
class Ticket:
    """One delivered message: acked once every id it carried is claimed or dropped."""

    ack: Ack
    unresolved: int

    async def resolve(self) -> None:
        self.unresolved -= 1
        if self.unresolved == 0:
            await self.ack()


class Worker:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        concurrency: int | None = None,
        worker_id: str | None = None,
        burst: bool = False,
        use_broker: bool = True,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.concurrency = concurrency or settings.num_workers
        self.worker_id = worker_id or new_worker_id()
        self.burst = burst
        self.use_broker = use_broker and settings.broker_enabled and not burst
        self.lease_seconds = settings.lease_seconds
        self.running: dict[UUID, Running] = {}
        self.store: Store | None = None
        self.broker: Broker | None = None
        self._deliveries: list[tuple[UUID, Ticket]] = []
        self._claim_wake = asyncio.Event()
        self._db_wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._stop = asyncio.Event()
        self._accepting = True
        self._claims_in_flight = 0
        self._handlers_running = 0
        # Claimed ahead of a free slot, in claim order.
        self._ready: collections.deque[tuple[Record, Running]] = collections.deque()
        self._claim_ahead_seconds = settings.worker_claim_ahead_ms / 1000
        self._handler_seconds: float | None = None  # moving average
        self._finisher: Batcher[Outcome, None] = Batcher(self._flush_outcomes)
        self.completed = 0

    # ----- lifecycle

    @property
    def free_slots(self) -> int:
        # A slot is a running handler; writing its outcome does not hold one.
        return self.concurrency - self._handlers_running - len(self._ready) - self._claims_in_flight

    @property
    def claim_capacity(self) -> int:
        """Free slots plus the claim-ahead allowance.

        One claim statement per free slot is what a task would cost in
        Postgres if handlers were instant; claiming a little ahead lets one
        statement take a message's worth of ids. The allowance is what the
        slots are expected to start within ``worker_claim_ahead_ms``, judged
        by recent handler times, so long handlers get none: a task claimed
        ahead holds its lease while it waits, and no other worker can take it.
        """
        return self.free_slots + self._claim_ahead()

    def _claim_ahead(self) -> int:
        average = self._handler_seconds
        if self._claim_ahead_seconds <= 0 or average is None:
            return 0
        expected = self.concurrency * self._claim_ahead_seconds / max(average, 1e-6)
        return min(int(expected), CLAIM_AHEAD_SLOTS_FACTOR * self.concurrency)

    def _broker_live(self) -> bool:
        return self.broker is not None and self.broker.connected.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (or, in burst mode, until there is no work)."""
        dsn = self.settings.database_url.get_secret_value()
        self.store = await Store.open(
            dsn,
            min_size=2,
            max_size=4,
            application_name=f"taskflow-worker {self.worker_id}",
            actor=f"worker:{self.worker_id}",
        )
        await self.store.register_worker(
            self.worker_id,
            socket.gethostname(),
            self.concurrency,
            self.settings.amqp_queue if self.use_broker else None,
        )
        log.info(
            "worker started",
            extra={
                "event": "worker_started",
                "worker_id": self.worker_id,
                "concurrency": self.concurrency,
                "broker": self.use_broker,
            },
        )
        listener = Listener(
            dsn,
            ("taskflow_queued", "taskflow_cancel"),
            self._on_notify,
            name=f"taskflow-worker-listen {self.worker_id}",
        )
        background = [
            asyncio.create_task(self._supervise("finisher", self._finisher.run)),
            asyncio.create_task(self._supervise("listener", lambda: listener.run(self._stop))),
            asyncio.create_task(self._supervise("heartbeat", self._heartbeat_loop)),
            asyncio.create_task(self._supervise("claim", self._claim_loop)),
            asyncio.create_task(self._supervise("db-claim", self._db_loop)),
        ]
        if self.use_broker:
            assert self.settings.amqp_url is not None
            self.broker = Broker(
                self.settings.amqp_url.get_secret_value(),
                self.settings.amqp_queue,
                prefetch=self.concurrency,
                on_delivery=self._on_delivery,
                ids_per_message=self.settings.ids_per_message,
                name=f"taskflow-worker {self.worker_id}",
            )
            self.broker.start()
        stopper = asyncio.create_task(stop.wait())
        idle = asyncio.create_task(self._idle.wait())
        try:
            await asyncio.wait({stopper, idle}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            idle.cancel()
            await self._shutdown(background)

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

    async def _shutdown(self, background: list[asyncio.Task[Any]]) -> None:
        """Soft stop, then hard stop: stop taking work, let running handlers
        finish within the grace period, then cancel them and hand them back."""
        self._accepting = False  # tasks claimed ahead do not start now: they go back
        if self.broker is not None:
            await self.broker.stop_consuming()
        # Deliveries not yet claimed go back to RabbitMQ when the channel closes.
        self._deliveries.clear()
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
        self._ready.clear()
        for running in leftovers:
            running.stop("shutdown")
        if leftovers:
            await asyncio.gather(*(r.job for r in leftovers if r.job), return_exceptions=True)
            assert self.store is not None
            try:
                handed = await self.store.hand_back_tasks(
                    [(r.task_id, r.claim_token) for r in leftovers]
                )
                log.info(
                    "handed back unfinished tasks",
                    extra={"event": "handed_back", "count": len(handed)},
                )
                # Their messages were acked at claim: ring the broker again so
                # another worker takes them now (the hand-back also NOTIFYs).
                if self.broker is not None and handed:
                    await self.broker.publish_ids(handed)
            except STORE_ERRORS as exc:
                log.warning(
                    "hand back failed; leases will expire",
                    extra={"event": "hand_back_failed", "error": str(exc)},
                )
        self._stop.set()
        # Let in-flight outcome writes land before the pool closes.
        await asyncio.sleep(0)
        while self._finisher.pending:
            await asyncio.sleep(0.01)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if self.broker is not None:
            await self.broker.close()
        assert self.store is not None
        with contextlib.suppress(*STORE_ERRORS):
            await self.store.deregister_worker(self.worker_id)
        await self.store.close()
        log.info(
            "worker stopped",
            extra={"event": "worker_stopped", "worker_id": self.worker_id, "done": self.completed},
        )

    # ----- receiving work

    async def _on_delivery(self, task_ids: list[UUID], ack: Ack) -> None:
        if not self._accepting:
            return  # unacked: RabbitMQ redelivers it to another worker
        ticket = Ticket(ack, len(task_ids))
        self._deliveries.extend((task_id, ticket) for task_id in task_ids)
        self._claim_wake.set()

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == "taskflow_cancel":
            try:
                task_id = UUID(payload)
            except ValueError:
                return
            running = self.running.get(task_id)
            if running is not None and not running.recorded:
                running.stop("cancelled")
                log.info(
                    "cancelling running task",
                    extra={"event": "task_cancel", "task_id": str(task_id)},
                )
        else:
            self._db_wake.set()

    async def _claim_loop(self) -> None:
        """Claim delivered ids, as many per statement as have arrived."""
        assert self.store is not None
        while not self._stop.is_set():
            await wait_event(self._claim_wake, 1.0)
            self._claim_wake.clear()
            if not self._accepting:
                continue
            take = min(len(self._deliveries), self.claim_capacity)
            if take <= 0:
                continue
            batch, self._deliveries = self._deliveries[:take], self._deliveries[take:]
            ids = list(dict.fromkeys(task_id for task_id, _ in batch))
            self._claims_in_flight += len(ids)
            try:
                rows = await self._claim_with_retry(
                    self.store.claim_queued_tasks(ids, self.worker_id, self.lease_seconds)
                )
            finally:
                self._claims_in_flight -= len(ids)
            if rows is None:  # Postgres is unreachable: let RabbitMQ redeliver later
                self._deliveries = batch + self._deliveries
                await asyncio.sleep(0.5)
                self._claim_wake.set()
                continue
            for row in rows:
                self._start(row)
            # Claimed ones are safe in Postgres now; the others were stale or
            # duplicates (already claimed, finished or cancelled): drop them.
            for _, ticket in batch:
                await ticket.resolve()
            if self._deliveries:
                self._claim_wake.set()

    async def _claim_with_retry(self, claim: Awaitable[list[Record]]) -> list[Record] | None:
        try:
            return await claim
        except STORE_ERRORS as exc:
            log.warning("claim failed", extra={"event": "claim_failed", "error": str(exc)})
            return None

    async def _db_loop(self) -> None:
        """Claim the next queued rows from Postgres with SKIP LOCKED.

        Without a (connected) broker this is how work arrives: woken by NOTIFY,
        a freed slot, or the poll interval as a safety net. With the broker it
        only balances: a worker with free slots and no delivered ids takes
        rows that have been queued for a poll interval already, typically ids
        that wait in another worker's buffer behind long-running tasks (that
        worker drops them when their claim finds them taken).
        """
        assert self.store is not None
        poll = self.settings.worker_poll_interval_ms / 1000
        self._db_wake.set()  # look once at start: work may be waiting already
        last_look = 0.0
        while not self._stop.is_set():
            await wait_event(self._db_wake, poll)
            self._db_wake.clear()
            if not self._accepting or self.free_slots <= 0:
                continue
            queued_for = 0.0
            limit = self.claim_capacity
            if self._broker_live():
                if self._deliveries or time.monotonic() - last_look < poll:
                    continue
                queued_for = poll
                limit = self.free_slots  # balancing: only what can start now
            last_look = time.monotonic()
            self._claims_in_flight += limit
            try:
                rows = await self._claim_with_retry(
                    self.store.claim_next_tasks(
                        limit, self.worker_id, self.lease_seconds, queued_for_seconds=queued_for
                    )
                )
            finally:
                self._claims_in_flight -= limit
            for row in rows or []:
                self._start(row)
            if rows is not None and len(rows) == limit:
                self._db_wake.set()  # there may be more right away
            elif self.burst and rows == [] and not self.running:
                self._idle.set()
                return

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
        self._ready.append((row, running))
        self._start_ready()

    def _start_ready(self) -> None:
        while self._ready and self._accepting and self._handlers_running < self.concurrency:
            row, running = self._ready.popleft()
            if running.stop_reason is not None:  # cancelled or lost while it waited
                self.running.pop(running.task_id, None)
                continue
            self._handlers_running += 1
            running.slot_held = True
            waited = (datetime.now(UTC) - row["run_at"]).total_seconds()
            START_LATENCY_SECONDS.labels(running.task_type).observe(max(waited, 0.0))
            job = asyncio.create_task(self._execute(row, running), name=f"task {row['id']}")
            running.job = job
            # A callback, not a finally: a job cancelled before its first step
            # never enters its body, and its slot must come back all the same.
            job.add_done_callback(functools.partial(self._job_done, running))

    def _release_slot(self, running: Running) -> None:
        if running.slot_held:
            running.slot_held = False
            self._handlers_running -= 1
            self._start_ready()
            self._claim_wake.set()
            self._db_wake.set()

    def _job_done(self, running: Running, _job: object = None) -> None:
        self._release_slot(running)
        if self.running.get(running.task_id) is running:
            del self.running[running.task_id]

    def _observe_handler_time(self, seconds: float) -> None:
        previous = self._handler_seconds
        self._handler_seconds = seconds if previous is None else previous * 0.9 + seconds * 0.1

    async def _execute(self, row: Record, running: Running) -> None:
        extra = {
            "task_id": str(running.task_id),
            "task_type": running.task_type,
            "attempt": running.attempt,
            "worker_id": self.worker_id,
        }
        try:
            try:
                outcome = await self._run_handler(row, running, extra)
            except asyncio.CancelledError:
                if running.stop_reason is None:
                    raise
                log.info(
                    "task stopped",
                    extra={**extra, "event": "task_stopped", "reason": running.stop_reason},
                )
                return
            running.recorded = True  # from here on, a heartbeat must not cancel us
            # The handler is done: its slot takes the next task while the
            # outcome is written (the lease still covers this one until then).
            self._release_slot(running)
            await self._record(outcome, extra)
        except Exception as exc:  # our own bookkeeping failed; the lease rescues the task
            log.error("recording failed", exc_info=exc, extra={**extra, "event": "record_crashed"})

    async def _run_handler(self, row: Record, running: Running, extra: dict[str, Any]) -> Outcome:
        task_id, token, attempt = running.task_id, running.claim_token, running.attempt
        max_retries: int = row["max_retries"]

        def finished(status: TaskStatus, **fields: Any) -> Outcome:
            return Outcome(task_id=task_id, claim_token=token, status=status, **fields)

        def failed(
            message: str, *, permanent: bool, partial: Any = None, delay: float | None = None
        ) -> Outcome:
            has_result = partial is not None
            if permanent or attempt > max_retries:
                return finished(
                    TaskStatus.FAILED, error=message, result=partial, has_result=has_result
                )
            if delay is None:
                delay = backoff_seconds(
                    attempt,
                    self.settings.retry_backoff_base_ms,
                    self.settings.retry_backoff_max_ms,
                )
            return finished(
                TaskStatus.RETRYING,
                error=message,
                result=partial,
                has_result=has_result,
                delay_seconds=delay,
            )

        task_type = self.registry.get(running.task_type)
        if task_type is None:
            return failed(
                f"no handler registered for task type {running.task_type!r}", permanent=True
            )
        try:
            payload = task_type.payload_model.model_validate(row["payload"])
        except ValidationError as exc:
            return failed(f"invalid payload: {exc.errors(include_url=False)}", permanent=True)

        async def save_progress(result: Any) -> None:
            assert self.store is not None
            if not await self.store.save_task_progress(task_id, token, result):
                # Cancelled or rescued meanwhile: stop here, the attempt is no longer ours.
                running.stop_reason = running.stop_reason or "lease_lost"
                raise asyncio.CancelledError("lease lost")

        context = TaskContext(
            task_id=task_id,
            user_id=row["user_id"],
            task_type=running.task_type,
            attempt=attempt,
            max_retries=max_retries,
            settings=self.settings,
            files=UserFiles(self.settings.base_file_path, row["user_id"]),
            previous_result=row["result"],
            save_progress=save_progress,
        )
        timeout = self.registry.timeout_for(running.task_type, self.settings)
        started = time.perf_counter()
        log.debug("task started", extra={**extra, "event": "task_started"})
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                try:
                    result = await task_type.handler(payload, context)
                finally:
                    seconds = time.perf_counter() - started
                    HANDLER_SECONDS.labels(running.task_type).observe(seconds)
                    self._observe_handler_time(seconds)
        except TimeoutError as exc:
            if deadline.expired():
                return failed(f"timed out after {timeout:g}s", permanent=False)
            return failed(f"TimeoutError: {exc}", permanent=False)
        except PermanentError as exc:
            return failed(exc.message, permanent=True, partial=exc.partial_result)
        except TransientError as exc:
            return failed(
                exc.message, permanent=False, partial=exc.partial_result, delay=exc.delay_seconds
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a handler bug: retried, and logged once here
            log.warning(
                "handler raised",
                exc_info=exc,
                extra={**extra, "event": "task_error", "error": repr(exc)},
            )
            return failed(f"{type(exc).__name__}: {exc}", permanent=False)
        log.debug(
            "task finished",
            extra={**extra, "event": "task_done", "seconds": time.perf_counter() - started},
        )
        return finished(TaskStatus.DONE, result=result, has_result=True)

    async def _record(self, outcome: Outcome, extra: dict[str, Any]) -> None:
        """Write the outcome, retrying while Postgres is away, for as long as the
        lease could still be ours; past that the rescuer owns the task."""
        deadline = time.monotonic() + self.lease_seconds
        delay = 0.1
        while True:
            try:
                await self._finisher.submit(outcome)
                break
            except STORE_ERRORS as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "could not record outcome",
                        extra={**extra, "event": "record_failed", "error": str(exc)},
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2)
        TASKS_FINISHED.labels(extra["task_type"], outcome.status).inc()
        if outcome.status == TaskStatus.DONE:
            self.completed += 1
        level = logging.INFO if outcome.status != TaskStatus.DONE else logging.DEBUG
        log.log(
            level,
            "task outcome",
            extra={
                **extra,
                "event": "task_outcome",
                "status": outcome.status,
                "error": outcome.error,
            },
        )

    async def _flush_outcomes(self, outcomes: list[Outcome]) -> None:
        assert self.store is not None
        fenced = await self.store.finish_processing_tasks(outcomes)
        for outcome in outcomes:
            if outcome.task_id not in fenced:
                log.warning(
                    "outcome discarded: the lease was lost",
                    extra={"event": "fenced_out", "task_id": str(outcome.task_id)},
                )

    # ----- leases

    async def _heartbeat_loop(self) -> None:
        assert self.store is not None
        interval = max(self.lease_seconds / 3, 0.2)
        while not await wait_event(self._stop, interval):
            claims = [(r.task_id, r.claim_token) for r in self.running.values()]
            try:
                kept = await self.store.extend_leases(self.worker_id, claims, self.lease_seconds)
            except STORE_ERRORS as exc:
                log.warning(
                    "heartbeat failed", extra={"event": "heartbeat_failed", "error": str(exc)}
                )
                continue
            for task_id, _ in claims:
                running = self.running.get(task_id)
                if task_id not in kept and running is not None and not running.recorded:
                    # Rescued or cancelled while we ran it: stop, someone else owns it now.
                    running.stop("lease_lost")
                    log.warning(
                        "lease lost; stopping task",
                        extra={"event": "lease_lost", "task_id": str(task_id)},
                    )
