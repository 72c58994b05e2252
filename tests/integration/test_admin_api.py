"""The operator routes (/api/admin/*, taskflow/api/admin.py) against a real
Postgres: only admins get in; a bulk retry or cancel takes exactly what the
filter matches and the single-task rules allow (dependencies included),
records the admin as its actor, and stops at its cap, saying so; task
types pause and resume; every user's task, schedules and shares are seen."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID, uuid4

from quart import Quart
from quart.typing import TestClientProtocol as Client

from taskflow.api.admin_models import BULK_MAX_TASKS, COUNT_LIMIT
from taskflow.models import TaskStatus
from taskflow.store.admin import AdminStore, TaskFilter
from tests.integration.api_helpers import (
    EMAIL_TASK,
    FUTURE,
    create_task,
    db_snapshot,
    json_error,
    put_task_in,
    task_in,
    token_for,
)
from tests.stores import Store

ADMIN = "admin@example.com"
NOOP: dict[str, Any] = {"type": "test_noop", "payload": {}}
_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


async def _admin(store: Store, email: str = ADMIN) -> dict[str, str]:
    headers = await token_for(store, email)
    await store.pool.execute("UPDATE users SET is_admin = true WHERE email = $1", email)
    return headers


async def _history(store: Store, task_id: str) -> list[Any]:
    return await store.pool.fetch(
        "SELECT event, from_status::text, to_status::text, actor, error FROM task_history "
        "WHERE task_id = $1 ORDER BY id",
        UUID(task_id),
    )


async def _status(store: Store, task_id: str) -> str:
    status: str = await store.pool.fetchval(
        "SELECT status::text FROM tasks WHERE id = $1", UUID(task_id)
    )
    return status


async def _post(client: Client, path: str, headers: dict[str, str], body: Any) -> Any:
    response = await client.post(path, headers=headers, json=body)
    assert response.status_code == 200, await response.get_data()
    return await response.get_json()


async def _get(client: Client, path: str, headers: dict[str, str]) -> Any:
    response = await client.get(path, headers=headers)
    assert response.status_code == 200, await response.get_data()
    return await response.get_json()


async def test_only_admins_get_in_and_nobody_else_changes_anything(
    app: Quart, client: Client, store: Store
) -> None:
    user = await token_for(store, "user@example.com")
    mine = await create_task(client, user)
    await put_task_in(store, mine["id"], TaskStatus.FAILED)
    await create_task(client, user)
    routes = [
        (method, _VARIABLE.sub(lambda m: mine["id"] if "id" in m[1] else "test_noop", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/admin/")
        for method in sorted((rule.methods or set()) & {"GET", "POST"})
    ]
    assert len(routes) >= 10, routes  # the overview and every tool
    before = await db_snapshot(store)
    for method, path in routes:
        call = client.get if method == "GET" else client.post
        await json_error(await call(path, json={}), 401)
        body = await json_error(await call(path, headers=user, json={}), 403)
        assert "admin" in body["error"], (path, body)
    assert await db_snapshot(store) == before
    assert await store.pool.fetchval("SELECT count(*) FROM paused_task_types") == 0

    # Marked admin in psql, the same token gets in: it is read on each request.
    await store.pool.execute("UPDATE users SET is_admin = true")
    for method, path in routes:
        call = client.get if method == "GET" else client.post
        response = await call(path, headers=user, json={})
        assert response.status_code == 200, (method, path, await response.get_data())
    # And out again.
    await store.pool.execute("UPDATE users SET is_admin = false")
    await json_error(await client.get("/api/admin/tasks", headers=user), 403)


async def test_bulk_retry_takes_what_the_filter_matches_and_names_the_admin(
    client: Client, store: Store
) -> None:
    admin = await _admin(store)
    ana = await token_for(store, "ana@example.com")
    bob = await token_for(store, "bob@example.com")
    failed = [(await task_in(client, ana, store, TaskStatus.FAILED))["id"] for _ in range(3)]
    cancelled = (await task_in(client, ana, store, TaskStatus.CANCELLED))["id"]
    others = [
        (await task_in(client, ana, store, TaskStatus.DONE))["id"],
        (await task_in(client, ana, store, TaskStatus.QUEUED))["id"],
        (await task_in(client, bob, store, TaskStatus.FAILED))["id"],
    ]
    download = {"type": "download_files", "payload": {"urls": ["https://example.com/a"]}}
    other_type = await create_task(client, ana, download)
    await put_task_in(store, other_type["id"], TaskStatus.FAILED)
    others.append(other_type["id"])

    query = "/api/admin/tasks?type=send_email&email=ANA@Example.com"
    listed = await _get(client, query, admin)
    assert (listed["matching"], listed["retryable"], listed["cancellable"]) == (6, 4, 1)
    assert (listed["bulk_max_tasks"], listed["count_limit"]) == (BULK_MAX_TASKS, COUNT_LIMIT)
    assert {task["email"] for task in listed["tasks"]} == {"ana@example.com"}
    assert len(listed["tasks"]) == 6
    # Newest first.
    assert [task["id"] for task in listed["tasks"]] == sorted(
        (task["id"] for task in listed["tasks"]), reverse=True
    )

    filters = {"type": "send_email", "email": "ana@EXAMPLE.com", "reason": "SMTP fixed"}
    result = await _post(client, "/api/admin/tasks/bulk-retry", admin, filters)
    assert result == {
        "action": "retry",
        "changed": 4,
        "skipped": 0,
        "max_tasks": BULK_MAX_TASKS,
        "more": False,
    }
    for task_id in [*failed, cancelled]:
        row = await store.pool.fetchrow(
            "SELECT status::text, attempts FROM tasks WHERE id = $1", UUID(task_id)
        )
        assert (row["status"], row["attempts"]) == ("queued", 0)
        last = (await _history(store, task_id))[-1]
        assert last["event"] == "retried"
        assert last["to_status"] == "queued"
        assert last["actor"] == f"dashboard:{ADMIN}"
        assert last["error"] == "SMTP fixed"
    assert [await _status(store, task_id) for task_id in others] == [
        "done",
        "queued",
        "failed",
        "failed",
    ]
    assert len(await _history(store, others[1])) == 1  # the queued one: untouched

    # Nothing left to retry: a second click changes nothing.
    again = await _post(client, "/api/admin/tasks/bulk-retry", admin, filters)
    assert (again["changed"], again["skipped"]) == (0, 0)


async def test_bulk_retry_keeps_the_dependency_rule_of_a_single_retry(
    client: Client, store: Store
) -> None:
    admin = await _admin(store)
    user = await token_for(store, "user@example.com")
    response = await client.post(
        "/api/tasks/batch",
        headers=user,
        json={"tasks": [NOOP, {**NOOP, "depends_on": ["#0"]}]},
    )
    first, second = await response.get_json()
    await put_task_in(store, first["id"], TaskStatus.FAILED)
    # The failure cancelled what waited for it.
    assert await _status(store, second["id"]) == "cancelled"
    listed = await _get(client, "/api/admin/tasks?status=cancelled", admin)
    assert (listed["matching"], listed["retryable"]) == (1, 0)
    # A single retry refuses it: the bulk one does not take it (nor count it).
    await json_error(await client.post(f"/api/tasks/{second['id']}/retry", headers=user), 409)
    result = await _post(client, "/api/admin/tasks/bulk-retry", admin, {"status": "cancelled"})
    assert (result["changed"], result["skipped"], result["more"]) == (0, 0, False)
    assert await _status(store, second["id"]) == "cancelled"
    # Nor does it fill its cap with such tasks: the one that can be retried is
    # taken, whatever comes first.
    lone = await task_in(client, user, store, TaskStatus.CANCELLED)
    assert lone["id"] > second["id"]
    capped = {"status": "cancelled", "max_tasks": 1}
    result = await _post(client, "/api/admin/tasks/bulk-retry", admin, capped)
    assert (result["changed"], result["more"]) == (1, False)
    assert await _status(store, lone["id"]) == "queued"

    # Its dependency retried (and done), the same bulk retry takes it.
    await _post(client, "/api/admin/tasks/bulk-retry", admin, {"status": "failed"})
    await put_task_in(store, first["id"], TaskStatus.DONE)
    result = await _post(client, "/api/admin/tasks/bulk-retry", admin, {"status": "cancelled"})
    assert (result["changed"], result["skipped"]) == (1, 0)
    assert await _status(store, second["id"]) == "queued"


async def test_bulk_cancel_stops_unfinished_tasks_and_what_waits_for_them(
    client: Client, store: Store
) -> None:
    admin = await _admin(store)
    user = await token_for(store, "user@example.com")
    queued = await create_task(client, user, NOOP)
    blocked = await create_task(client, user, {**NOOP, "depends_on": [queued["id"]]})
    postponed = await create_task(client, user, NOOP, run_at=FUTURE)
    running = await create_task(client, user, NOOP)
    await put_task_in(store, running["id"], TaskStatus.PROCESSING)
    done = await task_in(client, user, store, TaskStatus.DONE)
    emails = await create_task(client, user, EMAIL_TASK)

    listed = await _get(client, "/api/admin/tasks?type=test_noop", admin)
    assert (listed["matching"], listed["cancellable"]) == (4, 4)
    body = {"type": "test_noop", "reason": "incident 42"}
    result = await _post(client, "/api/admin/tasks/bulk-cancel", admin, body)
    # The blocked one may be cancelled directly or, in the same transaction,
    # by its dependency's cancel: either way no more than the four.
    assert result["changed"] + result["skipped"] == 4
    assert result["changed"] >= 3
    assert result["more"] is False
    for task in (queued, postponed, running, blocked):
        assert await _status(store, task["id"]) == "cancelled"
    for task in (queued, postponed, running):
        last = (await _history(store, task["id"]))[-1]
        assert (last["event"], last["actor"], last["error"]) == (
            "cancelled",
            f"dashboard:{ADMIN}",
            "incident 42",
        )
        assert await store.pool.fetchval(
            "SELECT last_error FROM tasks WHERE id = $1", UUID(task["id"])
        ) == ("incident 42")
    assert await _status(store, done["id"]) == "done"
    assert await _status(store, emails["id"]) == "queued"

    # A status the action cannot take is a 400, not a quiet "0 changed".
    for action, status in (("bulk-cancel", "done"), ("bulk-retry", "queued")):
        response = await client.post(
            f"/api/admin/tasks/{action}", headers=admin, json={"status": status}
        )
        error = await json_error(response, 400)
        assert error["details"][0]["field"] == "status"


async def test_a_bulk_action_stops_at_its_cap_and_says_so(client: Client, store: Store) -> None:
    admin = await _admin(store)
    user_id = await store.insert_user("many@example.com", "not-a-real-hash")
    # Finished tasks written as an operator would in psql: faster than the API.
    await store.pool.execute(
        "INSERT INTO tasks (id, user_id, type, payload, status, finished_at) "
        "SELECT gen_random_uuid(), $1, 'test_noop', '{}', 'cancelled', now() "
        "FROM generate_series(1, $2)",
        user_id,
        BULK_MAX_TASKS + 1,
    )
    # Counting stops at its limit (the API's is COUNT_LIMIT), whatever the filter.
    counted = await AdminStore(store.pool).count_matching_tasks(TaskFilter(), up_to=500)
    assert tuple(counted) == (500, 500, 0)
    listed = await _get(client, "/api/admin/tasks?status=cancelled", admin)
    assert (listed["matching"], listed["retryable"]) == (BULK_MAX_TASKS + 1, BULK_MAX_TASKS + 1)

    retry = "/api/admin/tasks/bulk-retry"
    small = await _post(client, retry, admin, {"max_tasks": 3})
    assert (small["changed"], small["max_tasks"], small["more"]) == (3, 3, True)

    result = await _post(client, retry, admin, {})
    assert result["changed"] == BULK_MAX_TASKS - 2  # all that is left but the cap's worth
    assert (result["max_tasks"], result["more"]) == (BULK_MAX_TASKS, False)
    await store.pool.execute("UPDATE tasks SET status = 'cancelled'")
    result = await _post(client, retry, admin, {"email": "many@example.com"})
    assert (result["changed"], result["more"]) == (BULK_MAX_TASKS, True)
    result = await _post(client, retry, admin, {"email": "many@example.com"})
    assert (result["changed"], result["more"]) == (1, False)

    too_many = await client.post(retry, headers=admin, json={"max_tasks": BULK_MAX_TASKS + 1})
    error = await json_error(too_many, 400)
    assert error["details"][0]["field"] == "max_tasks"
    assert str(BULK_MAX_TASKS) in error["details"][0]["message"]


async def test_any_users_task_with_its_history_and_links(client: Client, store: Store) -> None:
    admin = await _admin(store)
    user = await token_for(store, "owner@example.com")
    response = await client.post(
        "/api/tasks/batch", headers=user, json={"tasks": [NOOP, {**NOOP, "depends_on": ["#0"]}]}
    )
    first, second = await response.get_json()
    await put_task_in(store, first["id"], TaskStatus.FAILED)

    shown = await _get(client, f"/api/admin/tasks/{first['id']}", admin)
    assert shown["email"] == "owner@example.com"
    assert shown["task"]["id"] == first["id"]
    assert shown["task"]["status"] == "failed"
    assert shown["task"]["last_error"] == "boom"
    assert shown["worker_id"] == "test-worker"
    assert [entry["event"] for entry in shown["history"]] == ["created", "claimed", "failed"]
    assert shown["links"]["dependents"]["tasks"] == [
        {"id": second["id"], "type": "test_noop", "status": "cancelled"}
    ]
    assert shown["links"]["dependencies"] == {"tasks": [], "more": False}
    dependent = await _get(client, f"/api/admin/tasks/{second['id']}", admin)
    assert [t["id"] for t in dependent["links"]["dependencies"]["tasks"]] == [first["id"]]

    await json_error(await client.get(f"/api/admin/tasks/{uuid4()}", headers=admin), 404)
    await json_error(await client.get("/api/admin/tasks/not-an-id", headers=admin), 400)
    # Its owner, not an admin, cannot see it here.
    await json_error(await client.get(f"/api/admin/tasks/{first['id']}", headers=user), 403)


async def test_pause_and_resume_a_task_type(client: Client, store: Store) -> None:
    admin = await _admin(store)
    user = await token_for(store, "user@example.com")
    for _ in range(2):
        await create_task(client, user)
    pause = "/api/admin/task-types/send_email/pause"
    paused = await _post(client, pause, admin, {"reason": "mail provider down"})
    assert paused["changed"] is True
    state = paused["type"]
    assert (state["name"], state["paused"], state["registered"]) == ("send_email", True, True)
    assert (state["paused_by"], state["reason"], state["queued"]) == (
        f"dashboard:{ADMIN}",
        "mail provider down",
        2,
    )
    row = await store.pool.fetchrow("SELECT paused_by, reason FROM paused_task_types")
    assert tuple(row) == (f"dashboard:{ADMIN}", "mail provider down")
    assert (await _post(client, pause, admin, {}))["changed"] is False

    listed = await _get(client, "/api/admin/task-types", admin)
    by_name = {item["name"]: item for item in listed["types"]}
    assert {"send_email", "process_image", "download_files", "test_sleep"} <= set(by_name)
    assert [name for name, item in by_name.items() if item["paused"]] == ["send_email"]

    resume = "/api/admin/task-types/send_email/resume"
    resumed = await _post(client, resume, admin, {})
    assert (resumed["changed"], resumed["type"]["paused"]) == (True, False)
    assert await store.pool.fetchval("SELECT count(*) FROM paused_task_types") == 0
    assert (await _post(client, resume, admin, {}))["changed"] is False

    # A misspelt type is a 404, and nothing is paused.
    for path in ("/api/admin/task-types/send_emails/pause", "/api/admin/task-types/x/resume"):
        await json_error(await client.post(path, headers=admin, json={}), 404)
    assert await store.pool.fetchval("SELECT count(*) FROM paused_task_types") == 0
    # A type paused in psql that is no longer registered can still be resumed.
    await store.pool.execute("SELECT taskflow_pause_type('retired_type')")
    listed = await _get(client, "/api/admin/task-types", admin)
    retired = next(item for item in listed["types"] if item["name"] == "retired_type")
    assert (retired["registered"], retired["paused"]) == (False, True)
    resumed = await _post(client, "/api/admin/task-types/retired_type/resume", admin, {})
    assert resumed["changed"] is True


async def test_every_users_schedules_and_shares(client: Client, store: Store) -> None:
    admin = await _admin(store)
    for email in ("ana@example.com", "bob@example.com"):
        headers = await token_for(store, email)
        schedule = {"name": f"nightly {email}", "cron": "0 3 * * *", **NOOP}
        response = await client.post("/api/schedules", headers=headers, json=schedule)
        assert response.status_code == 201, await response.get_data()
        await create_task(client, headers)
    await store.pool.execute(
        "INSERT INTO user_limits (user_id, weight, max_running) "
        "SELECT id, 3, 2 FROM users WHERE email = 'bob@example.com'"
    )

    schedules = await _get(client, "/api/admin/schedules", admin)
    assert schedules["total"] == 2
    assert {(s["email"], s["name"]) for s in schedules["schedules"]} == {
        ("ana@example.com", "nightly ana@example.com"),
        ("bob@example.com", "nightly bob@example.com"),
    }
    assert {s["state"] for s in schedules["schedules"]} == {"active"}
    one = await _get(client, "/api/admin/schedules?limit=1", admin)
    assert (one["total"], len(one["schedules"])) == (2, 1)

    shares = await _get(client, "/api/admin/user-shares", admin)
    assert shares["total"] == 2
    by_email = {user["email"]: user for user in shares["users"]}
    assert (by_email["bob@example.com"]["weight"], by_email["bob@example.com"]["max_running"]) == (
        3,
        2,
    )
    assert by_email["ana@example.com"]["weight"] == 1
    assert by_email["ana@example.com"]["queued"] + by_email["ana@example.com"]["dispatched"] == 1
    await json_error(await client.get("/api/admin/user-shares?limit=0", headers=admin), 400)
    await json_error(await client.get("/api/admin/schedules?nope=1", headers=admin), 400)
