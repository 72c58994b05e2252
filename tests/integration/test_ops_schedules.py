"""An operator sees and pauses schedules in psql (ops/sql/15_schedules.sql):
the taskflow_schedules view, taskflow_pause_schedule / taskflow_resume_schedule
and a plain UPDATE, against slots made by a real scheduler."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from taskflow.config import Settings
from taskflow.scheduler import Scheduler
from taskflow.store.pool import connect
from taskflow.store.schedules import NewSchedule, ScheduleStore
from tests.conftest import make_settings, new_user
from tests.stores import Store


@pytest.fixture
def fast(database: str, tmp_path: Path) -> Settings:
    return make_settings(database, queue=None, files=tmp_path / "files")


@pytest.fixture
async def psql(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection like an operator's psql session: no TaskFlow actor set."""
    connection = await connect(database, application_name="psql")
    yield connection
    await connection.close()


async def add_schedule(store: Store, user_id: int, name: str, next_run_at: datetime) -> uuid.UUID:
    row = await ScheduleStore(store.pool).insert_schedule(
        user_id,
        NewSchedule(
            name=name,
            cron="* * * * *",
            timezone="Europe/Berlin",
            type="test_noop",
            payload={},
            max_retries=3,
            priority=0,
            next_run_at=next_run_at,
        ),
        default_max_schedules=0,
    )
    schedule_id: uuid.UUID = row["id"]
    return schedule_id


async def view(psql: asyncpg.Connection) -> dict[uuid.UUID, dict[str, Any]]:
    rows = await psql.fetch("SELECT * FROM taskflow_schedules")
    return {row["id"]: dict(row) for row in rows}


async def notices_of(psql: asyncpg.Connection, sql: str, *args: Any) -> tuple[Any, list[str]]:
    heard: list[str] = []

    def listen(_connection: Any, message: Any) -> None:
        heard.append(message.message)

    psql.add_log_listener(listen)
    try:
        result = await psql.fetchval(sql, *args)
    finally:
        psql.remove_log_listener(listen)
    return result, heard


async def test_the_view_shows_next_slot_last_task_and_paused(
    store: Store, fast: Settings, psql: asyncpg.Connection
) -> None:
    user_id = await new_user(store, "ana@example.com")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    ran = await add_schedule(store, user_id, "ran", now - timedelta(minutes=1))
    waiting = await add_schedule(store, user_id, "waiting", now + timedelta(hours=1))
    scheduler = Scheduler(fast, store, store, dispatcher=None)
    assert (await scheduler.run_due_schedules()).scheduled == 1
    task_id = await store.pool.fetchval("SELECT id FROM tasks WHERE schedule_id = $1", ran)

    rows = await view(psql)
    assert set(rows) == {ran, waiting}
    assert rows[ran]["email"] == "ana@example.com"
    assert (rows[ran]["state"], rows[ran]["paused"]) == ("active", False)
    assert (rows[ran]["cron"], rows[ran]["timezone"]) == ("* * * * *", "Europe/Berlin")
    assert (rows[ran]["last_task_id"], rows[ran]["last_task_status"]) == (task_id, "queued")
    assert rows[ran]["last_slot"] >= now - timedelta(minutes=1)
    assert rows[ran]["next_slot"] > datetime.now(UTC) - timedelta(seconds=1)
    assert rows[ran]["next_slot_in"] <= timedelta(minutes=1)
    assert (rows[waiting]["last_task_id"], rows[waiting]["last_task_status"]) == (None, None)
    assert rows[waiting]["next_slot"] == now + timedelta(hours=1)
    # The soonest first.
    assert list(rows) == [ran, waiting]


async def test_pause_and_resume_by_hand(
    store: Store, fast: Settings, psql: asyncpg.Connection
) -> None:
    user_id = await new_user(store)
    overdue = datetime.now(UTC) - timedelta(minutes=30)
    schedule_id = await add_schedule(store, user_id, "report", overdue)
    scheduler = Scheduler(fast, store, store, dispatcher=None)

    paused, heard = await notices_of(psql, "SELECT taskflow_pause_schedule($1)", schedule_id)
    assert (paused, heard) == (True, [])
    row = (await view(psql))[schedule_id]
    assert (row["state"], row["paused"], row["next_slot"]) == ("paused", True, None)
    assert (await scheduler.run_due_schedules(datetime.now(UTC) + timedelta(days=1))).scheduled == 0

    again, heard = await notices_of(psql, "SELECT taskflow_pause_schedule($1)", schedule_id)
    assert (again, heard) == (False, [f"schedule {schedule_id} is already paused; nothing changed"])
    missing = uuid.uuid4()
    nothing, heard = await notices_of(psql, "SELECT taskflow_resume_schedule($1)", missing)
    assert (nothing, heard) == (False, [f"no schedule {missing}; nothing changed"])

    resumed, heard = await notices_of(psql, "SELECT taskflow_resume_schedule($1)", schedule_id)
    assert (resumed, heard) == (True, [])
    assert (await view(psql))[schedule_id]["state"] == "planning"
    # The next tick plans the next future slot: the half hour it was overdue,
    # and the pause, make no task.
    before = datetime.now(UTC)
    assert (await scheduler.run_due_schedules()).scheduled == 0
    row = (await view(psql))[schedule_id]
    assert row["state"] == "active"
    assert before < row["next_slot"] <= before + timedelta(minutes=1)
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 0


async def test_a_plain_update_pauses_too(store: Store, psql: asyncpg.Connection) -> None:
    user_id = await new_user(store)
    schedule_id = await add_schedule(store, user_id, "report", datetime.now(UTC))
    await psql.execute("UPDATE schedules SET paused = true WHERE id = $1", schedule_id)
    row = (await view(psql))[schedule_id]
    assert (row["paused"], row["next_slot"]) == (True, None)
    # Illegal states are refused by the database itself.
    with pytest.raises(asyncpg.CheckViolationError):
        await psql.execute("UPDATE schedules SET cron = '* * *' WHERE id = $1", schedule_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await psql.execute("UPDATE schedules SET priority = 101 WHERE id = $1", schedule_id)


async def test_a_schedule_the_scheduler_cannot_read_is_paused(
    store: Store, fast: Settings, psql: asyncpg.Connection
) -> None:
    user_id = await new_user(store)
    broken = await add_schedule(store, user_id, "broken", datetime.now(UTC) - timedelta(minutes=1))
    healthy = await add_schedule(store, user_id, "ok", datetime.now(UTC) - timedelta(minutes=1))
    # Changed by hand to something no cron reads (the CHECK sees only the shape).
    await psql.execute("UPDATE schedules SET cron = '61 * * * *' WHERE id = $1", broken)
    scheduler = Scheduler(fast, store, store, dispatcher=None)
    assert (await scheduler.run_due_schedules()).scheduled == 1
    rows = await view(psql)
    assert (rows[broken]["state"], rows[broken]["last_task_id"]) == ("paused", None)
    assert rows[healthy]["last_task_id"] is not None


async def test_the_view_and_functions_say_what_they_are(psql: asyncpg.Connection) -> None:
    assert await psql.fetchval("SELECT obj_description('taskflow_schedules'::regclass, 'pg_class')")
    for function in ("taskflow_pause_schedule", "taskflow_resume_schedule"):
        described = await psql.fetchval(
            "SELECT obj_description(oid, 'pg_proc') FROM pg_proc WHERE proname = $1", function
        )
        assert described, function
