"""task_history is partitioned by time, and retention drops partitions instead
of deleting rows (SPEC §10; db/migrations/0015, db/functions/05_history_partitions.sql)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from taskflow.scheduler import Scheduler
from taskflow.store.engine import history_partition_days
from taskflow.store.migrations import apply_migrations, migrations_directory
from taskflow.store.pool import connect
from tests.conftest import _admin, dsn_for, make_settings
from tests.stores import DROP_HISTORY_PARTITIONS, Store

PARTITIONING = "0015_history_partitioned_by_time"
UPKEEP = """
SELECT * FROM taskflow_history_upkeep($1::text::interval, $2::text::interval, $3::text::interval,
                                      $4, $5)
"""


async def insert_tasks(connection: asyncpg.Connection, user_id: int, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    await connection.execute(
        """
        INSERT INTO tasks (id, user_id, type, payload, status)
        SELECT id, $2, 'test_noop', '{}', 'queued' FROM unnest($1::uuid[]) AS id
        """,
        ids,
        user_id,
    )
    return ids


async def partitions(connection: asyncpg.Connection) -> dict[str, str]:
    rows = await connection.fetch(
        """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'task_history'::regclass
        """
    )
    return {row["relname"]: row["bound"] for row in rows}


async def rows_by_partition(connection: asyncpg.Connection) -> dict[str, int]:
    rows = await connection.fetch(
        "SELECT tableoid::regclass::text AS part, count(*) AS n FROM task_history GROUP BY 1"
    )
    return {row["part"]: row["n"] for row in rows}


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(database)
    yield connection
    await connection.close()


@pytest.fixture
async def user_id(db: asyncpg.Connection) -> int:
    value: int = await db.fetchval(
        "INSERT INTO users (email, password_hash) VALUES ('p@example.com', 'x') RETURNING id"
    )
    return value


async def test_the_migration_keeps_existing_history_as_a_partition(tmp_path: Path) -> None:
    name = f"taskflow_migrate_{uuid.uuid4().hex[:8]}"
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(migrations_directory().glob("*.sql")):
        if path.stem < PARTITIONING:
            shutil.copy(path, before / path.name)
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        await apply_migrations(dsn_for(name), before)
        connection = await connect(dsn_for(name))
        try:
            user_id = await connection.fetchval(
                "INSERT INTO users (email, password_hash) VALUES ('m@example.com', 'x') "
                "RETURNING id"
            )
            old_ids = await insert_tasks(connection, user_id, 50)
            old_max = await connection.fetchval("SELECT max(id) FROM task_history")

            assert PARTITIONING in await apply_migrations(dsn_for(name))

            assert (
                await connection.fetchval(
                    "SELECT relkind::text FROM pg_class WHERE oid = 'task_history'::regclass"
                )
                == "p"
            )
            bounds = await partitions(connection)
            assert set(bounds) == {"task_history_unpartitioned", "task_history_default"}
            assert bounds["task_history_unpartitioned"].startswith("FOR VALUES FROM (MINVALUE)")
            new_ids = await insert_tasks(connection, user_id, 5)
            history = await connection.fetch(
                "SELECT task_id, id FROM task_history WHERE task_id = ANY($1) ORDER BY id",
                old_ids + new_ids,
            )
            assert [row["task_id"] for row in history] == old_ids + new_ids
            # Ids keep growing: the event stream resumes by id.
            assert min(row["id"] for row in history[50:]) > old_max
            # The operators' views were rebuilt over the new table.
            assert await connection.fetchval("SELECT count(*) FROM taskflow_throughput") >= 0
            # A task deleted after the change loses its history in every partition.
            await connection.execute("DELETE FROM tasks WHERE id = $1", old_ids[0])
            assert (
                await connection.fetchval(
                    "SELECT count(*) FROM task_history WHERE task_id = $1", old_ids[0]
                )
                == 0
            )
        finally:
            await connection.close()
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_new_database_writes_its_first_history_into_a_partition(
    db: asyncpg.Connection, user_id: int
) -> None:
    """Before any scheduler ran: migrating made today's partition and two ahead."""
    now = await db.fetchval("SELECT now()")
    days = [
        (await db.fetchval("SELECT $1::timestamptz + make_interval(days => $2)", now, n))
        for n in range(3)
    ]
    assert set(await partitions(db)) == {"task_history_default"} | {
        "task_history_" + day.strftime("%Y%m%d") for day in days
    }
    await insert_tasks(db, user_id, 20)
    assert await rows_by_partition(db) == {"task_history_" + now.strftime("%Y%m%d"): 20}


async def test_upkeep_creates_partitions_ahead(db: asyncpg.Connection, user_id: int) -> None:
    await db.execute(DROP_HISTORY_PARTITIONS)
    now = await db.fetchval("SELECT now()")
    upkeep = await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 1000, now)
    assert tuple(upkeep) == (0, 0, 3)  # today, and two days ahead
    ids = await insert_tasks(db, user_id, 20)
    assert await rows_by_partition(db) == {"task_history_" + now.strftime("%Y%m%d"): 20}
    # A second round finds nothing to do.
    again = await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 1000, now)
    assert tuple(again) == (0, 0, 0)
    assert await db.fetchval("SELECT count(*) FROM task_history WHERE task_id = ANY($1)", ids) == 20


