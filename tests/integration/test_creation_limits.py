"""Creation limits (SPEC §8): user_max_active_tasks and email_per_user_per_day
answer 429 with JSON naming the limit and a Retry-After, and create nothing;
batches stay all or nothing; user_limits overrides the defaults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client

from taskflow.api import create_app
from taskflow.handlers import build_registry
from taskflow.runtime import api_services, scheduler_runtime
from taskflow.store.schedules import NewSchedule, ScheduleStore
from tests.conftest import make_settings, new_user
from tests.integration.api_helpers import db_snapshot, json_error, token_for
from tests.stores import Store

NOOP = {"type": "test_noop", "payload": {}}
EMAIL = {"type": "send_email", "payload": {"to": "someone@example.com", "subject": "hi"}}


@pytest.fixture
async def limited(database: str, queue_name: str, tmp_path: Path) -> AsyncIterator[Client]:
    settings = make_settings(
        database,
        queue=queue_name,
        files=tmp_path / "files",
        user_max_active_tasks=5,
        email_per_user_per_day=2,
    )
    app = create_app(settings, build_registry(settings), api_services)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def _create(client: Client, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return await client.post("/api/tasks", headers=headers, json=body)


async def _refused(response: Any, limit: str) -> dict[str, Any]:
    body = await json_error(response, 429)
    assert body["limit"] == limit
    assert int(response.headers["Retry-After"]) >= 1
    return body


async def test_unfinished_tasks_are_capped_and_a_refusal_creates_nothing(
    limited: Client, store: Store
) -> None:
    headers = await token_for(store)
    for _ in range(5):
        assert (await _create(limited, headers, NOOP)).status_code == 201
    before = await db_snapshot(store)
    await _refused(await _create(limited, headers, NOOP), "user_max_active_tasks")
    # A batch that does not fit is refused whole.
    other = await token_for(store, "other@example.com")
    for _ in range(3):
        assert (await _create(limited, other, NOOP)).status_code == 201
    response = await limited.post("/api/tasks/batch", headers=other, json={"tasks": [NOOP] * 3})
    await _refused(response, "user_max_active_tasks")
    after = await db_snapshot(store)
    assert len(after["tasks"]) == len(before["tasks"]) + 3  # only the other user's three


async def test_finished_tasks_free_room(limited: Client, store: Store) -> None:
    headers = await token_for(store)
    created = [await (await _create(limited, headers, NOOP)).get_json() for _ in range(5)]
    await _refused(await _create(limited, headers, NOOP), "user_max_active_tasks")
    for task in created[:2]:
        response = await limited.post(f"/api/tasks/{task['id']}/cancel", headers=headers)
        assert response.status_code == 200
    assert (await _create(limited, headers, NOOP)).status_code == 201
    assert (await _create(limited, headers, NOOP)).status_code == 201
    await _refused(await _create(limited, headers, NOOP), "user_max_active_tasks")


async def test_concurrent_creates_never_pass_the_cap_together(
    limited: Client, store: Store
) -> None:
    """Single creates that arrive together share one INSERT (group commit):
    one user over the cap fails that statement, and each create is then
    decided alone, under the user's lock."""
    headers = await token_for(store)
    responses = await asyncio.gather(*(_create(limited, headers, NOOP) for _ in range(20)))
    codes = sorted(response.status_code for response in responses)
    assert codes == [201] * 5 + [429] * 15
    count = await store.pool.fetchval("SELECT count(*) FROM tasks")
    assert count == 5


async def test_a_user_limits_row_overrides_the_default(limited: Client, store: Store) -> None:
    headers = await token_for(store)
    user_id = await store.pool.fetchval("SELECT id FROM users")
    await store.pool.execute(
        "INSERT INTO user_limits (user_id, max_active_tasks) VALUES ($1, 0)", user_id
    )
    for _ in range(8):  # 0: no limit for this user
        assert (await _create(limited, headers, NOOP)).status_code == 201
    await store.pool.execute(
        "UPDATE user_limits SET max_active_tasks = 9 WHERE user_id = $1", user_id
    )
    assert (await _create(limited, headers, NOOP)).status_code == 201
    await _refused(await _create(limited, headers, NOOP), "user_max_active_tasks")


async def test_emails_per_day_are_counted_at_creation(limited: Client, store: Store) -> None:
    headers = await token_for(store)
    first = await (await _create(limited, headers, EMAIL)).get_json()
    assert (await _create(limited, headers, EMAIL)).status_code == 201
    body = await _refused(await _create(limited, headers, EMAIL), "email_per_user_per_day")
    assert "per UTC day" in body["error"]
    # Other types are not emails; another user has a quota of their own.
    assert (await _create(limited, headers, NOOP)).status_code == 201
    other = await token_for(store, "other@example.com")
    assert (await _create(limited, other, EMAIL)).status_code == 201
    # Deleting a finished email does not give the quota back.
    await limited.post(f"/api/tasks/{first['id']}/cancel", headers=headers)
    assert (await limited.delete(f"/api/tasks/{first['id']}", headers=headers)).status_code == 204
    await _refused(await _create(limited, headers, EMAIL), "email_per_user_per_day")
    assert await store.pool.fetchval("SELECT sum(created) FROM user_email_days") == 3


async def test_a_batch_of_emails_over_the_day_is_refused_whole(
    limited: Client, store: Store
) -> None:
    headers = await token_for(store)
    response = await limited.post(
        "/api/tasks/batch", headers=headers, json={"tasks": [EMAIL, NOOP, EMAIL, EMAIL]}
    )
    await _refused(response, "email_per_user_per_day")
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 0
    assert await store.pool.fetchval("SELECT count(*) FROM user_email_days") == 0


async def test_schedule_slots_are_held_to_the_limits_and_say_which(
    database: str, tmp_path: Path, store: Store
) -> None:
    settings = make_settings(
        database, queue=None, files=tmp_path / "files", email_per_user_per_day=2
    )
    user = await new_user(store)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    schedule = await ScheduleStore(store.pool).insert_schedule(
        user,
        NewSchedule(
            name="digest",
            cron="* * * * *",
            timezone="UTC",
            type="send_email",
            payload=EMAIL["payload"],
            max_retries=0,
            priority=0,
            next_run_at=start,
        ),
        default_max_schedules=0,
    )
    async with scheduler_runtime(settings) as scheduler:
        created = [
            (await scheduler.run_due_schedules(start + timedelta(minutes=m))).scheduled
            for m in range(4)
        ]
    # Two emails a day: the third and fourth slots are skipped, and the
    # schedule says why; the schedule itself goes on.
    assert created == [1, 1, 0, 0]
    row = await store.pool.fetchrow("SELECT * FROM schedules WHERE id = $1", schedule["id"])
    assert row["last_skip_reason"] == "email_per_user_per_day"
    assert row["last_skipped_at"] == start + timedelta(minutes=3)
    assert row["last_run_at"] == start + timedelta(minutes=1)
    assert row["next_run_at"] == start + timedelta(minutes=4)
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 2
