"""SPEC §7.4: a user can never read, change or learn of another user's tasks.

Another user's task answers exactly as a task that does not exist: 404, the
same body, on every endpoint, and it is in no list, page or filter.
"""

from __future__ import annotations

import base64
from typing import Any
from uuid import uuid4

from quart.typing import TestClientProtocol as Client

from taskflow.models import TaskStatus
from tests.integration.api_helpers import (
    EMAIL_TASK,
    create_task,
    db_snapshot,
    json_error,
    task_in,
    token_for,
)
from tests.stores import Store

S = TaskStatus


async def _every_endpoint(
    client: Client, headers: dict[str, str], task_id: str
) -> list[tuple[str, Any]]:
    url = f"/api/tasks/{task_id}"
    return [
        ("get", await client.get(url, headers=headers)),
        ("history", await client.get(f"{url}/history", headers=headers)),
        ("patch", await client.patch(url, headers=headers, json={"priority": 50})),
        (
            "patch payload",
            await client.patch(
                url, headers=headers, json={"payload": {"to": "x@example.com", "subject": "x"}}
            ),
        ),
        ("cancel", await client.post(f"{url}/cancel", headers=headers)),
        ("retry", await client.post(f"{url}/retry", headers=headers)),
        ("delete", await client.delete(url, headers=headers)),
    ]


async def test_another_users_task_is_404_everywhere(client: Client, store: Store) -> None:
    alice = await token_for(store, "alice@example.com")
    mallory = await token_for(store, "mallory@example.com")
    # One task of Alice's in every state, so each endpoint meets the state in
    # which it would otherwise have acted (or answered 409 and so leaked it).
    alices = [await task_in(client, alice, store, status) for status in S]
    mallorys = await create_task(client, mallory)
    before = await db_snapshot(store)

    missing = await _every_endpoint(client, mallory, str(uuid4()))
    missing_bodies = {name: await json_error(response, 404) for name, response in missing}
    for task in alices:
        for name, response in await _every_endpoint(client, mallory, task["id"]):
            body = await json_error(response, 404)
            assert body == missing_bodies[name], (task["status"], name, body)
            assert task["id"] not in str(body)
    assert await db_snapshot(store) == before

    # Mallory's lists show her own task only, whatever the filter or page.
    for query in ("", "?limit=1000", "?status=queued", "?type=send_email", "?status=done"):
        response = await client.get(f"/api/tasks{query}", headers=mallory)
        listed = await response.get_json()
        assert [task["id"] for task in listed] in ([mallorys["id"]], []), query
    # A cursor made from Alice's newest task pages through Mallory's tasks only.
    newest = await store.pool.fetchrow(
        "SELECT created_at, id FROM tasks WHERE user_id <> $1 ORDER BY created_at DESC LIMIT 1",
        mallorys["user_id"],
    )
    far_future_cursor = base64.urlsafe_b64encode(
        f"2999-01-01T00:00:00+00:00|{newest['id']}".encode()
    ).decode()
    response = await client.get(f"/api/tasks?cursor={far_future_cursor}", headers=mallory)
    assert [task["id"] for task in await response.get_json()] == [mallorys["id"]]

    # Alice still sees and controls all of hers, unchanged.
    listed = await (await client.get("/api/tasks?limit=1000", headers=alice)).get_json()
    # (The blocked one waits for one more task of hers.)
    assert {task["id"] for task in alices} <= {task["id"] for task in listed}
    assert {task["user_id"] for task in listed} == {alices[0]["user_id"]}
    for task in alices:
        shown = await (await client.get(f"/api/tasks/{task['id']}", headers=alice)).get_json()
        assert shown == task


async def test_idempotency_keys_do_not_cross_users(client: Client, store: Store) -> None:
    alice = await token_for(store, "alice@example.com")
    mallory = await token_for(store, "mallory@example.com")
    key = {"Idempotency-Key": "shared-key"}
    alices = await client.post("/api/tasks", headers={**alice, **key}, json=EMAIL_TASK)
    assert alices.status_code == 201
    # The same key and body from Mallory: her own new task, not a replay of Alice's.
    mallorys = await client.post("/api/tasks", headers={**mallory, **key}, json=EMAIL_TASK)
    assert mallorys.status_code == 201
    assert "Idempotent-Replayed" not in mallorys.headers
    mallory_task = await mallorys.get_json()
    assert mallory_task["id"] != (await alices.get_json())["id"]
    assert mallory_task["user_id"] != (await alices.get_json())["user_id"]
    # A different body under the same key is not a conflict with Alice's either.
    other_body = {**EMAIL_TASK, "priority": 9}
    response = await client.post(
        "/api/tasks", headers={**alice, "Idempotency-Key": "k2"}, json=other_body
    )
    assert response.status_code == 201
    response = await client.post(
        "/api/tasks", headers={**mallory, "Idempotency-Key": "k2"}, json=EMAIL_TASK
    )
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers


async def test_batch_and_create_belong_to_the_caller(client: Client, store: Store) -> None:
    alice = await token_for(store, "alice@example.com")
    mallory = await token_for(store, "mallory@example.com")
    alice_id = await store.pool.fetchval("SELECT id FROM users WHERE email = 'alice@example.com'")
    before = await db_snapshot(store)
    # A user_id in the body cannot create a task for someone else.
    for url, body in (
        ("/api/tasks", {**EMAIL_TASK, "user_id": alice_id}),
        ("/api/tasks/batch", {"tasks": [{**EMAIL_TASK, "user_id": alice_id}]}),
        ("/api/tasks/batch", {"tasks": [EMAIL_TASK], "user_id": alice_id}),
    ):
        await json_error(await client.post(url, headers=mallory, json=body), 400)
    assert await db_snapshot(store) == before
    response = await client.post(
        "/api/tasks/batch", headers=mallory, json={"tasks": [EMAIL_TASK] * 3}
    )
    created = await response.get_json()
    owners = await store.pool.fetch(
        "SELECT DISTINCT user_id FROM tasks WHERE id = ANY($1::uuid[])", [t["id"] for t in created]
    )
    assert [row["user_id"] for row in owners] == [created[0]["user_id"]]
    assert created[0]["user_id"] != alice_id
    assert await (await client.get("/api/tasks", headers=alice)).get_json() == []