async def test_a_range_with_rows_waiting_in_the_default_gets_no_partition(
    db: asyncpg.Connection, user_id: int
) -> None:
    """Rows written while no scheduler ran stay in the default (moving them
    would hold the exclusive lock for the copy); partitions go on after them."""
    await db.execute(DROP_HISTORY_PARTITIONS)
    await insert_tasks(db, user_id, 20)
    now = await db.fetchval("SELECT now()")
    upkeep = await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 1000, now)
    assert upkeep["created_partitions"] == 2  # the next two days, not today
    assert "task_history_" + now.strftime("%Y%m%d") not in await partitions(db)
    await insert_tasks(db, user_id, 5)
    assert await rows_by_partition(db) == {"task_history_default": 25}
    # Past retention, the default's rows are deleted a batch at a time.
    later = await db.fetchval("SELECT $1::timestamptz + interval '31 days'", now)
    upkeep = await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 1000, later)
    assert upkeep["deleted_rows"] == 25


async def test_retention_drops_whole_partitions_and_keeps_the_newer_ones(
    db: asyncpg.Connection, user_id: int
) -> None:
    now = await db.fetchval("SELECT now()")
    await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 1000, now)
    old = await insert_tasks(db, user_id, 30)
    await db.execute("ANALYZE task_history")
    # 35 days on, as seen from then: the partitions from today and the day
    # after are past 30 days of retention; rows of the days since are kept.
    later = await db.fetchval("SELECT $1::timestamptz + interval '35 days'", now)
    await db.execute(
        "INSERT INTO task_history (task_id, at, event, to_status, attempt) "
        "SELECT $1, $2::timestamptz - interval '1 day', 'created', 'queued', 0",
        old[0],
        later,
    )
    upkeep = await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 1000, later)
    assert upkeep["dropped_rows"] == 30  # the planner's estimate, exact after ANALYZE
    assert upkeep["deleted_rows"] == 0
    names = await partitions(db)
    assert "task_history_" + now.strftime("%Y%m%d") not in names
    assert min(n for n in names if n != "task_history_default") > "task_history_" + (
        now.strftime("%Y%m%d")
    )
    assert await db.fetchval("SELECT count(*) FROM task_history") == 1


async def test_rows_past_retention_in_the_default_partition_are_deleted(
    db: asyncpg.Connection, user_id: int
) -> None:
    ids = await insert_tasks(db, user_id, 5)
    await db.execute(
        "UPDATE task_history SET at = now() - interval '40 days' WHERE task_id = ANY($1)", ids[:3]
    )
    now = await db.fetchval("SELECT now()")
    upkeep = await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 2, now)
    # A batch at a time.
    assert upkeep["deleted_rows"] == 2
    upkeep = await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 2, now)
    assert upkeep["deleted_rows"] == 1
    assert await db.fetchval("SELECT count(*) FROM task_history") == 2


async def test_a_long_transaction_makes_upkeep_wait_a_moment_not_block_writers(
    db: asyncpg.Connection, database: str, user_id: int
) -> None:
    now = await db.fetchval("SELECT now()")
    await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 1000, now)
    await insert_tasks(db, user_id, 3)
    later = await db.fetchval("SELECT $1::timestamptz + interval '35 days'", now)
    reader = await connect(database)
    try:
        async with reader.transaction():
            await reader.fetchval("SELECT count(*) FROM task_history")
            upkeep = await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 1000, later)
            assert upkeep["dropped_rows"] == 0  # gave up on the lock, untouched
            assert await db.fetchval("SELECT count(*) FROM task_history") == 3
            # Writers were never queued behind it.
            await insert_tasks(db, user_id, 1)
        await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 1000, later)
        assert await db.fetchval("SELECT count(*) FROM task_history") == 0
    finally:
        await reader.close()


async def test_the_scheduler_keeps_partitions_ahead(
    store: Store, database: str, tmp_path: Path
) -> None:
    fast = make_settings(database, queue=None, files=tmp_path / "files")
    scheduler = Scheduler(fast, store, store, dispatcher=None)
    await scheduler.tick()  # the first tick runs retention
    names = await partitions_of(store)
    width = history_partition_days(fast.history_retention_days)
    ahead = await store.pool.fetchval(
        "SELECT count(*) FROM pg_inherits i WHERE i.inhparent = 'task_history'::regclass "
        "AND taskflow_history_partition_end(i.inhrelid) > now() + make_interval(days => $1)",
        width,
    )
    assert "task_history_default" in names
    assert ahead >= 1


async def partitions_of(store: Store) -> set[str]:
    async with store.pool.acquire() as connection:
        return set(await partitions(connection))


def test_partition_width_keeps_about_thirty_partitions() -> None:
    assert history_partition_days(30) == 1
    assert history_partition_days(1) == 1
    assert history_partition_days(90) == 3
    assert history_partition_days(36500) == 1217


async def test_writers_meanwhile_never_fail_while_partitions_are_made(
    db: asyncpg.Connection, database: str, user_id: int
) -> None:
    """A task created while its partition is being made: its history row goes
    to the default partition or the new one, never to an error."""
    writer = await connect(database)
    try:
        stop = asyncio.Event()
        written = 0

        async def write() -> None:
            nonlocal written
            while not stop.is_set():
                await insert_tasks(writer, user_id, 1)
                written += 1

        writing = asyncio.create_task(write())
        try:
            for _ in range(15):
                await asyncio.sleep(0.01)
                now = await db.fetchval("SELECT now()")
                await db.fetchrow(UPKEEP, "30 days", "1 day", "2 days", 1000, now)
                # Back to no partitions, the rows to the default again.
                async with db.transaction():
                    await db.execute("LOCK TABLE task_history IN ACCESS EXCLUSIVE MODE")
                    for name in await partitions(db):
                        if name != "task_history_default":
                            await db.execute(f"ALTER TABLE task_history DETACH PARTITION {name}")
                            await db.execute(
                                f"INSERT INTO task_history_default SELECT * FROM {name}"
                            )
                            await db.execute(f"DROP TABLE {name}")
                assert not writing.done()
        finally:
            stop.set()
            await writing
    finally:
        await writer.close()
    assert written > 0
    assert await db.fetchval("SELECT count(*) FROM task_history") == written
