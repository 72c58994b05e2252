"""Live events over Server-Sent Events (taskflow/api/events.py and migration
0003): what arrives, to whom, after a reconnect, and that a slow client never
holds up the others."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart
from quart.typing import TestClientProtocol as Client

from taskflow.api import create_app, event_hub, events
from taskflow.config import Settings
from taskflow.enqueue import new_task_id
from taskflow.handlers import Registry
from taskflow.models import TaskStatus
from taskflow.runtime import api_services
from taskflow.store.events import LiveEventsStore
from taskflow.store.pool import Listener
from taskflow.store.tasks import NewTask
from tests.conftest import wait_until
from tests.integration.api_helpers import (
    FUTURE,
    create_task,
    json_error,
    put_task_in,
    token_for,
)
from tests.stores import Store

Message = dict[str, Any]


class SSEReader:
    """Reads Server-Sent Events from a Quart test connection."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.buffer = b""
        self.seen: list[Message] = []

    async def next(self, timeout: float = 10) -> Message:
        """The next message: {"id", "event", "data"} or {"comment"}."""
        async with asyncio.timeout(timeout):
            while b"\n\n" not in self.buffer:
                self.buffer += await self.connection.receive()
        raw, self.buffer = self.buffer.split(b"\n\n", 1)
        message: Message = {}
        for line in raw.decode().split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "":
                message["comment"] = value
            elif field == "data":
                message["data"] = orjson.loads(value)
            else:
                message[field] = value
        self.seen.append(message)
        return message

    async def until(self, predicate: Any, timeout: float = 10) -> list[Message]:
        """Messages up to and including the first that satisfies ``predicate``."""
        taken: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next(max(deadline - time.monotonic(), 0.01))
            taken.append(message)
            if predicate(message):
                return taken

    async def task_events(self, count: int, timeout: float = 10) -> list[Message]:
        """The next ``count`` task events (skipping pings)."""
        found: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            message = await self.next(max(deadline - time.monotonic(), 0.01))
            if message.get("event") == "task":
                found.append(message)
        return found


@asynccontextmanager
async def stream(
    client: Client, path: str, headers: dict[str, str] | None = None, *, ready: bool = True
) -> AsyncIterator[SSEReader]:
    async with client.request(path, headers=headers or {}) as connection:
        await connection.send_complete()
        reader = SSEReader(connection)
        try:
            if ready:
                await reader.until(lambda m: m.get("event") == "ready")
            yield reader
        finally:
            await connection.disconnect()


def statuses(messages: list[Message]) -> list[str]:
    return [m["data"]["status"] for m in messages if m.get("event") == "task"]


@pytest.fixture
def quick_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "HEARTBEAT_SECONDS", 0.2)


def hub_of(client: Client) -> event_hub.EventHub:
    app: Quart = client.app  # type: ignore[attr-defined]
    hub: event_hub.EventHub = app.extensions[events.HUB_EXTENSION]
    return hub


# ----- what arrives


async def test_status_changes_arrive_in_order(client: Client, store: Store) -> None:
    headers = await token_for(store)
    async with stream(client, "/api/events", headers) as reader:
        assert reader.connection.status_code == 200
        assert reader.connection.headers["Content-Type"].startswith("text/event-stream")
        assert reader.connection.headers["Cache-Control"] == "no-store"
        assert reader.seen[0] == {"retry": str(events.RETRY_MILLISECONDS)}
        task = await create_task(client, headers)
        await put_task_in(store, task["id"], TaskStatus.DONE)
        got = await reader.task_events(3)
    assert statuses(got) == ["queued", "processing", "done"]
    assert [m["data"]["event"] for m in got] == ["created", "claimed", "completed"]
    assert {m["data"]["task_id"] for m in got} == {task["id"]}
    assert [m["data"]["from_status"] for m in got] == [None, "queued", "processing"]
    assert [m["data"]["attempt"] for m in got] == [0, 1, 1]
    # The SSE id is the history id, ascending here, and the data says it too.
    ids = [int(m["id"]) for m in got]
    assert ids == sorted(ids)
    assert ids == [m["data"]["id"] for m in got]
    history = await store.pool.fetch(
        "SELECT id FROM task_history WHERE task_id = $1 ORDER BY id", uuid.UUID(task["id"])
    )
    assert ids == [row["id"] for row in history]
    # Times in UTC with a Z, like every time the API returns.
    assert all(m["data"]["at"].endswith("Z") for m in got)


