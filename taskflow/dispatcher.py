"""The dispatcher: what goes to the workers, chosen fairly in Postgres (SPEC §8).

A duty of every scheduler process. Tasks that become queued wait in Postgres;
the dispatcher keeps a bounded window of their ids on their way to workers:
each round it asks ``taskflow_dispatch()`` for as many as the window has room
for, picked round-robin over users within every cap
(db/functions/50_fair_dispatch.sql), and publishes them to RabbitMQ. So the
backlog stays in Postgres, RabbitMQ carries only what will start soon, and a
newcomer's task waits behind one window, not behind another user's backlog.
Several dispatchers may run (one per scheduler): picks run under one
advisory lock, so they take turns.

The window holds what the workers are expected to start within
``dispatch_window_ms`` at the rate they have been claiming lately, and never
less than their slots, so no slot waits for the dispatcher. A round runs when
tasks become queued (NOTIFY taskflow_queued, heard while any worker is
alive), when a worker joins or leaves
(NOTIFY taskflow_workers: the slots to fill changed), every quarter window
while a backlog remains, and every second regardless.

Without a broker there is nothing to publish: workers claim from the pick
themselves (``taskflow_claim_fair``), and the dispatcher only tidies up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from uuid import UUID

from taskflow.broker import Broker
from taskflow.config import Settings
from taskflow.store.dispatch import DispatchStore, FairLimits
from taskflow.store.engine import WORKERS_CHANNEL
from taskflow.store.pool import DATABASE_ERRORS, Listener
from taskflow.waiting import wait_any

log = logging.getLogger(__name__)

QUEUED_CHANNEL = "taskflow_queued"
# The dispatcher's listening session, as pg_stat_activity names it.
LISTENER_NAME = "taskflow-dispatcher"
IDLE_SECONDS = 1.0
# Never wider: a window of ids waiting in RabbitMQ is a window of unfairness.
MAX_WINDOW = 20_000
# Weight of the newest claim-rate sample.
RATE_WEIGHT = 0.3
SLOTS_REFRESH_SECONDS = 1.0
REDISPATCH_BATCH = 1000


class Dispatcher:
    """Given its store, broker and listener (``taskflow.runtime`` builds them)."""

    def __init__(
        self, settings: Settings, store: DispatchStore, broker: Broker, listener: Listener
    ) -> None:
        self.settings = settings
        self.store = store
        self.broker = broker
        self.listener = listener
        self.limits = FairLimits.from_settings(settings)
        self.window_seconds = settings.dispatch_window_ms / 1000
        self._wake = asyncio.Event()
        self._claim_rate = 0.0  # ids claimed per second, moving average
        self._in_window = 0  # what the window held after the last round
        self._last_round = time.monotonic()
        self._live_slots = 0
        self._live_workers = 0
        self._slots_read_at = 0.0
        self._redispatch_at = 0.0
        self.dispatched = 0
        self.rounds = 0

    def _on_notify(self, channel: str, _payload: str) -> None:
        if channel == WORKERS_CHANNEL:
            self._slots_read_at = 0.0  # read the fleet again this round
            self._wake.set()
        elif channel in (QUEUED_CHANNEL, "connected"):
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        self.listener.on_notify(self._on_notify)
        listening = asyncio.create_task(self.listener.run(stop), name="dispatcher listener")
        wait = 0.0
        try:
            while not stop.is_set():
                await wait_any(self._wake, stop, timeout=wait)
                self._wake.clear()
                if stop.is_set():
                    break
                self.rounds += 1
                try:
                    wait = await self.round()
                except DATABASE_ERRORS as exc:
                    log.warning(
                        "dispatch failed", extra={"event": "dispatch_failed", "error": str(exc)}
                    )
                    wait = IDLE_SECONDS
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)

    def window(self) -> int:
        expected = math.ceil(self._claim_rate * self.window_seconds)
        return max(1, min(MAX_WINDOW, max(expected, self._live_slots)))

    async def round(self) -> float:
        """One round; returns how long to wait before the next one at most."""
        if not self.broker.connected.is_set():
            return IDLE_SECONDS  # workers claim from Postgres meanwhile
        now = time.monotonic()
        if now - self._slots_read_at >= SLOTS_REFRESH_SECONDS:
            self._live_slots, self._live_workers = await self.store.live_worker_slots(
                alive_seconds=self.settings.lease_seconds
            )
            self._slots_read_at = now
        if now >= self._redispatch_at:
            await self._redispatch_stale()
            self._redispatch_at = now + self.settings.republish_after_seconds / 2
        if self._live_slots == 0:
            # Nobody to run them: ids sent now would wait in RabbitMQ for
            # the next workers, sized by a rate the last ones had, and
            # anyone's new task behind them. The next workers claim from
            # the pick themselves at start; the window grows from there.
            # Until a worker joins (NOTIFY taskflow_workers), a task becoming
            # queued changes nothing here: stop hearing of each one, which
            # would wake this process at every producer's commit.
            self._claim_rate = 0.0
            await self.listener.set_listening(QUEUED_CHANNEL, False)
            return IDLE_SECONDS
        await self.listener.set_listening(QUEUED_CHANNEL, True)
        in_window = await self.store.count_dispatched()
        self._observe_claims(in_window, now)
        room = self.window() - in_window
        picked = await self.store.dispatch(room, self.limits) if room > 0 else []
        self._in_window = in_window + len(picked)
        if picked:
            await self._publish([row["id"] for row in picked])
        # A full take means more is queued: come back as the window drains,
        # sooner when the workers had emptied it.
        if room <= 0 or len(picked) == room:
            quarter = self.window_seconds / 4
            return max(0.005, quarter / 4 if in_window == 0 else quarter)
        return IDLE_SECONDS

    def _observe_claims(self, in_window: int, now: float) -> None:
        elapsed = now - self._last_round
        self._last_round = now
        if elapsed <= 0:
            return
        claimed = max(0, self._in_window - in_window)
        rate = claimed / elapsed
        if in_window == 0 and claimed > 0:
            # The workers emptied the window: they could have taken more, so
            # what they took is a floor of their rate, not an average of it.
            self._claim_rate = max(self._claim_rate, rate)
            return
        self._claim_rate = (
            rate
            if self._claim_rate == 0
            else self._claim_rate * (1 - RATE_WEIGHT) + rate * RATE_WEIGHT
        )

    async def _publish(self, task_ids: list[UUID]) -> None:
        # Spread a small window over the workers rather than give one of them
        # all of it in a single message.
        per_message = max(1, math.ceil(len(task_ids) / max(self._live_workers, 1)))
        if await self.broker.publish_ids(task_ids, per_message=per_message):
            self.dispatched += len(task_ids)
            return
        # Not published: out of the window again, so workers claiming from
        # Postgres can take them and the next round picks them anew.
        await self.store.undispatch(task_ids)

    async def _redispatch_stale(self) -> None:
        # Only while RabbitMQ holds nothing ready: otherwise the ids may still
        # be in it, and publishing again on every round would pile them up
        # while no worker consumes.
        if await self.broker.queue_depth() != 0:
            return
        stale = await self.store.redispatch_stale(
            self.settings.republish_after_seconds, REDISPATCH_BATCH
        )
        if stale:
            log.info("ids republished", extra={"event": "redispatched", "count": len(stale)})
            await self.broker.publish_ids(stale)
