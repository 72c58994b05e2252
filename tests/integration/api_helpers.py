"""Small helpers shared by the tests/integration/test_api_*.py modules."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from quart.typing import TestClientProtocol as Client

from taskflow.auth import issue_token
from taskflow.models import TaskStatus
from taskflow.store.dispatch import FairLimits
from taskflow.store.engine import Outcome
from tests.conftest import TEST_SECRET
from tests.stores import Store, claim, finish

EMAIL_TASK: dict[str, Any] = {
    "type": "send_email",
    "payload": {"to": "someone@example.com", "subject": "hello"},
}
FUTURE = "2099-01-01T00:00:00Z"
# The seed README's example: it was in the future once, it is in the past now.
SEED_RUN_AT = "2025-06-03T12:50:50Z"
TASK_FIELDS = {
    "id",
    "user_id",
    "type",
    "payload",
    "status",
    "priority",
    "attempts",
    "retries",
    "max_retries",
    "run_at",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "last_error",
    "result",
}
HISTORY_FIELDS = {
    "at",
    "event",
    "from_status",
    "to_status",
    "attempt",
    "worker_id",
    "error",
    "actor",
}


async def token_for(store: Store, email: str = "user@example.com") -> dict[str, str]:
    """A user and the Authorization header login would give them, without
    argon2's ~0.2 s per hash: the API's own login is tested in test_api_auth."""
    user_id = await store.insert_user(email, "not-a-real-hash")
    return {"Authorization": f"Bearer {issue_token(user_id, TEST_SECRET.encode(), 3600)}"}


async def json_error(response: Any, status: int) -> dict[str, Any]:
    """Assert a JSON error answer with this status; return its body."""
    raw = await response.get_data()
    assert response.status_code == status, raw
    assert response.headers["Content-Type"].startswith("application/json"), raw
    assert b"<html" not in raw.lower(), raw
    assert b"Traceback" not in raw, raw
    body = await response.get_json()
    assert isinstance(body, dict), raw
    assert isinstance(body.get("error"), str), raw
    assert body["error"], raw
    return body


def detail_fields(body: dict[str, Any]) -> list[str]:
    details = body.get("details")
    assert isinstance(details, list), body
    assert details, body
    for item in details:
        assert isinstance(item.get("field"), str), body
        assert isinstance(item.get("message"), str), body
        assert item["message"], body
    return [item["field"] for item in details]


async def create_task(
    client: Client,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    response = await client.post(
        "/api/tasks", headers=headers, json={**(body or EMAIL_TASK), **extra}
    )
    assert response.status_code == 201, await response.get_data()
    task: dict[str, Any] = await response.get_json()
    return task


async def put_task_in(store: Store, task_id: str, status: TaskStatus) -> None:
    """Move a queued task into ``status`` the way a worker would (no worker runs
    in these tests), so the API can be tried on tasks in every state."""
    uuid = UUID(task_id)
    if status is TaskStatus.QUEUED:
        return
    if status is TaskStatus.CANCELLED:
        assert await store.cancel_task(uuid, None, actor="test") is not None
        return
    claimed = await claim(store, [uuid], "test-worker", 60)
    assert len(claimed) == 1, f"task {task_id} was not queued"
    if status is TaskStatus.PROCESSING:
        return
    token = claimed[0]["claim_token"]
    outcome = {
        TaskStatus.DONE: Outcome(uuid, token, "done", {"ok": 1}, True),
        TaskStatus.FAILED: Outcome(uuid, token, "permanent", error="boom"),
        TaskStatus.RETRYING: Outcome(uuid, token, "transient", error="boom", delay_seconds=3600),
    }[status]
    assert await finish(store, outcome) == {uuid: status}


async def picked(store: Store) -> list[str]:
    """The ids of tasks queued since the last call, taken as the dispatcher
    would take them: the API publishes nothing; a task it queues waits in
    Postgres for the fair pick (taskflow/dispatcher.py)."""
    rows = await store.dispatch(100_000, FairLimits())
    return [str(row["id"]) for row in rows]


async def db_snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the API could have changed, to prove that it changed nothing."""
    tables = {
        "users": "SELECT * FROM users ORDER BY id",
        "tasks": "SELECT * FROM tasks ORDER BY id",
        "task_history": "SELECT * FROM task_history ORDER BY id",
    }
    return {
        name: [tuple(row) for row in await store.pool.fetch(sql)] for name, sql in tables.items()
    }


async def task_row(store: Store, task_id: str) -> Any:
    return await store.pool.fetchrow("SELECT * FROM tasks WHERE id = $1", UUID(task_id))


async def task_in(
    client: Client, headers: dict[str, str], store: Store, status: TaskStatus
) -> dict[str, Any]:
    """A new task of the caller's, in ``status``; returns it as the API shows it."""
    if status is TaskStatus.POSTPONED:
        return await create_task(client, headers, run_at=FUTURE)
    if status is TaskStatus.BLOCKED:
        waited_for = await create_task(client, headers)
        return await create_task(client, headers, depends_on=[waited_for["id"]])
    task = await create_task(client, headers)
    await put_task_in(store, task["id"], status)
    response = await client.get(f"/api/tasks/{task['id']}", headers=headers)
    shown: dict[str, Any] = await response.get_json()
    assert shown["status"] == status, shown
    return shown
