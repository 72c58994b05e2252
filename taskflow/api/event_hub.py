"""The event hub: one LISTEN connection per API process, fanned out in memory to
the open event streams of each user (taskflow/api/events.py has the whole
design, and the SSE routes)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from taskflow.api.revocations import Revocation, Revocations
from taskflow.auth import TokenClaims
from taskflow.store.events import LiveEventsStore
from taskflow.store.pool import DATABASE_ERRORS, Listener, Record
from taskflow.waiting import wait_any, wait_event

log = logging.getLogger(__name__)

CHANNEL = "taskflow_events"
# Events a stream may have waiting before it counts as slow. At ~250 bytes an
# event, 256 of them is 64 KiB per client at worst.
QUEUE_SIZE = 256
LISTENER_START_SECONDS = 5.0
# The history trigger notifies only for watched users (0003 says why): a
# stream marks its user watched when it opens, and each process renews its
# users' marks well before they lapse. A mark outlives its last stream by up
# to WATCH_SECONDS, during which that user's changes still notify.
WATCH_SECONDS = 60.0
WATCH_REFRESH_SECONDS = 20.0
EXPIRED_WATCH_KEPT_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One change of one task's status: a task_history row."""

    id: int
    task_id: str
    from_status: str | None
    status: str
    event: str
    attempt: int
    at: datetime

    @classmethod
    def from_notification(cls, item: dict[str, Any]) -> TaskEvent:
        return cls(
            id=int(item["id"]),
            task_id=str(item["task_id"]),
            from_status=item["from_status"],
            status=str(item["status"]),
            event=str(item["event"]),
            attempt=int(item["attempt"]),
            # Postgres writes the session's offset; the API answers in UTC "Z".
            at=datetime.fromisoformat(item["at"]),
        )

    @classmethod
    def from_record(cls, row: Record) -> TaskEvent:
        return cls(
            id=row["id"],
            task_id=str(row["task_id"]),
            from_status=row["from_status"],
            status=row["status"],
            event=row["event"],
            attempt=row["attempt"],
            at=row["at"],
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_id": self.task_id,
            "from_status": self.from_status,
            "status": self.status,
            "event": self.event,
            "attempt": self.attempt,
            "at": self.at,
        }


class CatchUp:
    """Queued instead of events the stream missed: read them from history."""


CATCH_UP = CatchUp()


class Closed:
    """Queued last, for a stream that must end: its token was taken back or expired."""


CLOSED = Closed()


class Subscription:
    """One open stream: whose events it wants, on which token, and its bounded queue."""

    def __init__(
        self,
        user_id: int,
        task_id: str | None,
        queue_size: int,
        claims: TokenClaims | None = None,
    ) -> None:
        self.user_id = user_id
        self.task_id = task_id
        self.claims = claims
        self.queue: asyncio.Queue[TaskEvent | CatchUp | Closed] = asyncio.Queue(queue_size)
        self.behind = False
        self.times_behind = 0
        self.closed = False

    def offer(self, event: TaskEvent) -> None:
        """Queue ``event`` if this stream wants it. Never waits."""
        if self.task_id is not None and event.task_id != self.task_id:
            return
        if self.behind or self.closed:
            return  # the catch-up reads it from history; a closed stream reads nothing
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.fall_behind()

    def fall_behind(self) -> None:
        """Drop what is queued and have the stream read history instead.

        Everything dropped was committed before it was notified, so the
        catch-up query, which starts later, sees all of it.
        """
        if self.behind or self.closed:
            return
        self.behind = True
        self.times_behind += 1
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(CATCH_UP)

    def close(self) -> None:
        """End the stream: nothing more is sent on it. Never waits."""
        if self.closed:
            return
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(CLOSED)


