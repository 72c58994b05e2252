"""GET /api/events and GET /api/tasks/<id>/events: live status changes as
Server-Sent Events.

How it fits together:

* Postgres sends each new task_history row of a watched user (next point) on
  channel ``taskflow_events`` (``db/migrations/0003_task_events.sql``).
  Each API process holds ONE
  listening connection (:class:`taskflow.store.Listener`), started and stopped
  with the app, and an :class:`EventHub` that hands each row to the open
  streams of the task's owner: no query per event, however many clients watch.
* Postgres notifies only for users with a stream open somewhere (table
  ``task_event_watchers``): NOTIFY makes commits wait for each other, so the
  queue's hot path should pay for it only while somebody watches. A stream
  marks its user when it opens; the hub renews the marks of its users every
  ``WATCH_REFRESH_SECONDS``, and a mark lapses ``WATCH_SECONDS`` after the
  last renewal.
* Each stream has its own bounded queue, and the hub never waits on one. When
  a client reads too slowly and its queue fills, the hub empties that queue
  and marks the stream *behind*; the stream then catches up from task_history
  (the event log) in its own time or, when it is more than ``REPLAY_LIMIT``
  events behind, sends a ``resync`` event: "reload from the REST API". The
  same catch-up runs for every stream once a lost listening connection is back
  (what was sent while it was gone is lost to LISTEN, not to history).
* An event's SSE id is its task_history id. A client that reconnects with
  ``Last-Event-ID`` (or ``?last_event_id=``, for a first EventSource
  connection, which cannot set headers) is sent what it missed, from history.
  Delivery is at least once: ids arrive in commit order, which is not always
  ascending, and a resume overlaps the few seconds before its cursor
  (``taskflow.store.SELECT_OWN_EVENTS_SINCE`` says why). A client drops the
  ids it has already seen.

On the wire::

    retry: 3000

    id: 8123
    event: ready
    data: {"last_event_id":8123}

    id: 8124
    event: task
    data: {"id":8124,"task_id":"…","from_status":"queued","status":"processing",
           "event":"claimed","attempt":1,"at":"2030-01-01T12:00:00.123456Z"}

    : ping

    id: 9000
    event: resync
    data: {"reason":"…","last_event_id":9000}

``ready`` comes once, after any replay: from then on, every change arrives.
``: ping`` comes every ``HEARTBEAT_SECONDS`` of silence, so proxies and load
balancers keep the connection open and a dead client is noticed.

Authentication is the API's Bearer token, in the Authorization header or, on
these two routes only, as ``?access_token=``, because the browser's
EventSource cannot send headers. The trade-off: a URL is kept in places a
header is not (proxy and server access logs, browser history, crash reports),
so a token there leaks more easily. TaskFlow's own request log records the
route pattern, never the URL. Clients that can send headers should: the
dashboard streams with ``fetch()`` and the header; curl and SDKs can too.

A stream ends (the response completes) when its token is taken back — a
logout of that token, a password change, the user deleted, in this process
or another (taskflow/api/revocations.py) — or when the token expires. A
client reconnecting with it then gets a 401.

Shutdown: an open stream never ends by itself, so uvicorn waits up to its
graceful-shutdown timeout and then cancels it; a client reconnects to
another process (or this one, restarted) with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from quart import Blueprint, Quart, Response, current_app, request

from taskflow.api import ApiServices, services
from taskflow.api.event_hub import (
    QUEUE_SIZE,
    WATCH_SECONDS,
    CatchUp,
    Closed,
    EventHub,
    Subscription,
    TaskEvent,
)
from taskflow.api.responses import dumps, json_response
from taskflow.api.security import authenticate
from taskflow.api.tasks import parse_task_id
from taskflow.auth import TokenClaims, token_from_header
from taskflow.errors import TaskNotFound, ValidationFailed
from taskflow.store.events import LiveEventsStore
from taskflow.store.pool import DATABASE_ERRORS

log = logging.getLogger(__name__)

blueprint = Blueprint("events", __name__)

HUB_EXTENSION = "taskflow_events"
HEARTBEAT_SECONDS = 15.0
# A stream further behind than this is told to reload instead of replaying.
REPLAY_LIMIT = 500
# Status changes commit within milliseconds of taking their history id; a
# person in psql holding a transaction open longer is not covered on resume
# (streams connected at the time get the change live all the same).
REPLAY_OVERLAP_SECONDS = 5.0
# A safety valve for one process's memory, not a quota: checked when a stream
# opens, so concurrent openings may pass it by a few.
MAX_STREAMS_PER_USER = 16
RETRY_MILLISECONDS = 3000
# A change whose trigger ran just before a new stream's mark committed was not
# notified; one look at history this long after opening picks it up.
SETTLE_SECONDS = 1.0
# Events written to the client in one go when many are waiting.
WRITE_BATCH = 64
MAX_EVENT_ID = 2**63 - 1


def hub() -> EventHub:
    event_hub: EventHub = current_app.extensions[HUB_EXTENSION]
    return event_hub


async def start_hub(app: Quart, api_services: ApiServices) -> EventHub:
    """Start this process's hub for as long as the app serves; the caller stops it."""
    event_hub = EventHub(api_services.events, api_services.event_listener)
    # A stream ends when its token is taken back (logout, password change,
    # user deleted), in whichever process that happens.
    event_hub.watch_revocations(api_services.revocations)
    app.extensions[HUB_EXTENSION] = event_hub
    await event_hub.start()
    return event_hub


