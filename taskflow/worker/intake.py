"""Intake: task ids arrive (RabbitMQ, or Postgres itself) and are claimed.

A delivered message carries one or more ids. They are claimed by one guarded
UPDATE (``status = 'queued'``) per batch; a duplicate or stale id claims
nothing and is dropped. A message is acked once the claims of all its ids
have committed, never before: from then on the leases, not the message, keep
the tasks safe. Ids waiting for a slot stay queued in Postgres, so a worker
that idles while another holds a backlog of ids takes the oldest queued rows
itself (see :meth:`Intake.claim_from_postgres_loop`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from taskflow.config import Settings
from taskflow.store.dispatch import DispatchStore, FairLimits
from taskflow.store.engine import EngineStore
from taskflow.store.pool import DATABASE_ERRORS, Record
from taskflow.waiting import wait_event
from taskflow.worker.slots import Slots

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[None]]


@dataclass
class Ticket:
    """One delivered message: acked once every id it carried is claimed or dropped."""

    ack: Ack
    unresolved: int

    async def resolve(self) -> None:
        self.unresolved -= 1
        if self.unresolved == 0:
            await self.ack()


class Intake:
    """Claims work into the worker's slots; ``start`` takes each claimed row."""

    def __init__(
        self,
        settings: Settings,
        store: EngineStore,
        dispatch: DispatchStore,
        slots: Slots[Any],
        *,
        worker_id: str,
        start: Callable[[Record], None],
        broker_live: Callable[[], bool],
        live: asyncio.Event,
        stop: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.store = store
        self.dispatch = dispatch
        self.limits = FairLimits.from_settings(settings)
        self.slots = slots
        self.worker_id = worker_id
        self.lease_seconds = settings.lease_seconds
        self._start = start
        self._broker_live = broker_live
        # Set while the worker's session holds its liveness lock: a task
        # claimed without it would be rescued at once as a dead worker's.
        self._live = live
        self._stop = stop
        self.accepting = True
        self.deliveries: list[tuple[UUID, Ticket]] = []
        self.claim_wake = asyncio.Event()
        self.postgres_wake = asyncio.Event()
        # One claim statement at a time: a claim counts what the other path's
        # claim in flight may take as busy, so it would mark a task it could
        # start at once as claimed ahead (an unwritten start, not counted if
        # the worker then dies). Taken in turn, each sees the slots as they are.
        self._claim_lock = asyncio.Lock()
        self._notified = False
        # An id still unclaimed this long after it was sent waits in a worker
        # that cannot start it: an idle worker may take it instead (its
        # receiver then finds it claimed and drops it). Two dispatch windows:
        # far longer than a delivery takes.
        self.stale_seconds = 2 * settings.dispatch_window_ms / 1000

    async def on_delivery(self, task_ids: list[UUID], ack: Ack) -> None:
        if not self.accepting:
            return  # unacked: RabbitMQ redelivers it to another worker
        ticket = Ticket(ack, len(task_ids))
        self.deliveries.extend((task_id, ticket) for task_id in task_ids)
        self.claim_wake.set()

    def wake(self) -> None:
        """A slot came free: look for more work on both paths."""
        self.claim_wake.set()
        self.postgres_wake.set()

    async def _claim(self, claim: Awaitable[list[Record]]) -> list[Record] | None:
        try:
            return await claim
        except DATABASE_ERRORS as exc:
            log.warning("claim failed", extra={"event": "claim_failed", "error": str(exc)})
            return None

    async def claim_delivered_loop(self) -> None:
        """Claim delivered ids, as many per statement as have arrived."""
        while not self._stop.is_set():
            await wait_event(self.claim_wake, 1.0)
            self.claim_wake.clear()
            if not self.accepting or not self._live.is_set():
                continue
            async with self._claim_lock:
                take = min(len(self.deliveries), self.slots.claim_capacity())
                if take <= 0:
                    continue
                batch, self.deliveries = self.deliveries[:take], self.deliveries[take:]
                ids = list(dict.fromkeys(task_id for task_id, _ in batch))
                start_now = max(0, self.slots.free)
                self.slots.claiming += len(ids)
                try:
                    rows = await self._claim(
                        self.store.claim_queued_tasks(
                            ids, self.worker_id, self.lease_seconds, start_now=start_now
                        )
                    )
                finally:
                    self.slots.claiming -= len(ids)
                for row in rows or []:
                    self._start(row)
            if rows is None:  # Postgres is unreachable: try again shortly
                self.deliveries = batch + self.deliveries
                await asyncio.sleep(0.5)
                self.claim_wake.set()
                continue
            # Claimed ones are safe in Postgres now; the others were stale or
            # duplicates (already claimed, finished or cancelled): drop them.
            for _, ticket in batch:
                await ticket.resolve()
            if self.deliveries:
                self.claim_wake.set()

    async def _balance(self, limit: int) -> list[Record]:
        """Nothing delivered for a balance interval, with free slots: take ids
        picked a while ago that nobody claimed, then, for what is left, from
        the pick itself (no dispatcher is keeping up, or none runs)."""
        rows = await self.dispatch.claim_stale_dispatched(
            limit, self.worker_id, self.lease_seconds, older_than_seconds=self.stale_seconds
        )
        if len(rows) < limit:
            rows += await self._from_pick(limit - len(rows), limit - len(rows))
        return rows

    def _from_pick(self, limit: int, start_now: int) -> Awaitable[list[Record]]:
        """Up to ``limit`` tasks straight from the fair pick, the first
        ``start_now`` of them starting at once."""
        return self.dispatch.claim_fair(
            self.worker_id, self.lease_seconds, limit, start_now=start_now, limits=self.limits
        )

    def notified(self) -> None:
        """Tasks became queued (NOTIFY): an idle worker may take them now."""
        self._notified = True
        self.postgres_wake.set()

    async def claim_from_postgres_loop(self, *, burst: bool, idle: asyncio.Event) -> None:
        """Claim from Postgres, where who runs next is decided.

        Without a (connected) broker this is how work arrives: the fair pick
        itself (``taskflow_claim_fair``), woken by NOTIFY, a freed slot, or the
        balance interval below as a safety net. With the broker, the dispatcher sends
        the ids, and this loop does two things only: a worker with nothing
        delivered that hears of new tasks takes them from the pick at once
        (no round trip through the dispatcher and RabbitMQ when it is idle);
        and every balance interval (four dispatch windows, at most the poll
        interval) a worker with free slots and nothing delivered balances
        (:meth:`_balance`): ids sent a while ago that nobody claimed,
        typically waiting in the buffer of a worker busy with long tasks, or
        frozen (that worker drops them when their claim finds them taken).
        """
        poll = self.settings.worker_poll_interval_ms / 1000
        # An idle worker balances more often than it polls: an id sent to a
        # worker that froze or is busy with long tasks (RabbitMQ hands ids
        # round-robin, whoever is free) should not wait a whole poll interval.
        balance = min(poll, 4 * self.stale_seconds)
        self.postgres_wake.set()  # look once at start: work may be waiting already
        self._notified = True
        last_look = 0.0
        while not self._stop.is_set():
            await wait_event(self.postgres_wake, balance)
            self.postgres_wake.clear()
            notified, self._notified = self._notified, False
            if not self.accepting or not self._live.is_set():
                continue
            async with self._claim_lock:
                start_now = self.slots.free
                if start_now <= 0:
                    continue
                if not self._broker_live():
                    limit = self.slots.claim_capacity()
                    claim = self._from_pick(limit, start_now)
                elif self.deliveries:
                    continue
                elif notified:
                    limit = start_now
                    claim = self._from_pick(limit, start_now)
                elif time.monotonic() - last_look >= balance:
                    last_look = time.monotonic()
                    limit = start_now
                    claim = self._balance(limit)
                else:
                    continue
                self.slots.claiming += limit
                try:
                    rows = await self._claim(claim)
                finally:
                    self.slots.claiming -= limit
                for row in rows or []:
                    self._start(row)
            if rows is not None and len(rows) == limit:
                # There may be more right away.
                self._notified = notified or not self._broker_live()
                self.postgres_wake.set()
            elif burst and rows == [] and self.slots.running == 0 and not self.slots.ready:
                idle.set()
                return