class EventHub:
    """The one listening connection of this process, fanned out in memory."""

    def __init__(
        self, store: LiveEventsStore, listener: Listener, *, queue_size: int | None = None
    ) -> None:
        self.queue_size = queue_size or QUEUE_SIZE
        self.store = store
        self.listener = listener
        self._by_user: dict[int, set[Subscription]] = {}
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.revocations: Revocations | None = None

    # ----- subscriptions

    def subscribe(
        self, user_id: int, task_id: str | None = None, claims: TokenClaims | None = None
    ) -> Subscription:
        subscription = Subscription(user_id, task_id, self.queue_size, claims)
        self._by_user.setdefault(user_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscriptions = self._by_user.get(subscription.user_id)
        if subscriptions is not None:
            subscriptions.discard(subscription)
            if not subscriptions:
                del self._by_user[subscription.user_id]

    def streams_of(self, user_id: int) -> int:
        return len(self._by_user.get(user_id, ()))

    def stream_count(self) -> int:
        return sum(len(subscriptions) for subscriptions in self._by_user.values())

    # ----- revoked tokens: their streams end

    def watch_revocations(self, revocations: Revocations) -> None:
        self.revocations = revocations
        revocations.add_observer(self.on_revocation)

    async def allows(self, claims: TokenClaims) -> bool:
        return self.revocations is None or await self.revocations.allows(claims)

    def on_revocation(self, revocation: Revocation | None) -> None:
        """Close the streams a revocation refuses; None: check them all again."""
        if revocation is None:
            self._spawn(self._close_revoked_streams())
            return
        for subscription in tuple(self._by_user.get(revocation.user_id, ())):
            if subscription.claims is not None and revocation.refuses(subscription.claims):
                subscription.close()

    async def _close_revoked_streams(self) -> None:
        for subscriptions in list(self._by_user.values()):
            for subscription in tuple(subscriptions):
                claims = subscription.claims
                try:
                    if claims is not None and not await self.allows(claims):
                        subscription.close()
                except DATABASE_ERRORS as exc:
                    # Its next heartbeat checks again.
                    log.warning(
                        "cannot check an event stream's token",
                        extra={"event": "event_stream_check_failed", "error": str(exc)},
                    )

    # ----- notifications

    def on_notify(self, channel: str, payload: str) -> None:
        """The Listener's callback; runs on the event loop, so it must not wait."""
        if channel == CHANNEL:
            self.publish(payload)
        elif channel == "reconnected":
            self._spawn(self._catch_up_after_reconnect())

    def publish(self, payload: str) -> None:
        try:
            items = orjson.loads(payload)
            if not isinstance(items, list):
                raise TypeError("not a JSON array")
            for item in items:
                subscriptions = self._by_user.get(item["user_id"])
                if not subscriptions:
                    continue  # nobody of this user is watching: skip the parsing
                event = TaskEvent.from_notification(item)
                # A copy: offer() never re-enters, but a stream may unsubscribe
                # between two notifications of one batch.
                for subscription in tuple(subscriptions):
                    subscription.offer(event)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            # Only a person NOTIFYing this channel by hand can send this.
            log.warning(
                "malformed task event notification",
                extra={"event": "task_event_malformed", "error": str(exc)},
            )

    def fall_behind_all(self) -> None:
        for subscriptions in self._by_user.values():
            for subscription in subscriptions:
                subscription.fall_behind()

    async def _catch_up_after_reconnect(self) -> None:
        # The Listener reports "reconnected" before it listens again; a
        # catch-up read before then could miss what commits in between.
        await wait_any(self.listener.connected, self._stop, timeout=None)
        if self.listener.connected.is_set():
            self.fall_behind_all()

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----- lifecycle

    async def _keep_watching(self) -> None:
        """Renew the watch of every user with a stream open here."""
        store = self.store
        while not await wait_event(self._stop, WATCH_REFRESH_SECONDS):
            try:
                if self._by_user:
                    lapsed = await store.watch_users(list(self._by_user), WATCH_SECONDS)
                    # Their watch had lapsed (a failed renewal, a row deleted
                    # by hand): what changed meanwhile was not notified.
                    for user_id in lapsed:
                        for subscription in self._by_user.get(user_id, ()):
                            subscription.fall_behind()
                await store.delete_expired_watchers(EXPIRED_WATCH_KEPT_SECONDS)
            except DATABASE_ERRORS as exc:
                # The next round tries again, and catches up whoever lapsed.
                log.warning(
                    "cannot renew event watchers",
                    extra={"event": "event_watch_failed", "error": str(exc)},
                )

    async def start(self) -> None:
        self.listener.on_notify(self.on_notify)
        self._spawn(self.listener.run(self._stop))
        self._spawn(self._keep_watching())
        # Streams opened before the first LISTEN would miss events; give it a
        # moment (without Postgres the app's pool fails the start-up anyway).
        await wait_any(self.listener.connected, timeout=LISTENER_START_SECONDS)

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