# ----- one client's stream ---------------------------------------------------------


def frame(name: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One SSE message. JSON from orjson holds no line breaks, so data is one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: ".encode() + dumps(data) + b"\n\n"


class EventStream:
    """The body of one SSE response: replay, then live events and heartbeats."""

    def __init__(
        self,
        event_hub: EventHub,
        store: LiveEventsStore,
        user_id: int,
        task_id: UUID | None,
        resume_from: int | None,
        claims: TokenClaims | None = None,
    ) -> None:
        self.hub = event_hub
        self.store = store
        self.user_id = user_id
        self.claims = claims
        self.task_id = task_id
        self.resume_from = resume_from
        self.cursor = 0
        # Ids already written, so overlapping replays do not repeat them.
        self._sent: set[int] = set()
        self._sent_order: deque[int] = deque()

    async def body(self) -> AsyncIterator[bytes]:
        # Subscribing here, not in the view: only a started generator runs its
        # finally, so only here is the unsubscribe guaranteed.
        subscription = self.hub.subscribe(
            self.user_id, str(self.task_id) if self.task_id else None, self.claims
        )
        loop = asyncio.get_running_loop()
        settle = loop.call_later(SETTLE_SECONDS, subscription.fall_behind)
        # A stream lives no longer than the token it was opened with.
        expiry = (
            loop.call_later(max(0.0, self.claims.expires - time.time()), subscription.close)
            if self.claims is not None
            else None
        )
        try:
            yield f"retry: {RETRY_MILLISECONDS}\n\n".encode()
            # Once more now that it is subscribed: a revocation heard between
            # the route's check and the subscription had no stream to close.
            if not await self._still_allowed():
                return
            await self.store.watch_users([self.user_id], WATCH_SECONDS)
            # After subscribing and watching: whatever commits from here on is
            # notified and queued.
            self.cursor = await self.store.select_history_watermark()
            if self.resume_from is not None:
                watermark, self.cursor = self.cursor, self.resume_from
                replay = await self._catch_up()
                self.cursor = max(self.cursor, watermark)
                if replay:
                    yield replay
            yield frame("ready", {"last_event_id": self.cursor}, self.cursor)
            while True:
                items = await self._next(subscription)
                if subscription.closed:
                    return
                if not items:
                    # A backstop for a revocation whose closing was missed
                    # (its check failed): a lookup in memory, most of the time.
                    if not await self._still_allowed():
                        return
                    yield b": ping\n\n"
                    continue
                if any(isinstance(item, CatchUp) for item in items):
                    # Reset first: events notified during the query are queued
                    # again (and skipped if the query also returned them).
                    subscription.behind = False
                    chunk = await self._catch_up()
                else:
                    chunk = b"".join(
                        self._event_frame(item) for item in items if isinstance(item, TaskEvent)
                    )
                if chunk:
                    yield chunk
        except DATABASE_ERRORS as exc:
            # End the stream; the client reconnects with Last-Event-ID.
            log.warning(
                "event stream ended: database unavailable",
                extra={"event": "event_stream_failed", "error": str(exc)},
            )
        finally:
            settle.cancel()
            if expiry is not None:
                expiry.cancel()
            self.hub.unsubscribe(subscription)

    async def _still_allowed(self) -> bool:
        return self.claims is None or await self.hub.allows(self.claims)

    async def _next(self, subscription: Subscription) -> list[TaskEvent | CatchUp | Closed]:
        """What is waiting (at least one item), or [] after a heartbeat's silence."""
        try:
            async with asyncio.timeout(HEARTBEAT_SECONDS):
                items = [await subscription.queue.get()]
        except TimeoutError:
            return []
        while len(items) < WRITE_BATCH and not subscription.queue.empty():
            items.append(subscription.queue.get_nowait())
        return items

    async def _catch_up(self) -> bytes:
        """History after the cursor; a ``resync`` when that is too much."""
        if self.task_id is None:
            rows = await self.store.select_own_events_since(
                self.user_id,
                self.cursor,
                overlap_seconds=REPLAY_OVERLAP_SECONDS,
                limit=REPLAY_LIMIT + 1,
            )
        else:
            rows = await self.store.select_own_task_events_since(
                self.user_id,
                self.task_id,
                self.cursor,
                overlap_seconds=REPLAY_OVERLAP_SECONDS,
                limit=REPLAY_LIMIT + 1,
            )
        missed = [row for row in rows if row["id"] > self.cursor]
        if len(missed) > REPLAY_LIMIT:
            # Read before the client reloads: its reload then holds everything
            # up to here, and the stream carries on from here.
            self.cursor = max(self.cursor, await self.store.select_history_watermark())
            reason = f"more than {REPLAY_LIMIT} changes were missed: reload, then carry on"
            return frame("resync", {"reason": reason, "last_event_id": self.cursor}, self.cursor)
        rows.sort(key=lambda row: row["id"])
        return b"".join(self._event_frame(TaskEvent.from_record(row)) for row in rows)

    def _event_frame(self, event: TaskEvent) -> bytes:
        if event.id in self._sent:
            return b""
        self._remember(event.id)
        self.cursor = max(self.cursor, event.id)
        return frame("task", event.as_json(), event.id)

    def _remember(self, event_id: int) -> None:
        self._sent.add(event_id)
        self._sent_order.append(event_id)
        # Enough to cover one overlapping replay; older ids cannot come again
        # within a connection.
        while len(self._sent_order) > 2 * REPLAY_LIMIT + QUEUE_SIZE:
            self._sent.discard(self._sent_order.popleft())


# ----- routes -----------------------------------------------------------------------


async def _authenticate() -> TokenClaims:
    """The header's Bearer token, or ``?access_token=`` (see the module docstring)."""
    header = request.headers.get("Authorization")
    query_token = request.args.get("access_token")
    if header is None and query_token:
        scheme, _, rest = query_token.strip().partition(" ")
        # The login's "token" field ("Bearer <jwt>") works as well as its access_token.
        token = rest.strip() if scheme.lower() == "bearer" and rest else query_token.strip()
    else:
        token = token_from_header(header)
    return await authenticate(token)


def _resume_from() -> int | None:
    """``Last-Event-ID`` (sent by EventSource when it reconnects) or, for the
    first connection, ``?last_event_id=``. The header wins: a reconnecting
    EventSource still has the original query in its URL."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_EVENT_ID:
        raise ValidationFailed(
            "invalid Last-Event-ID",
            details=[{"field": "Last-Event-ID", "message": "must be an event id (an integer)"}],
        )
    return int(raw)


def _store() -> LiveEventsStore:
    return services().events


def _stream_response(
    claims: TokenClaims, task_id: UUID | None, resume_from: int | None
) -> Response:
    user_id = claims.user_id
    event_hub = hub()
    if event_hub.streams_of(user_id) >= MAX_STREAMS_PER_USER:
        return json_response(
            {"error": f"too many open event streams (at most {MAX_STREAMS_PER_USER} per user)"},
            429,
            {"Retry-After": "5"},
        )
    stream = EventStream(event_hub, _store(), user_id, task_id, resume_from, claims)
    response = Response(
        stream.body(),
        status=200,
        content_type="text/event-stream; charset=utf-8",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    # Quart would cut the body off after RESPONSE_TIMEOUT; a stream is open-ended.
    response.timeout = None
    return response


@blueprint.get("/api/events")
async def user_events() -> Response:
    claims = await _authenticate()
    return _stream_response(claims, None, _resume_from())


@blueprint.get("/api/tasks/<raw_id>/events")
async def task_events(raw_id: str) -> Response:
    claims = await _authenticate()
    task_id = parse_task_id(raw_id)
    resume_from = _resume_from()
    # Another user's task is indistinguishable from a missing one.
    if await services().tasks.select_own_task(task_id, claims.user_id) is None:
        raise TaskNotFound()
    return _stream_response(claims, task_id, resume_from)
