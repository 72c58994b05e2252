"""/api/schedules (SPEC §4, §9): CRUD, another user's schedule is a 404,
validation like a task's with field details, and user_max_schedules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from taskflow.api import create_app
from taskflow.handlers import build_registry
from taskflow.runtime import api_services
from tests.conftest import make_settings
from tests.integration.api_helpers import token_for
from tests.stores import Store

SCHEDULE = {
    "name": "weekly report",
    "cron": "0 9 * * MON",
    "timezone": "Europe/Berlin",
    "type": "send_email",
    "payload": {"to": "someone@example.com", "subject": "the weekly report"},
}
SCHEDULE_FIELDS = {
    "id",
    "name",
    "cron",
    "timezone",
    "type",
    "payload",
    "max_retries",
    "priority",
    "paused",
    "next_run_at",
    "last_run_at",
    "last_task_id",
    "last_skipped_at",
    "last_skip_reason",
    "created_at",
    "updated_at",
}
MAX_SCHEDULES = 3
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
async def app(database: str, tmp_path: Path) -> AsyncIterator[Quart]:
    settings = make_settings(
        database, queue=None, files=tmp_path / "files", user_max_schedules=MAX_SCHEDULES
    )
    application = create_app(settings, build_registry(settings), api_services)
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[misc]


@pytest.fixture
def api(app: Quart) -> Client:
    return app.test_client()


async def create(api: Client, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {k: v for k, v in {**SCHEDULE, **fields}.items() if v is not None}
    response = await api.post("/api/schedules", json=body, headers=headers)
    assert response.status_code == 201, await response.get_data()
    assert response.headers["Location"] == f"/api/schedules/{(await response.get_json())['id']}"
    created: dict[str, Any] = await response.get_json()
    return created


async def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.get_json()
    assert isinstance(body["error"], str)
    return body


def fields_of(body: dict[str, Any]) -> set[str]:
    return {detail["field"] for detail in body["details"]}


async def test_create_get_list_patch_delete(api: Client, store: Store) -> None:
    headers = await token_for(store)
    created = await create(api, headers)
    assert set(created) == SCHEDULE_FIELDS
    assert {k: created[k] for k in SCHEDULE} == SCHEDULE
    assert (created["max_retries"], created["priority"], created["paused"]) == (3, 0, False)
    assert (created["last_run_at"], created["last_task_id"]) == (None, None)
    # The next Monday at 09:00 in Berlin, as UTC.
    next_run_at = datetime.fromisoformat(created["next_run_at"])
    assert created["next_run_at"].endswith("Z")
    assert next_run_at > datetime.now(UTC)
    assert next_run_at - datetime.now(UTC) <= timedelta(days=7)
    local = next_run_at.astimezone(BERLIN)
    assert (local.weekday(), local.hour, local.minute) == (0, 9, 0)

    url = f"/api/schedules/{created['id']}"
    assert await (await api.get(url, headers=headers)).get_json() == created
    utc_default = await create(api, headers, name="nightly", cron="0 2 * * *", timezone=None)
    assert utc_default["timezone"] == "UTC"

    listed = await (await api.get("/api/schedules", headers=headers)).get_json()
    assert [s["id"] for s in listed] == [created["id"], utc_default["id"]]
    page = await api.get("/api/schedules?limit=1", headers=headers)
    assert [s["id"] for s in await page.get_json()] == [created["id"]]
    link = page.headers["Link"]
    assert link.endswith('; rel="next"')
    rest = await api.get(link[1 : link.index(">")], headers=headers)
    assert [s["id"] for s in await rest.get_json()] == [utc_default["id"]]

    response = await api.patch(
        url,
        json={"name": "daily report", "cron": "30  7 * * *", "priority": 7, "max_retries": 0},
        headers=headers,
    )
    patched = await response.get_json()
    assert response.status_code == 200, patched
    assert (patched["name"], patched["cron"], patched["priority"], patched["max_retries"]) == (
        "daily report",
        "30 7 * * *",
        7,
        0,
    )
    local = datetime.fromisoformat(patched["next_run_at"]).astimezone(BERLIN)
    assert (local.hour, local.minute) == (7, 30)
    assert datetime.fromisoformat(patched["next_run_at"]) - datetime.now(UTC) <= timedelta(days=1)
    assert patched["payload"] == SCHEDULE["payload"]

    # A new type is checked with the payload it will run with.
    response = await api.patch(url, json={"type": "download_files"}, headers=headers)
    assert fields_of(await error(response, 400)) == {
        "payload.to",
        "payload.subject",
        "payload.urls",
    }
    response = await api.patch(
        url,
        json={"type": "download_files", "payload": {"urls": ["https://example.com/a"]}},
        headers=headers,
    )
    assert (await response.get_json())["type"] == "download_files"

    assert (await api.delete(url, headers=headers)).status_code == 204
    assert (await api.get(url, headers=headers)).status_code == 404
    listed = await (await api.get("/api/schedules", headers=headers)).get_json()
    assert [s["id"] for s in listed] == [utc_default["id"]]


async def test_another_users_schedule_is_a_404(api: Client, store: Store) -> None:
    owner = await token_for(store, "owner@example.com")
    other = await token_for(store, "other@example.com")
    schedule = await create(api, owner)
    url = f"/api/schedules/{schedule['id']}"
    for method, path, body in (
        ("get", url, None),
        ("patch", url, {"name": "mine now"}),
        ("delete", url, None),
        ("post", f"{url}/pause", None),
        ("post", f"{url}/resume", None),
    ):
        response = await getattr(api, method)(path, json=body, headers=other)
        assert (await error(response, 404))["error"] == "Schedule not found.", (method, path)
    assert await (await api.get("/api/schedules", headers=other)).get_json() == []
    # Nothing changed for the owner.
    assert await (await api.get(url, headers=owner)).get_json() == schedule

    for path in ("/api/schedules/not-a-uuid", "/api/schedules/not-a-uuid/pause"):
        method = api.get if path.endswith("uuid") else api.post
        assert fields_of(await error(await method(path, headers=owner), 400)) == {"id"}
    assert (await api.get("/api/schedules")).status_code == 401


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"cron": "0 9 * *"}, {"cron"}),
        ({"cron": "0 25 * * *"}, {"cron"}),
        ({"cron": "0 0 31 2 *"}, {"cron"}),
        ({"timezone": "Mars/Olympus"}, {"timezone"}),
        ({"timezone": 1}, {"timezone"}),
        ({"type": "no_such_type"}, {"type"}),
        ({"payload": {"subject": "no recipient"}}, {"payload.to"}),
        ({"payload": {"to": "someone@example.com"}}, {"payload"}),
        ({"max_retries": 11}, {"max_retries"}),
        ({"priority": "1"}, {"priority"}),
        ({"name": ""}, {"name"}),
        ({"name": "two\nlines"}, {"name"}),
        ({"every": "monday"}, {"every"}),
    ],
)
async def test_invalid_schedules_are_400_with_field_details(
    api: Client, store: Store, change: dict[str, Any], fields: set[str]
) -> None:
    headers = await token_for(store)
    body = await error(
        await api.post("/api/schedules", json={**SCHEDULE, **change}, headers=headers), 400
    )
    assert fields_of(body) == fields, body
    assert await (await api.get("/api/schedules", headers=headers)).get_json() == []


async def test_an_invalid_patch_changes_nothing(api: Client, store: Store) -> None:
    headers = await token_for(store)
    schedule = await create(api, headers)
    url = f"/api/schedules/{schedule['id']}"
    for change, field in (
        ({"cron": "61 * * * *"}, "cron"),
        ({"timezone": "Europe/Nowhere"}, "timezone"),
        ({"payload": {"to": "not an address", "subject": "x"}}, "payload.to"),
        ({}, "(body)"),
    ):
        body = await error(await api.patch(url, json=change, headers=headers), 400)
        assert fields_of(body) == {field}, body
    assert await (await api.get(url, headers=headers)).get_json() == schedule


async def test_the_schedule_limit_is_429_naming_it(api: Client, store: Store) -> None:
    headers = await token_for(store)
    for i in range(MAX_SCHEDULES):
        await create(api, headers, name=f"s{i}")
    response = await api.post("/api/schedules", json=SCHEDULE, headers=headers)
    body = await error(response, 429)
    assert body["limit"] == "user_max_schedules"
    assert int(response.headers["Retry-After"]) >= 1
    # Another user has their own allowance.
    assert (await create(api, await token_for(store, "b@example.com")))["name"] == SCHEDULE["name"]

    # An operator's override in user_limits; a deletion frees a place.
    user_id = await store.pool.fetchval("SELECT id FROM users WHERE email = 'user@example.com'")
    await store.pool.execute(
        "INSERT INTO user_limits (user_id, max_schedules) VALUES ($1, 4)", user_id
    )
    fourth = await create(api, headers, name="s3")
    assert (await api.post("/api/schedules", json=SCHEDULE, headers=headers)).status_code == 429
    await api.delete(f"/api/schedules/{fourth['id']}", headers=headers)
    await create(api, headers, name="again")


async def test_concurrent_creates_never_pass_the_limit_together(api: Client, store: Store) -> None:
    headers = await token_for(store)
    responses = await asyncio.gather(
        *(
            api.post("/api/schedules", json={**SCHEDULE, "name": f"s{i}"}, headers=headers)
            for i in range(12)
        )
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * MAX_SCHEDULES + [429] * (12 - MAX_SCHEDULES)
    assert len(await (await api.get("/api/schedules", headers=headers)).get_json()) == 3


async def test_pause_and_resume_answer_the_schedule(api: Client, store: Store) -> None:
    headers = await token_for(store)
    schedule = await create(api, headers, cron="*/10 * * * *", timezone="UTC")
    url = f"/api/schedules/{schedule['id']}"
    paused = await (await api.post(f"{url}/pause", headers=headers)).get_json()
    assert (paused["paused"], paused["next_run_at"]) == (True, None)
    # A changed cron while paused plans nothing until resumed.
    patched = await (await api.patch(url, json={"cron": "5 * * * *"}, headers=headers)).get_json()
    assert (patched["paused"], patched["next_run_at"]) == (True, None)
    resumed = await (await api.post(f"{url}/resume", headers=headers)).get_json()
    assert resumed["paused"] is False
    next_run_at = datetime.fromisoformat(resumed["next_run_at"])
    assert next_run_at.minute == 5
    assert timedelta(0) < next_run_at - datetime.now(UTC) <= timedelta(hours=1)
    # Resuming a running schedule changes nothing.
    again = await (await api.post(f"{url}/resume", headers=headers)).get_json()
    assert again == resumed