async def test_task_stream_carries_only_that_task(client: Client, store: Store) -> None:
    headers = await token_for(store)
    watched = await create_task(client, headers, run_at=FUTURE)
    other = await create_task(client, headers, run_at=FUTURE)
    async with stream(client, f"/api/tasks/{watched['id']}/events", headers) as reader:
        await client.post(f"/api/tasks/{other['id']}/cancel", headers=headers)
        await client.post(f"/api/tasks/{watched['id']}/cancel", headers=headers)
        got = await reader.task_events(1)
    assert got[0]["data"]["task_id"] == watched["id"]
    assert got[0]["data"]["status"] == "cancelled"


async def test_a_batch_of_changes_arrives_complete(client: Client, store: Store) -> None:
    """One statement changing many rows sends several notifications, each
    under NOTIFY's size limit, and the stream passes on every row."""
    headers = await token_for(store)
    user_id = await store.pool.fetchval("SELECT id FROM users")
    async with stream(client, "/api/events", headers) as reader:
        rows = await store.insert_tasks(
            user_id,
            [NewTask(new_task_id(), "test_noop", {"n": i}, 0, 3, None) for i in range(300)],
        )
        got = await reader.task_events(300)
    assert {m["data"]["task_id"] for m in got} == {str(row["id"]) for row in rows}


async def test_notification_payloads_stay_under_the_limit(database: str) -> None:
    """The migration's size bound, with the largest row it can carry: 19-digit
    ids and an event name that JSON escapes six bytes a character."""
    connection = await asyncpg.connect(database)
    listening = await asyncpg.connect(database)
    payloads: list[str] = []
    try:
        await listening.add_listener(
            "taskflow_events", lambda _c, _p, _ch, payload: payloads.append(payload)
        )
        await connection.execute(
            "ALTER TABLE users ALTER COLUMN id RESTART WITH 9000000000000000000"
        )
        await connection.execute(
            "ALTER TABLE task_history ALTER COLUMN id RESTART WITH 9000000000000000000"
        )
        user_id = await connection.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ('big@example.com', 'x') RETURNING id"
        )
        await connection.execute(WATCH, user_id)
        await connection.execute(
            "SELECT set_config('taskflow.event', repeat(E'\\u0001', 500), false)"
        )
        await connection.execute(
            """
            INSERT INTO tasks (id, user_id, type, payload, status, attempts, max_retries)
            SELECT gen_random_uuid(), $1, 'test_noop', '{}', 'queued', 0, 10
            FROM generate_series(1, 100)
            """,
            user_id,
        )
        await connection.execute(
            "UPDATE tasks SET status = 'cancelled', finished_at = now(), attempts = 11"
        )
        await wait_until(
            lambda: _async_true(sum(len(orjson.loads(p)) for p in payloads) == 200),
            what="all 200 events notified",
        )
    finally:
        await connection.close()
        await listening.close()
    assert max(len(p.encode()) for p in payloads) < 7000
    assert all(len(orjson.loads(p)) <= 16 for p in payloads)
    assert orjson.loads(payloads[-1])[0]["event"] == "\x01" * 32


async def _async_true(value: bool) -> bool:
    return value


WATCH = """
INSERT INTO task_event_watchers (user_id, watched_until) VALUES ($1, now() + interval '1 minute')
ON CONFLICT (user_id) DO UPDATE SET watched_until = excluded.watched_until
"""


