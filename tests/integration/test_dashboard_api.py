"""The dashboard's server side, without a browser: the page and its files, and
the admins-only operator overview (tests/browser/ drives the pages)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from uuid import UUID

from quart.typing import TestClientProtocol as Client

from taskflow.api.dashboard import STATIC_DIRECTORY
from taskflow.models import TRANSITIONS, TaskStatus
from tests.integration.api_helpers import (
    create_task,
    json_error,
    put_task_in,
    task_in,
    token_for,
)
from tests.stores import Store

LOADS_FROM_ELSEWHERE = re.compile(
    r"""(from\s*|import\s*\(\s*|url\(\s*|@import\s*)["']?(https?:)?//""", re.IGNORECASE
)


async def test_the_page_and_its_files_are_served_with_a_strict_policy(client: Client) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    html = (await page.get_data()).decode()
    assert '<script type="module" src="/dashboard/app.js">' in html
    assert "http://" not in html
    assert "https://" not in html
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert page.headers["X-Frame-Options"] == "DENY"
    for name, kind in (
        ("app.js", "javascript"),
        ("views/tasks.js", "javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        response = await client.get(f"/dashboard/{name}")
        assert response.status_code == 200, name
        assert kind in response.headers["Content-Type"], name
        assert response.headers["Cache-Control"] == "no-cache"


async def test_only_the_dashboard_files_are_served(client: Client) -> None:
    for path in (
        "/dashboard/index.html",  # served at / only
        "/dashboard/nothing.js",
        "/dashboard/../__init__.py",
        "/dashboard/..%2Fevents.py",
        "/dashboard/%2e%2e/%2e%2e/store.py",
        "/dashboard/.hidden.js",
        "/dashboard/views/../../files.py",
        "/dashboard/../../../../etc/passwd",
    ):
        response = await client.get(path)
        await json_error(response, 404)


async def test_the_scripts_load_nothing_from_elsewhere(client: Client) -> None:
    """No URL to another site in any script or stylesheet: the page works offline."""
    names = sorted(
        path.relative_to(STATIC_DIRECTORY).as_posix()
        for path in STATIC_DIRECTORY.rglob("*")
        if path.suffix in {".js", ".css"}
    )
    assert {"app.js", "style.css", "views/tasks.js", "views/freshness.js"} <= set(names)
    for name in names:
        text = (await (await client.get(f"/dashboard/{name}")).get_data()).decode()
        # Imports and stylesheet URLs are all relative to this server (the
        # browser tests also refuse every request that leaves it).
        assert not LOADS_FROM_ELSEWHERE.search(text), name
        # Markup is built from elements and text nodes, never from strings.
        assert ".innerHTML" not in text, name


async def test_the_overview_is_for_admins_only(client: Client, store: Store) -> None:
    await json_error(await client.get("/api/admin/overview"), 401)
    headers = await token_for(store, "user@example.com")
    body = await json_error(await client.get("/api/admin/overview", headers=headers), 403)
    assert "admin" in body["error"]
    await store.pool.execute(
        "UPDATE users SET is_admin = true WHERE lower(email) = lower('USER@example.com')"
    )
    response = await client.get("/api/admin/overview", headers=headers)
    assert response.status_code == 200


async def test_the_overview_counts_what_is_there(client: Client, store: Store) -> None:
    admin = await token_for(store, "admin@example.com")
    await store.pool.execute("UPDATE users SET is_admin = true")
    user = await token_for(store, "user@example.com")
    for status in (TaskStatus.DONE, TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.RETRYING):
        task = await create_task(client, user)
        await put_task_in(store, task["id"], status)
    await create_task(client, user)  # queued
    stuck = await create_task(client, user)
    await put_task_in(store, stuck["id"], TaskStatus.PROCESSING)
    await store.pool.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 minute' WHERE id = $1",
        UUID(stuck["id"]),
    )
    await store.register_worker("worker-a", "host-a", 4, None, liveness_key=None)

    overview = await (await client.get("/api/admin/overview", headers=admin)).get_json()
    # Every status of the model, in its order, those with no task as zeros.
    assert list(overview["queue"]) == [str(status) for status in TaskStatus]
    assert {status: count for status, count in overview["queue"].items() if count} == {
        "queued": 1,
        "processing": 1,
        "retrying": 1,
        "done": 2,
        "failed": 1,
    }
    buckets = overview["throughput"]["buckets"]
    assert len(buckets) == 60
    assert overview["throughput"]["bucket_seconds"] == 60
    minutes = [datetime.fromisoformat(b["at"]) for b in buckets]
    assert minutes == sorted(minutes)
    assert (minutes[-1] - minutes[0]).total_seconds() == 59 * 60
    assert sum(b["completed"] for b in buckets) == 2
    assert sum(b["failed"] for b in buckets) == 1
    assert sum(b["retried"] for b in buckets) == 1
    assert overview["workers"]["alive"] == 1
    assert [w["id"] for w in overview["workers"]["items"]] == ["worker-a"]
    assert overview["stuck"]["total"] == 1
    assert overview["stuck"]["items"][0]["id"] == stuck["id"]
    failures = overview["recent_failures"]
    assert failures["total"] == 2  # failed for good, and retrying after a failure
    assert {item["status"] for item in failures["items"]} == {"failed", "retrying"}
    assert all(item["last_error"] == "boom" for item in failures["items"])


async def test_the_task_states_are_what_the_routes_do(client: Client, store: Store) -> None:
    """GET /api/meta, which the page reads instead of lists of its own: each
    status's cancel, retry and delete answer as it says."""
    meta = await (await client.get("/api/meta")).get_json()
    assert meta["statuses"] == [str(status) for status in TaskStatus]
    assert meta["transitions"] == {
        str(status): [str(target) for target in TaskStatus if target in TRANSITIONS[status]]
        for status in TaskStatus
    }
    headers = await token_for(store, "user@example.com")
    for status in TaskStatus:
        for action, allowed in (
            ("cancel", "cancellable"),
            ("retry", "retryable"),
            ("", "finished"),
        ):
            task = await _task_in(client, headers, store, status)
            if action:
                response = await client.post(f"/api/tasks/{task['id']}/{action}", headers=headers)
            else:
                response = await client.delete(f"/api/tasks/{task['id']}", headers=headers)
            succeeded = response.status_code in (200, 204)
            assert succeeded == (status in meta[allowed]), (status, action or "delete")
            if not succeeded:
                await json_error(response, 409)
    editable = await _task_in(client, headers, store, TaskStatus.POSTPONED)
    assert "postponed" in meta["editable"]
    patched = await client.patch(
        f"/api/tasks/{editable['id']}", headers=headers, json={"priority": 1}
    )
    assert patched.status_code == 200


async def _task_in(
    client: Client, headers: dict[str, str], store: Store, status: TaskStatus
) -> dict[str, Any]:
    if status is TaskStatus.BLOCKED:
        waited_for = await task_in(client, headers, store, TaskStatus.POSTPONED)
        return await create_task(client, headers, depends_on=[waited_for["id"]])
    return await task_in(client, headers, store, status)
