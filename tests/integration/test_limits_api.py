"""GET /api/limits (SPEC §4, §8): the caller's effective limits (their
user_limits row, else config.json; 0 means none and is shown as null) and
their current use, counted as the limits count it; never another user's."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from quart.typing import TestClientProtocol as Client

from taskflow.api.limits import LimitsResponse
from taskflow.auth import issue_token
from taskflow.config import Settings
from taskflow.models import TERMINAL, TaskStatus
from taskflow.store.dispatch import FairLimits
from tests.conftest import TEST_SECRET
from tests.integration.api_helpers import (
    EMAIL_TASK,
    FUTURE,
    create_task,
    json_error,
    task_in,
    token_for,
)
from tests.integration.test_api_files import upload
from tests.stores import Store, claim

NOOP: dict[str, Any] = {"type": "test_noop", "payload": {}}
SCHEDULE = {"name": "weekly", "cron": "0 9 * * MON", **NOOP}
LIMIT_KEYS = {
    "user_max_active_tasks",
    "user_max_running",
    "email_per_user_per_minute",
    "email_per_user_per_day",
    "user_files_max_bytes",
    "user_max_schedules",
}


async def limits_of(client: Client, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.get("/api/limits", headers=headers)
    assert response.status_code == 200, await response.get_data()
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = await response.get_json()
    LimitsResponse.model_validate(body, strict=True)  # exactly the documented shape
    assert set(body["limits"]) == LIMIT_KEYS
    return body


def limits_and_use(body: dict[str, Any]) -> dict[str, tuple[int | None, int]]:
    return {key: (item["limit"], item["used"]) for key, item in body["limits"].items()}


async def user_id_of(store: Store, email: str) -> int:
    user_id: int = await store.pool.fetchval("SELECT id FROM users WHERE email = $1", email)
    return user_id


async def test_a_new_user_sees_the_defaults_and_no_use(
    client: Client, store: Store, settings: Settings
) -> None:
    body = await limits_of(client, await token_for(store))
    assert body["weight"] == 1
    assert limits_and_use(body) == {
        "user_max_active_tasks": (settings.user_max_active_tasks, 0),
        # 0 in config.json: no cap beyond the fair share, shown as null.
        "user_max_running": (None, 0),
        "email_per_user_per_minute": (settings.email_per_user_per_minute, 0),
        "email_per_user_per_day": (settings.email_per_user_per_day, 0),
        "user_files_max_bytes": (settings.user_files_max_bytes, 0),
        "user_max_schedules": (settings.user_max_schedules, 0),
    }
    assert settings.user_max_running == 0
    assert body["limits"]["user_max_running"]["remaining"] is None
    assert body["limits"]["user_max_active_tasks"]["remaining"] == settings.user_max_active_tasks


async def test_a_user_limits_row_overrides_the_defaults(
    client: Client, store: Store, settings: Settings
) -> None:
    headers = await token_for(store, "vip@example.com")
    plain_headers = await token_for(store, "plain@example.com")
    vip = await user_id_of(store, "vip@example.com")
    # NULL keeps a default; 0 lifts a limit the default sets.
    await store.pool.execute(
        "INSERT INTO user_limits (user_id, weight, max_running, max_active_tasks, "
        "email_per_minute, email_per_day, files_max_bytes, max_schedules) "
        "VALUES ($1, 3, 2, 0, NULL, 7, 1234, 4)",
        vip,
    )
    body = await limits_of(client, headers)
    assert body["weight"] == 3
    assert limits_and_use(body) == {
        "user_max_active_tasks": (None, 0),
        "user_max_running": (2, 0),
        "email_per_user_per_minute": (settings.email_per_user_per_minute, 0),
        "email_per_user_per_day": (7, 0),
        "user_files_max_bytes": (1234, 0),
        "user_max_schedules": (4, 0),
    }
    # The limits served are the ones enforced: the eighth email today is refused.
    for _ in range(7):
        await create_task(client, headers, EMAIL_TASK)
    refused = await json_error(
        await client.post("/api/tasks", headers=headers, json=EMAIL_TASK), 429
    )
    assert refused["limit"] == "email_per_user_per_day"
    day = (await limits_of(client, headers))["limits"]["email_per_user_per_day"]
    assert day == {"limit": 7, "used": 7, "remaining": 0}

    # The other user keeps the defaults.
    plain = await limits_of(client, plain_headers)
    assert plain["weight"] == 1
    assert plain["limits"]["user_max_active_tasks"]["limit"] == settings.user_max_active_tasks


async def test_use_follows_tasks_emails_files_and_schedules(client: Client, store: Store) -> None:
    headers = await token_for(store)
    user_id = await user_id_of(store, "user@example.com")
    noops = [await create_task(client, headers, NOOP) for _ in range(3)]
    await create_task(client, headers, NOOP, run_at=FUTURE)  # postponed: unfinished too
    emails = [await create_task(client, headers, EMAIL_TASK) for _ in range(3)]
    # One email runs (started now), one noop runs, one noop is on its way to
    # a worker (picked into the dispatch window, not claimed yet).
    assert len(await claim(store, [UUID(emails[0]["id"]), UUID(noops[0]["id"])], "w", 60)) == 2
    await store.pool.execute(
        "INSERT INTO dispatched_tasks (task_id, user_id, type) VALUES ($1, $2, 'test_noop')",
        UUID(noops[1]["id"]),
        user_id,
    )
    # A cancelled and deleted email still counts toward today's emails.
    response = await client.post(f"/api/tasks/{emails[2]['id']}/cancel", headers=headers)
    assert response.status_code == 200
    assert (
        await client.delete(f"/api/tasks/{emails[2]['id']}", headers=headers)
    ).status_code == 204
    assert (await upload(client, headers, "report.txt", b"x" * 1000)).status_code == 201
    assert (await upload(client, headers, "more.bin", b"y" * 234)).status_code == 201
    response = await client.post("/api/schedules", headers=headers, json=SCHEDULE)
    assert response.status_code == 201, await response.get_data()

    use = {key: used for key, (_, used) in limits_and_use(await limits_of(client, headers)).items()}
    assert use == {
        "user_max_active_tasks": 6,  # 3 noops + 1 postponed + 2 emails not cancelled
        "user_max_running": 3,  # 2 processing + 1 on its way
        "email_per_user_per_minute": 1,
        "email_per_user_per_day": 3,  # the deleted one too
        "user_files_max_bytes": 1234,
        "user_max_schedules": 1,
    }

    # Finishing frees the active and running places; today's emails stay.
    await store.pool.execute("DELETE FROM dispatched_tasks")
    for task in [*noops, emails[0], emails[1]]:
        await client.post(f"/api/tasks/{task['id']}/cancel", headers=headers)
    after = limits_and_use(await limits_of(client, headers))
    assert after["user_max_active_tasks"][1] == 1  # the postponed one
    assert after["user_max_running"][1] == 0
    assert after["email_per_user_per_day"][1] == 3


async def test_every_unfinished_status_counts_as_active_and_no_finished_one(
    client: Client, store: Store
) -> None:
    headers = await token_for(store)

    async def active() -> int:
        used: int = (await limits_of(client, headers))["limits"]["user_max_active_tasks"]["used"]
        return used

    counted = set()
    for status in TaskStatus:
        if status is TaskStatus.BLOCKED:
            waited_for = await create_task(client, headers, NOOP, run_at=FUTURE)
        before = await active()
        if status is TaskStatus.BLOCKED:
            task = await create_task(client, headers, NOOP, depends_on=[waited_for["id"]])
            assert task["status"] == "blocked"
        else:
            await task_in(client, headers, store, status)
        if await active() == before + 1:
            counted.add(status)
    assert counted == set(TaskStatus) - TERMINAL


async def test_emails_today_are_counted_when_the_daily_limit_is_off(
    client: Client, store: Store
) -> None:
    headers = await token_for(store)
    user_id = await user_id_of(store, "user@example.com")
    await store.pool.execute(
        "INSERT INTO user_limits (user_id, email_per_day) VALUES ($1, 0)", user_id
    )
    for _ in range(2):
        await create_task(client, headers, EMAIL_TASK)
    # Yesterday's do not count.
    await store.pool.execute(
        "UPDATE tasks SET created_at = now() - interval '1 day' "
        "WHERE id = (SELECT id FROM tasks WHERE user_id = $1 LIMIT 1)",
        user_id,
    )
    day = (await limits_of(client, headers))["limits"]["email_per_user_per_day"]
    assert day == {"limit": None, "used": 1, "remaining": None}


async def test_another_users_use_is_never_shown(client: Client, store: Store) -> None:
    alice = await token_for(store, "alice@example.com")
    bob = await token_for(store, "bob@example.com")
    bob_id = await user_id_of(store, "bob@example.com")
    for _ in range(2):
        task = await create_task(client, bob, EMAIL_TASK)
    await claim(store, [UUID(task["id"])], "w", 60)
    await store.dispatch(10, FairLimits())
    assert (await upload(client, bob, "bob.txt", b"b" * 500)).status_code == 201
    assert (await client.post("/api/schedules", headers=bob, json=SCHEDULE)).status_code == 201
    await store.pool.execute("INSERT INTO user_limits (user_id, weight) VALUES ($1, 9)", bob_id)

    seen_by_alice = await limits_of(client, alice)
    assert seen_by_alice["weight"] == 1
    assert {used for _, used in limits_and_use(seen_by_alice).values()} == {0}
    seen_by_bob = limits_and_use(await limits_of(client, bob))
    assert {key: used for key, (_, used) in seen_by_bob.items()} == {
        "user_max_active_tasks": 2,
        "user_max_running": 2,
        "email_per_user_per_minute": 1,
        "email_per_user_per_day": 2,
        "user_files_max_bytes": 500,
        "user_max_schedules": 1,
    }


async def test_limits_need_a_valid_token(client: Client, store: Store) -> None:
    await json_error(await client.get("/api/limits"), 401)
    await json_error(await client.get("/api/limits", headers={"Authorization": "Bearer x"}), 401)
    user_id = await store.insert_user("gone@example.com", "not-a-real-hash")
    forged = issue_token(user_id, b"another-secret-that-is-long-enough-0123456789", 3600)
    await json_error(
        await client.get("/api/limits", headers={"Authorization": f"Bearer {forged}"}), 401
    )
    # The same user with a genuine token is let in.
    genuine = issue_token(user_id, TEST_SECRET.encode(), 3600)
    response = await client.get("/api/limits", headers={"Authorization": f"Bearer {genuine}"})
    assert response.status_code == 200
