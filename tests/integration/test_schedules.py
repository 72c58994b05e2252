"""Schedules (SPEC §9) against real Postgres: exactly one task per slot with
several schedulers, the missed-slot rule across a scheduler restart, DST in
Europe/Berlin, pause and resume, deletion, and the /api/schedules routes.

The schedulers' clock is passed in (``run_due_schedules(now)``) to walk many
slots and DST changes in a moment; the schedulers themselves are real, each
on its own pool as ``taskflow scheduler`` builds it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from taskflow.api import create_app
from taskflow.config import Settings
from taskflow.handlers import build_registry
from taskflow.runtime import api_services, scheduler_runtime
from taskflow.scheduler import Scheduler
from taskflow.schedules import latest_slot, next_slot
from taskflow.store.schedules import NewSchedule, ScheduleStore
from tests.conftest import make_settings, new_user, running_scheduler, wait_until
from tests.integration.api_helpers import token_for
from tests.stores import Store

EMAIL = {"to": "someone@example.com", "subject": "the weekly report"}
BERLIN = "Europe/Berlin"


def minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


async def add_schedule(
    store: Store,
    user_id: int,
    cron: str,
    next_run_at: datetime | None,
    *,
    timezone: str = "UTC",
    name: str = "report",
) -> UUID:
    row = await ScheduleStore(store.pool).insert_schedule(
        user_id,
        NewSchedule(
            name=name,
            cron=cron,
            timezone=timezone,
            type="test_noop",
            payload={"n": 1},
            max_retries=2,
            priority=5,
            next_run_at=next_run_at,
        ),
        default_max_schedules=0,
    )
    schedule_id: UUID = row["id"]
    return schedule_id


async def slot_tasks(store: Store, schedule_id: UUID) -> list[dict[str, Any]]:
    rows = await store.pool.fetch(
        "SELECT * FROM tasks WHERE schedule_id = $1 ORDER BY scheduled_for", schedule_id
    )
    return [dict(row) for row in rows]


async def schedule_row(store: Store, schedule_id: UUID) -> dict[str, Any]:
    row = await store.pool.fetchrow("SELECT * FROM schedules WHERE id = $1", schedule_id)
    assert row is not None
    return dict(row)


@pytest.fixture
def fast(database: str, tmp_path: Path) -> Settings:
    return make_settings(database, queue=None, files=tmp_path / "files", scheduler_interval_ms=50)


@pytest.fixture
async def user_id(store: Store) -> int:
    return await new_user(store)


# ----- one task per slot


async def test_two_schedulers_create_exactly_one_task_per_slot(
    store: Store, fast: Settings, user_id: int
) -> None:
    start = minute(datetime.now(UTC)) - timedelta(hours=3)
    schedules = [
        await add_schedule(store, user_id, "* * * * *", start, name=f"s{i}") for i in range(12)
    ]
    minutes = 60
    async with scheduler_runtime(fast) as first, scheduler_runtime(fast) as second:
        for scheduler in (first, second):
            scheduler.batch = 5  # several batches a tick: the two interleave
        created = {"first": 0, "second": 0}
        for step in range(minutes):
            now = start + timedelta(minutes=step, seconds=step % 50)
            reports = await asyncio.gather(
                first.run_due_schedules(now), second.run_due_schedules(now)
            )
            created["first"] += reports[0].scheduled
            created["second"] += reports[1].scheduled

    assert created["first"] + created["second"] == len(schedules) * minutes
    counts = await store.pool.fetch(
        "SELECT schedule_id, scheduled_for, count(*) AS n FROM tasks "
        "GROUP BY schedule_id, scheduled_for"
    )
    assert len(counts) == len(schedules) * minutes
    assert {row["n"] for row in counts} == {1}
    for schedule_id in schedules:
        slots = [task["scheduled_for"] for task in await slot_tasks(store, schedule_id)]
        assert slots == [start + timedelta(minutes=m) for m in range(minutes)]
        row = await schedule_row(store, schedule_id)
        assert row["next_run_at"] == start + timedelta(minutes=minutes)
        assert row["last_run_at"] == slots[-1]


async def test_the_slot_task_is_an_ordinary_task_of_the_owner(
    store: Store, fast: Settings, user_id: int
) -> None:
    # New Year's midnight: due now, and not again while the test runs.
    slot = latest_slot("0 0 1 1 *", "UTC", datetime.now(UTC))
    assert slot is not None
    schedule_id = await add_schedule(store, user_id, "0 0 1 1 *", slot)
    async with running_scheduler(fast):

        async def created() -> bool:
            return len(await slot_tasks(store, schedule_id)) == 1

        await wait_until(created, what="the slot's task")
    [task] = await slot_tasks(store, schedule_id)
    assert (task["user_id"], task["type"], task["payload"]) == (user_id, "test_noop", {"n": 1})
    assert (task["max_retries"], task["priority"], task["status"]) == (2, 5, "queued")
    assert task["scheduled_for"] == task["run_at"] == slot
    history = await store.pool.fetch(
        "SELECT event, actor FROM task_history WHERE task_id = $1", task["id"]
    )
    assert [(h["event"], h["actor"]) for h in history] == [("created", "scheduler")]
    row = await schedule_row(store, schedule_id)
    assert (row["last_task_id"], row["last_run_at"]) == (task["id"], slot)
    assert row["next_run_at"] == slot.replace(year=slot.year + 1)


# ----- the missed-slot rule


async def test_a_scheduler_restart_across_missed_slots_runs_the_latest_once(
    store: Store, fast: Settings, user_id: int
) -> None:
    an_hour_ago = minute(datetime.now(UTC)) - timedelta(hours=1)
    start = an_hour_ago.replace(minute=an_hour_ago.minute // 5 * 5)
    schedule_id = await add_schedule(store, user_id, "*/5 * * * *", start)
    async with scheduler_runtime(fast) as scheduler:
        assert (await scheduler.run_due_schedules(start + timedelta(seconds=1))).scheduled == 1
    # No scheduler runs for 23 minutes: the slots +5, +10, +15, +20 pass.
    back = start + timedelta(minutes=23)
    async with scheduler_runtime(fast) as scheduler:
        assert (await scheduler.run_due_schedules(back)).scheduled == 1
        assert (await scheduler.run_due_schedules(back + timedelta(seconds=30))).scheduled == 0
    slots = [task["scheduled_for"] for task in await slot_tasks(store, schedule_id)]
    assert slots == [start, start + timedelta(minutes=20)]
    row = await schedule_row(store, schedule_id)
    assert row["next_run_at"] == start + timedelta(minutes=25)


async def test_a_real_scheduler_returning_after_missed_slots_creates_one_task(
    store: Store, fast: Settings, user_id: int
) -> None:
    # As a scheduler that stopped five minutes ago left it.
    stale = minute(datetime.now(UTC)) - timedelta(minutes=5)
    schedule_id = await add_schedule(store, user_id, "* * * * *", stale)
    async with running_scheduler(fast):

        async def created() -> bool:
            return len(await slot_tasks(store, schedule_id)) >= 1

        await wait_until(created, what="the latest missed slot's task")
        await asyncio.sleep(0.3)  # several more ticks
    tasks = await slot_tasks(store, schedule_id)
    first = tasks[0]
    # The latest slot when it ran, not the oldest missed one.
    assert first["scheduled_for"] == minute(first["created_at"])
    # Another task only if a new minute began while the test ran.
    assert [t["scheduled_for"] for t in tasks[1:]] in (
        [],
        [first["scheduled_for"] + timedelta(minutes=1)],
    )
    row = await schedule_row(store, schedule_id)
    assert row["next_run_at"] == tasks[-1]["scheduled_for"] + timedelta(minutes=1)
    assert row["next_run_at"] > datetime.now(UTC) - timedelta(seconds=1)


# ----- daylight saving time in Europe/Berlin


async def walk(scheduler: Scheduler, start: datetime, end: datetime, step: timedelta) -> None:
    now = start
    while now <= end:
        await scheduler.run_due_schedules(now)
        now += step


async def test_dst_spring_forward_and_fall_back_in_berlin(
    store: Store, fast: Settings, user_id: int
) -> None:
    half_past_two = await add_schedule(
        store, user_id, "30 2 * * *", datetime(2026, 3, 27, 1, 30, tzinfo=UTC), timezone=BERLIN
    )
    hourly = await add_schedule(
        store, user_id, "30 * * * *", datetime(2026, 3, 28, 23, 30, tzinfo=UTC), timezone=BERLIN
    )
    scheduler = Scheduler(fast, store, store, dispatcher=None)
    # Spring forward: 2026-03-29, 02:00 CET -> 03:00 CEST (01:00 UTC).
    await walk(
        scheduler,
        datetime(2026, 3, 27, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 4, 0, tzinfo=UTC),
        timedelta(minutes=10),
    )
    spring = [task["scheduled_for"] for task in await slot_tasks(store, half_past_two)]
    assert spring == [
        datetime(2026, 3, 27, 1, 30, tzinfo=UTC),  # 02:30 CET
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # no 02:30: 03:00 CEST, once
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),  # 02:30 CEST
    ]
    hours = [task["scheduled_for"] for task in await slot_tasks(store, hourly)]
    assert hours[:3] == [
        datetime(2026, 3, 28, 23, 30, tzinfo=UTC),  # 00:30 CET
        datetime(2026, 3, 29, 0, 30, tzinfo=UTC),  # 01:30 CET
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC),  # 03:30 CEST: 02:30 does not exist
    ]
    await store.pool.execute("DELETE FROM schedules WHERE id = $1", hourly)

    # Fall back: 2026-10-25, 03:00 CEST -> 02:00 CET (01:00 UTC).
    await store.pool.execute(
        "UPDATE schedules SET next_run_at = $2 WHERE id = $1",
        half_past_two,
        datetime(2026, 10, 24, 0, 30, tzinfo=UTC),
    )
    await walk(
        scheduler,
        datetime(2026, 10, 24, 0, 0, tzinfo=UTC),
        datetime(2026, 10, 26, 4, 0, tzinfo=UTC),
        timedelta(minutes=10),
    )
    fall = [task["scheduled_for"] for task in await slot_tasks(store, half_past_two)][4:]
    assert fall == [
        datetime(2026, 10, 24, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # the first 02:30 only
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # 02:30 CET
    ]


# ----- pause, resume, delete (through the API)


@pytest.fixture
async def limited_app(database: str, tmp_path: Path) -> AsyncIterator[Quart]:
    settings = make_settings(database, queue=None, files=tmp_path / "files", user_max_schedules=3)
    application = create_app(settings, build_registry(settings), api_services)
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[misc]


@pytest.fixture
def api(limited_app: Quart) -> Client:
    return limited_app.test_client()


async def create_schedule(api: Client, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"name": "report", "cron": "* * * * *", "type": "send_email", "payload": EMAIL}
    response = await api.post("/api/schedules", json={**body, **fields}, headers=headers)
    assert response.status_code == 201, await response.get_data()
    created: dict[str, Any] = await response.get_json()
    return created


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_pause_stops_slots_and_resume_continues_from_the_next_future_slot(
    api: Client, store: Store, fast: Settings
) -> None:
    headers = await token_for(store)
    # Daily, so that no slot comes while the test runs (unless it spans 03:00 UTC).
    schedule = await create_schedule(api, headers, cron="0 3 * * *")
    schedule_id = UUID(schedule["id"])
    # It has been due for ten days (no scheduler ran).
    await store.pool.execute(
        "UPDATE schedules SET next_run_at = next_run_at - interval '10 days' WHERE id = $1",
        schedule_id,
    )
    paused = await (
        await api.post(f"/api/schedules/{schedule_id}/pause", headers=headers)
    ).get_json()
    assert (paused["paused"], paused["next_run_at"]) == (True, None)
    again = await api.post(f"/api/schedules/{schedule_id}/pause", headers=headers)
    assert again.status_code == 200
    scheduler = Scheduler(fast, store, store, dispatcher=None)
    far = datetime.now(UTC) + timedelta(days=3)
    assert (await scheduler.run_due_schedules(far)).scheduled == 0

    before = datetime.now(UTC)
    response = await api.post(f"/api/schedules/{schedule_id}/resume", headers=headers)
    resumed = await response.get_json()
    assert resumed["paused"] is False
    next_run_at = parse_time(resumed["next_run_at"])
    assert next_run_at == next_slot("0 3 * * *", "UTC", before)
    # No burst of the slots missed before and during the pause.
    assert (await scheduler.run_due_schedules()).scheduled == 0
    assert (await scheduler.run_due_schedules(next_run_at)).scheduled == 1
    [task] = await slot_tasks(store, schedule_id)
    assert task["scheduled_for"] == next_run_at


async def test_deleting_a_schedule_leaves_its_tasks(
    api: Client, store: Store, fast: Settings
) -> None:
    headers = await token_for(store)
    schedule_id = UUID((await create_schedule(api, headers))["id"])
    await store.pool.execute(
        "UPDATE schedules SET next_run_at = now() - interval '1 s' WHERE id = $1", schedule_id
    )
    scheduler = Scheduler(fast, store, store, dispatcher=None)
    assert (await scheduler.run_due_schedules()).scheduled == 1
    [task] = await slot_tasks(store, schedule_id)

    response = await api.delete(f"/api/schedules/{schedule_id}", headers=headers)
    assert response.status_code == 204
    kept = await store.pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task["id"])
    assert kept is not None
    assert (kept["schedule_id"], kept["scheduled_for"]) == (None, task["scheduled_for"])
    assert (await api.get(f"/api/tasks/{task['id']}", headers=headers)).status_code == 200
    assert (await api.get(f"/api/schedules/{schedule_id}", headers=headers)).status_code == 404
    assert (await api.delete(f"/api/schedules/{schedule_id}", headers=headers)).status_code == 404