async def test_only_watched_users_changes_are_notified(database: str) -> None:
    """NOTIFY slows commits down, so nobody pays for it unless watched."""
    connection = await asyncpg.connect(database)
    listening = await asyncpg.connect(database)
    payloads: list[str] = []
    try:
        await listening.add_listener(
            "taskflow_events", lambda _c, _p, _ch, payload: payloads.append(payload)
        )
        watched, unwatched, lapsed = [
            await connection.fetchval(
                "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
                f"{name}@example.com",
            )
            for name in ("watched", "unwatched", "lapsed")
        ]
        await connection.execute(WATCH, watched)
        await connection.execute(
            "INSERT INTO task_event_watchers VALUES ($1, now() - interval '1 second')", lapsed
        )
        # One statement for all three users' tasks: only the watched one's go out.
        await connection.execute(
            """
            INSERT INTO tasks (id, user_id, type, payload, status)
            SELECT gen_random_uuid(), u, 'test_noop', '{}', 'queued'
            FROM unnest($1::bigint[]) AS u, generate_series(1, 3)
            """,
            [watched, unwatched, lapsed],
        )
        await connection.execute("UPDATE tasks SET status = 'cancelled', finished_at = now()")
        # A marker after the rest: once it arrives, everything before it has.
        await connection.execute("SELECT pg_notify('taskflow_events', '[]')")
        await wait_until(lambda: _async_true("[]" in payloads), what="the marker")
        sent = [item for payload in payloads for item in orjson.loads(payload)]
        assert {item["user_id"] for item in sent} == {watched}
        assert len(sent) == 6
        # Nobody watched at all: the trigger stops at its first question.
        await connection.execute("DELETE FROM task_event_watchers")
        payloads.clear()
        await connection.execute("UPDATE tasks SET status = 'queued', finished_at = NULL")
        await connection.execute("SELECT pg_notify('taskflow_events', '[]')")
        await wait_until(lambda: _async_true("[]" in payloads), what="the marker")
        assert payloads == ["[]"]
    finally:
        await connection.close()
        await listening.close()


