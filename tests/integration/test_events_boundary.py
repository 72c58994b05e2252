"""The edge of an event stream's catch-up: the history row AT the cursor.

A stream's cursor is either the last event a client saw (``Last-Event-ID``)
or, for a new stream, the newest history id when it opened. When that row
is a task's last change (a ``completed``), the catch-up must send it along
with the rows just before it, or a client that applies the replay in order
is left showing the task as it was one step earlier."""

from __future__ import annotations

import time
import uuid

import pytest
from quart.typing import TestClientProtocol as Client

from taskflow.api import events
from tests.integration.api_helpers import FUTURE, create_task, token_for
from tests.integration.test_events import Message, SSEReader, stream
from tests.stores import Store


async def collect(reader: SSEReader, seconds: float) -> list[Message]:
    """Every message that arrives within ``seconds``."""
    deadline = time.monotonic() + seconds
    taken: list[Message] = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            taken.append(await reader.next(left))
        except TimeoutError:
            break
    return taken


def changes_of(messages: list[Message], task_id: str) -> list[tuple[str, str]]:
    return [
        (m["data"]["event"], m["data"]["status"])
        for m in messages
        if m.get("event") == "task" and m["data"]["task_id"] == task_id
    ]


async def history_ids(store: Store, task_id: str) -> list[int]:
    rows = await store.pool.fetch(
        "SELECT id FROM task_history WHERE task_id = $1 ORDER BY id", uuid.UUID(task_id)
    )
    return [row["id"] for row in rows]


# A claim and a completion as a worker writes them, by hand (as in psql):
# the history triggers name them "claimed" and "completed".
CLAIM = """
UPDATE tasks SET status = 'processing', attempts = attempts + 1, worker_id = 'test-worker',
    lease_expires_at = now() + interval '1 minute', started_at = now(),
    claim_token = nextval('task_claim_token_seq')
WHERE id = $1 AND status = 'queued'
"""
COMPLETE = "UPDATE tasks SET status = 'done', result = '{}' WHERE id = $1 AND status = 'processing'"


async def finished_task(client: Client, store: Store, headers: dict[str, str]) -> dict[str, str]:
    """A task that was created, claimed and completed just now: three history
    rows, the completion the newest of the whole table."""
    task = await create_task(client, headers)
    for statement in (CLAIM, COMPLETE):
        assert await store.pool.execute(statement, uuid.UUID(task["id"])) == "UPDATE 1"
    newest = await store.pool.fetchval("SELECT max(id) FROM task_history")
    assert (await history_ids(store, task["id"]))[-1] == newest
    return task


EVERY_STEP = [("created", "queued"), ("claimed", "processing"), ("completed", "done")]


async def test_a_new_stream_opened_as_a_task_finishes_replays_its_completion(
    client: Client, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported case: the list opens (or the user signs in) right after
    a task finished. The stream starts at the completion's id; its look back
    a moment later sends the task's recent rows, and the completion with them."""
    monkeypatch.setattr(events, "SETTLE_SECONDS", 0.3)
    headers = await token_for(store)
    task = await finished_task(client, store, headers)
    async with stream(client, "/api/events", headers) as reader:
        ready = next(m for m in reader.seen if m.get("event") == "ready")
        assert int(ready["id"]) == (await history_ids(store, task["id"]))[-1]
        got = await collect(reader, 1.5)
    assert changes_of(got, task["id"]) == EVERY_STEP


async def test_resuming_at_a_completion_replays_it_with_the_rows_before(
    client: Client, store: Store
) -> None:
    headers = await token_for(store)
    task = await finished_task(client, store, headers)
    created, claimed, completed = await history_ids(store, task["id"])
    resume = {**headers, "Last-Event-ID": str(completed)}
    async with stream(client, "/api/events", resume, ready=False) as reader:
        got = await reader.until(lambda m: m.get("event") == "ready")
    # In id order, so a client applying them one by one ends where the task is.
    assert changes_of(got, task["id"]) == EVERY_STEP
    assert [int(m["id"]) for m in got if m.get("event") == "task"] == [created, claimed, completed]


async def test_a_task_stream_resuming_at_a_completion_replays_it(
    client: Client, store: Store
) -> None:
    headers = await token_for(store)
    task = await finished_task(client, store, headers)
    completed = (await history_ids(store, task["id"]))[-1]
    path = f"/api/tasks/{task['id']}/events"
    resume = {**headers, "Last-Event-ID": str(completed)}
    async with stream(client, path, resume, ready=False) as reader:
        got = await reader.until(lambda m: m.get("event") == "ready")
    assert changes_of(got, task["id"]) == EVERY_STEP


async def test_the_look_back_holds_when_the_cursors_own_row_is_gone(
    client: Client, store: Store
) -> None:
    """The cursor's row may have been deleted with its task since (another
    user's, or this one's): the look back then starts from the nearest row
    before it instead of not at all."""
    headers = await token_for(store)
    other = await token_for(store, "other@example.com")
    task = await finished_task(client, store, headers)
    deleted = await create_task(client, other, run_at=FUTURE)
    await client.post(f"/api/tasks/{deleted['id']}/cancel", headers=other)
    cursor = (await history_ids(store, deleted["id"]))[-1]
    response = await client.delete(f"/api/tasks/{deleted['id']}", headers=other)
    assert response.status_code == 204
    assert await store.pool.fetchval("SELECT count(*) FROM task_history WHERE id = $1", cursor) == 0
    resume = {**headers, "Last-Event-ID": str(cursor)}
    async with stream(client, "/api/events", resume, ready=False) as reader:
        got = await reader.until(lambda m: m.get("event") == "ready")
    assert changes_of(got, task["id"]) == EVERY_STEP


async def test_the_store_reads_the_row_at_the_cursor(store: Store) -> None:
    """Both catch-up queries, directly: the row at the cursor is in the answer
    (the stream drops ids it already sent, the client those it has seen)."""
    user_id = await store.insert_user("reader@example.com", "x")
    rows = await store.pool.fetch(
        """
        INSERT INTO tasks (id, user_id, type, payload, status, run_at)
        VALUES (gen_random_uuid(), $1, 'test_noop', '{}', 'postponed', 'infinity')
        RETURNING id
        """,
        user_id,
    )
    task_id = rows[0]["id"]
    await store.pool.execute(
        "UPDATE tasks SET status = 'cancelled', finished_at = now() WHERE id = $1", task_id
    )
    created, cancelled = await history_ids(store, str(task_id))
    for cursor in (created, cancelled):
        mine = await store.select_own_events_since(user_id, cursor, overlap_seconds=0, limit=10)
        one = await store.select_own_task_events_since(
            user_id, task_id, cursor, overlap_seconds=0, limit=10
        )
        for answer in (mine, one):
            ids = sorted(row["id"] for row in answer)
            assert ids == [i for i in (created, cancelled) if i >= cursor]
    # With an overlap, the rows just before the cursor as well.
    mine = await store.select_own_events_since(user_id, cancelled, overlap_seconds=5, limit=10)
    assert sorted(row["id"] for row in mine) == [created, cancelled]
