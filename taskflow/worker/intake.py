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
        slots: Slots[Any],
        *,
        worker_id: str,
        start: Callable[[Record], None],
        broker_live: Callable[[], bool],
        stop: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.store = store
        self.slots = slots
        self.worker_id = worker_id
        self.lease_seconds = settings.lease_seconds
        self._start = start
        self._broker_live = broker_live
        self._stop = stop
        self.accepting = True
        self.deliveries: list[tuple[UUID, Ticket]] = []
        self.claim_wake = asyncio.Event()
        self.postgres_wake = asyncio.Event()

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
            if not self.accepting:
                continue
            take = min(len(self.deliveries), self.slots.claim_capacity())
            if take <= 0:
                continue
            batch, self.deliveries = self.deliveries[:take], self.deliveries[take:]
            ids = list(dict.fromkeys(task_id for task_id, _ in batch))
            self.slots.claiming += len(ids)
            try:
                rows = await self._claim(
                    self.store.claim_queued_tasks(ids, self.worker_id, self.lease_seconds)
                )
            finally:
                self.slots.claiming -= len(ids)
            if rows is None:  # Postgres is unreachable: try again shortly
                self.deliveries = batch + self.deliveries
                await asyncio.sleep(0.5)
                self.claim_wake.set()
                continue
            for row in rows:
                self._start(row)
            # Claimed ones are safe in Postgres now; the others were stale or
            # duplicates (already claimed, finished or cancelled): drop them.
            for _, ticket in batch:
                await ticket.resolve()
            if self.deliveries:
                self.claim_wake.set()

    async def claim_from_postgres_loop(self, *, burst: bool, idle: asyncio.Event) -> None:
        """Claim the next queued rows from Postgres with SKIP LOCKED.

        Without a (connected) broker this is how work arrives: woken by NOTIFY,
        a freed slot, or the poll interval as a safety net. With the broker it
        only balances: a worker with free slots and no delivered ids takes
        rows that have been queued for a poll interval already, typically ids
        that wait in another worker's buffer behind long-running tasks (that
        worker drops them when their claim finds them taken).
        """
        poll = self.settings.worker_poll_interval_ms / 1000
        self.postgres_wake.set()  # look once at start: work may be waiting already
        last_look = 0.0
        while not self._stop.is_set():
            await wait_event(self.postgres_wake, poll)
            self.postgres_wake.clear()
            if not self.accepting or self.slots.free <= 0:
                continue
            queued_for = 0.0
            limit = self.slots.claim_capacity()
            if self._broker_live():
                if self.deliveries or time.monotonic() - last_look < poll:
                    continue
                queued_for = poll
                limit = self.slots.free  # balancing: only what can start now
            last_look = time.monotonic()
            self.slots.claiming += limit
            try:
                rows = await self._claim(
                    self.store.claim_next_tasks(
                        limit, self.worker_id, self.lease_seconds, queued_for_seconds=queued_for
                    )
                )
            finally:
                self.slots.claiming -= limit
            for row in rows or []:
                self._start(row)
            if rows is not None and len(rows) == limit:
                self.postgres_wake.set()  # there may be more right away
            elif burst and rows == [] and self.slots.running == 0 and not self.slots.ready:
                idle.set()
                return