@pytest.fixture
def quick_watch_renewal(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before the app starts: its hub reads these in its renewal loop.
    monkeypatch.setattr(event_hub, "WATCH_REFRESH_SECONDS", 0.1)
    monkeypatch.setattr(event_hub, "EXPIRED_WATCH_KEPT_SECONDS", 0.0)
    # Out of the way: only the renewal may catch a stream up here.
    monkeypatch.setattr(events, "SETTLE_SECONDS", 3600.0)


async def test_the_hub_renews_its_users_watches_and_drops_lapsed_ones(
    quick_watch_renewal: None, client: Client, store: Store
) -> None:
    headers = await token_for(store)
    user_id = await store.pool.fetchval("SELECT id FROM users")
    gone = await store.insert_user("gone@example.com", "x")
    await store.pool.execute(
        "INSERT INTO task_event_watchers VALUES ($1, now() - interval '1 second')", gone
    )

    async def watchers() -> set[int]:
        rows = await store.pool.fetch("SELECT user_id FROM task_event_watchers")
        return {row["user_id"] for row in rows}

    async with stream(client, "/api/events", headers) as reader:
        await store.pool.execute("DELETE FROM task_event_watchers WHERE user_id = $1", user_id)
        # Not watched for now: this change is not notified ...
        task = await create_task(client, headers)
        await wait_until(lambda: _is(watchers(), {user_id}), what="renewed, lapsed one gone")
        # ... but the renewal notices the gap and the stream reads it from history.
        got = await reader.task_events(1)
    assert got[0]["data"]["task_id"] == task["id"]


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_a_new_stream_reads_history_once_it_has_settled(
    client: Client, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change whose trigger ran just before the stream's watch committed is
    never notified; the stream's one look back a moment later finds it. Here
    the watch is left out altogether, so only that look can deliver."""

    async def not_watching(self: Any, user_ids: Any, seconds: float) -> list[int]:
        return []

    monkeypatch.setattr(LiveEventsStore, "watch_users", not_watching)
    monkeypatch.setattr(events, "SETTLE_SECONDS", 0.5)
    headers = await token_for(store)
    async with stream(client, "/api/events", headers) as reader:
        task = await create_task(client, headers)
        got = await reader.task_events(1)
    assert got[0]["data"]["task_id"] == task["id"]
    assert await store.pool.fetchval("SELECT count(*) FROM task_event_watchers") == 0


async def test_an_open_stream_marks_its_user_watched(client: Client, store: Store) -> None:
    headers = await token_for(store)
    user_id = await store.pool.fetchval("SELECT id FROM users")
    assert await store.pool.fetchval("SELECT count(*) FROM task_event_watchers") == 0
    async with stream(client, "/api/events", headers):
        until = await store.pool.fetchval(
            "SELECT watched_until - now() FROM task_event_watchers WHERE user_id = $1", user_id
        )
    assert until.total_seconds() > event_hub.WATCH_SECONDS - 5


# ----- who gets what


async def test_a_user_never_sees_another_users_events(
    client: Client, store: Store, quick_heartbeat: None
) -> None:
    alice = await token_for(store, "alice@example.com")
    bob = await token_for(store, "bob@example.com")
    async with stream(client, "/api/events", bob) as bobs:
        async with stream(client, "/api/events", alice) as alices:
            task = await create_task(client, alice)
            await put_task_in(store, task["id"], TaskStatus.FAILED)
            await alices.task_events(3)
        # Several heartbeats' worth of Bob's stream: pings, none of Alice's events.
        own = await create_task(client, bob)
        got = await bobs.until(lambda m: m.get("event") == "task")
        await bobs.until(lambda m: "comment" in m)
    assert [m["data"]["task_id"] for m in got if m.get("event") == "task"] == [own["id"]]
    assert all(m.get("data", {}).get("task_id") != task["id"] for m in bobs.seen)


async def test_another_users_task_stream_is_404(client: Client, store: Store) -> None:
    alice = await token_for(store, "alice@example.com")
    bob = await token_for(store, "bob@example.com")
    task = await create_task(client, alice)
    response = await client.get(f"/api/tasks/{task['id']}/events", headers=bob)
    await json_error(response, 404)
    response = await client.get(f"/api/tasks/{uuid.uuid4()}/events", headers=alice)
    await json_error(response, 404)
    response = await client.get("/api/tasks/not-a-uuid/events", headers=alice)
    await json_error(response, 400)


async def test_streams_need_a_valid_token(client: Client, store: Store) -> None:
    headers = await token_for(store)
    task = await create_task(client, headers)
    for path in ("/api/events", f"/api/tasks/{task['id']}/events"):
        response = await client.get(path)
        body = await json_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization" in body["error"]
        await json_error(await client.get(path, headers={"Authorization": "Bearer nope"}), 401)
        await json_error(await client.get(f"{path}?access_token=nope"), 401)
        # A bad header is not rescued by a good query token: one credential, checked.
        good = headers["Authorization"].split()[1]
        response = await client.get(
            f"{path}?access_token={good}", headers={"Authorization": "Bearer nope"}
        )
        await json_error(response, 401)


async def test_the_token_may_come_in_the_query_for_eventsource(
    client: Client, store: Store
) -> None:
    headers = await token_for(store)
    raw = headers["Authorization"].split()[1]
    async with stream(client, f"/api/events?access_token={raw}") as reader:
        task = await create_task(client, headers)
        got = await reader.task_events(1)
    assert got[0]["data"]["task_id"] == task["id"]
    # The login's "token" field, "Bearer <jwt>", works verbatim too.
    async with stream(client, f"/api/events?access_token=Bearer%20{raw}"):
        pass
    # Only the two event routes accept it.
    await json_error(await client.get(f"/api/tasks?access_token={raw}"), 401)


async def test_a_malformed_last_event_id_is_400(client: Client, store: Store) -> None:
    headers = await token_for(store)
    for value in ("abc", "-1", "1.5", "99999999999999999999", "١٢"):
        response = await client.get("/api/events", headers={**headers, "Last-Event-ID": value})
        body = await json_error(response, 400)
        assert body["details"][0]["field"] == "Last-Event-ID"


# ----- resuming


async def test_last_event_id_resumes_where_the_client_left(client: Client, store: Store) -> None:
    headers = await token_for(store)
    first = await create_task(client, headers, run_at=FUTURE)
    async with stream(client, "/api/events", headers) as reader:
        await client.post(f"/api/tasks/{first['id']}/cancel", headers=headers)
        seen = await reader.task_events(1)
    last_id = seen[-1]["id"]
    # While nobody listens: two more changes.
    second = await create_task(client, headers)
    await client.post(f"/api/tasks/{second['id']}/cancel", headers=headers)
    async with stream(
        client, "/api/events", {**headers, "Last-Event-ID": last_id}, ready=False
    ) as reader:
        replayed = await reader.until(lambda m: m.get("event") == "ready")
    missed = [m for m in replayed if m.get("event") == "task" and int(m["id"]) > int(last_id)]
    assert [(m["data"]["task_id"], m["data"]["status"]) for m in missed] == [
        (second["id"], "queued"),
        (second["id"], "cancelled"),
    ]
    # The overlap may repeat what came just before the cursor; never anything older.
    assert all(int(m["id"]) >= int(last_id) - 1 for m in replayed if m.get("event") == "task")
    # ready carries the new cursor.
    assert int(replayed[-1]["id"]) >= int(missed[-1]["id"])


async def test_last_event_id_in_the_query_and_the_header_wins(
    client: Client, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "REPLAY_OVERLAP_SECONDS", 0.0)
    headers = await token_for(store)
    task = await create_task(client, headers, run_at=FUTURE)
    await client.post(f"/api/tasks/{task['id']}/cancel", headers=headers)
    created, cancelled = await store.pool.fetch("SELECT id FROM task_history ORDER BY id")
    path = f"/api/events?last_event_id={created['id']}"
    # The row at the cursor comes again (the client drops ids it has seen;
    # test_events_boundary.py says why), then what came after it.
    async with stream(client, path, headers, ready=False) as reader:
        got = await reader.until(lambda m: m.get("event") == "ready")
    assert [int(m["id"]) for m in got if m.get("event") == "task"] == [
        created["id"],
        cancelled["id"],
    ]
    # EventSource keeps its first URL and sends the newer id as the header.
    resumed = {**headers, "Last-Event-ID": str(cancelled["id"])}
    async with stream(client, path, resumed, ready=False) as reader:
        got = await reader.until(lambda m: m.get("event") == "ready")
    assert [int(m["id"]) for m in got if m.get("event") == "task"] == [cancelled["id"]]


async def test_resuming_a_task_stream_replays_only_that_task(client: Client, store: Store) -> None:
    headers = await token_for(store)
    watched = await create_task(client, headers, run_at=FUTURE)
    other = await create_task(client, headers, run_at=FUTURE)
    await client.post(f"/api/tasks/{other['id']}/cancel", headers=headers)
    await client.post(f"/api/tasks/{watched['id']}/cancel", headers=headers)
    path = f"/api/tasks/{watched['id']}/events"
    async with stream(client, path, {**headers, "Last-Event-ID": "0"}, ready=False) as reader:
        got = await reader.until(lambda m: m.get("event") == "ready")
    assert statuses(got) == ["postponed", "cancelled"]
    assert {m["data"]["task_id"] for m in got if m.get("event") == "task"} == {watched["id"]}


async def test_too_far_behind_gets_a_resync(
    client: Client, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "REPLAY_LIMIT", 5)
    headers = await token_for(store)
    user_id = await store.pool.fetchval("SELECT id FROM users")
    await store.insert_tasks(
        user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None) for _ in range(20)]
    )
    watermark = await store.pool.fetchval("SELECT max(id) FROM task_history")
    async with stream(client, "/api/events", {**headers, "Last-Event-ID": "0"}, ready=False) as r:
        got = await r.until(lambda m: m.get("event") == "ready")
        # And it carries on live from there.
        task = await create_task(client, headers)
        live = await r.task_events(1)
    assert [m.get("event") for m in got] == [None, "resync", "ready"]
    assert int(got[1]["id"]) == got[1]["data"]["last_event_id"] == watermark
    assert live[0]["data"]["task_id"] == task["id"]


# ----- robustness


async def test_events_missed_while_the_listener_was_away_are_caught_up(
    client: Client, store: Store
) -> None:
    headers = await token_for(store)
    task = await create_task(client, headers, run_at=FUTURE)
    hub = hub_of(client)
    async with stream(client, "/api/events", headers) as reader:
        assert hub.listener is not None
        terminated = await store.pool.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'taskflow-api-events' AND datname = current_database()"
        )
        assert terminated
        # Changed while the listening connection is down (or coming back).
        await client.post(f"/api/tasks/{task['id']}/cancel", headers=headers)
        # The catch-up may repeat the stream's starting row (the creation) first.
        got = await reader.until(lambda m: m.get("event") == "task", timeout=15)
        if got[-1]["data"]["status"] == "postponed":
            got = await reader.until(lambda m: m.get("event") == "task", timeout=15)
        assert got[-1]["data"]["status"] == "cancelled"
        await wait_until(lambda: _async_true(hub.listener.connected.is_set()), what="relisten")
        # Live again afterwards.
        again = await create_task(client, headers)
        got = await reader.until(
            lambda m: m.get("data", {}).get("task_id") == again["id"], timeout=15
        )


async def test_a_closed_stream_unsubscribes(client: Client, store: Store) -> None:
    headers = await token_for(store)
    hub = hub_of(client)
    async with stream(client, "/api/events", headers):
        assert hub.stream_count() == 1
    await wait_until(lambda: _async_true(hub.stream_count() == 0), what="unsubscribed")


async def test_too_many_streams_of_one_user_is_429(
    client: Client, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_STREAMS_PER_USER", 2)
    headers = await token_for(store)
    other = await token_for(store, "other@example.com")
    async with stream(client, "/api/events", headers), stream(client, "/api/events", headers):
        body = await json_error(await client.get("/api/events", headers=headers), 429)
        assert "too many" in body["error"]
        async with stream(client, "/api/events", other):
            pass


async def test_heartbeats_keep_an_idle_stream_alive(
    client: Client, store: Store, quick_heartbeat: None
) -> None:
    headers = await token_for(store)
    async with stream(client, "/api/events", headers) as reader:
        pings = [await reader.next() for _ in range(3)]
    assert pings == [{"comment": "ping"}] * 3


# ----- slow clients


def _payload(user_id: int, first_id: int, count: int) -> str:
    return orjson.dumps(
        [
            {
                "id": first_id + i,
                "task_id": str(uuid.uuid4()),
                "user_id": user_id,
                "from_status": "queued",
                "status": "processing",
                "event": "claimed",
                "attempt": 1,
                "at": "2030-01-01T00:00:00+00:00",
            }
            for i in range(count)
        ]
    ).decode()


async def test_the_hub_never_waits_for_a_full_queue() -> None:
    # Publishing touches neither the store nor the listener.
    hub = event_hub.EventHub(
        None,  # type: ignore[arg-type]
        Listener("postgresql://unused/db", [event_hub.CHANNEL], name="unused"),
        queue_size=10,
    )
    stalled = hub.subscribe(1)
    reading = hub.subscribe(1)
    elsewhere = hub.subscribe(2)
    received: list[event_hub.TaskEvent] = []

    async def read() -> None:
        while len(received) < 1000:
            item = await reading.queue.get()
            assert isinstance(item, event_hub.TaskEvent)
            received.append(item)

    reader = asyncio.create_task(read())
    started = time.monotonic()
    for batch in range(100):
        hub.publish(_payload(1, batch * 10, 10))
        await asyncio.sleep(0)  # let the reader run, as the event loop would
    await asyncio.wait_for(reader, 5)
    assert time.monotonic() - started < 2
    assert [event.id for event in received] == list(range(1000))
    # The stalled stream holds one marker, not 1000 events: it reads history later.
    assert stalled.behind
    assert stalled.times_behind == 1
    assert stalled.queue.qsize() == 1
    assert isinstance(stalled.queue.get_nowait(), event_hub.CatchUp)
    assert elsewhere.queue.empty()


async def _read_response_head(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while b"event: ready" not in data:
        chunk = await loop.sock_recv(sock, 4096)
        assert chunk, data
        data += chunk
    return data


async def test_a_slow_client_does_not_stall_a_fast_one_on_a_real_server(
    settings: Settings,
    registry: Registry,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two streams of one user on a real HTTP server: one never reads its
    socket. The other still gets every event at once, and the stalled one is
    marked behind (it will read history once it reads again)."""
    monkeypatch.setattr(events, "QUEUE_SIZE", 128)
    # Should the reading stream fall behind once, its catch-up replays rather
    # than asking it to reload.
    monkeypatch.setattr(events, "REPLAY_LIMIT", 100_000)
    app = create_app(settings, registry, api_services)
    # Small socket buffers on the server side (accepted sockets inherit them
    # from the listening one): a client that stops reading pushes back after
    # a few KiB, not after the megabytes loopback autotuning would allow.
    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    listening.bind(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listening.detach()}"]
    config.graceful_timeout = 1
    config.accesslog = None
    config.errorlog = None
    shutdown = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=shutdown.wait))  # type: ignore[arg-type]
    headers = await token_for(store)
    user_id = await store.pool.fetchval("SELECT id FROM users")
    loop = asyncio.get_running_loop()
    request = (
        f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {headers['Authorization']}\r\n\r\n"
    ).encode()
    slow = socket.socket()
    fast = socket.socket()
    try:
        # A tiny receive window: the server's writes back up after a few KiB.
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        await wait_until(lambda: _listening(port), what="server up")
        for sock in (slow, fast):
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, request)
            await _read_response_head(sock)
        hub: event_hub.EventHub = app.extensions[events.HUB_EXTENSION]
        assert hub.stream_count() == 2
        received = bytearray()

        async def read_fast() -> None:
            while chunk := await loop.sock_recv(fast, 1 << 20):
                received.extend(chunk)

        reading = asyncio.create_task(read_fast())
        # Batches of 100, as a busy API would insert them; together far more
        # than the stalled stream's socket buffers and queue hold (~1 MB).
        ids: set[bytes] = set()
        started = time.monotonic()
        for _ in range(40):
            rows = await store.insert_tasks(
                user_id,
                [NewTask(new_task_id(), "test_noop", {}, 0, 3, None) for _ in range(100)],
            )
            ids.update(str(row["id"]).encode() for row in rows)

        async def all_received() -> bool:
            return set(re.findall(rb'"task_id":"([0-9a-f-]{36})"', received)) == ids

        await wait_until(all_received, timeout=20, what="every event on the fast stream")
        reading.cancel()
        assert time.monotonic() - started < 15
        assert b"event: resync" not in received
        subscriptions = list(hub._by_user[user_id])
        # The stalled stream sits behind, holding one marker instead of events;
        # the reading one is not behind (if it ever was, it has caught up).
        assert sorted(s.behind for s in subscriptions) == [False, True]
        assert [s.queue.qsize() for s in subscriptions if s.behind] == [1]
    finally:
        slow.close()
        fast.close()
        shutdown.set()
        await asyncio.wait_for(server, 15)


async def _listening(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True
