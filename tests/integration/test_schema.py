"""The schema backs the state machine: states, transitions, constraints, history
written by the database itself (also for changes made by hand), migrations."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from taskflow.errors import ConfigError
from taskflow.models import TASK_TYPE_PATTERN, TERMINAL, TRANSITIONS, TaskStatus
from taskflow.store.migrations import SqlFile, apply_migrations, repeatable_files
from taskflow.store.pool import connect
from tests.conftest import _admin, dsn_for


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(database)
    await connection.execute("INSERT INTO users (email, password_hash) VALUES ('a@b.co', 'x')")
    yield connection
    await connection.close()


async def insert_task(db: asyncpg.Connection, status: TaskStatus) -> uuid.UUID:
    task_id = uuid.uuid4()
    processing = status == TaskStatus.PROCESSING
    await db.execute(
        """
        INSERT INTO tasks (id, user_id, type, payload, status, attempts, finished_at,
                           worker_id, lease_expires_at, claim_token)
        VALUES ($1, 1, 'send_email', '{}', $2, $3,
                CASE WHEN $4 THEN now() END,
                CASE WHEN $5 THEN 'w1' END,
                CASE WHEN $5 THEN now() + interval '1 minute' END,
                CASE WHEN $5 THEN 1 END)
        """,
        task_id,
        status,
        1 if status in (TaskStatus.PROCESSING, TaskStatus.DONE, TaskStatus.FAILED) else 0,
        status in TERMINAL,
        processing,
    )
    return task_id


async def test_database_states_equal_the_enum(db: asyncpg.Connection) -> None:
    labels = await db.fetchval("SELECT enum_range(NULL::task_status)::text[]")
    assert set(labels) == {s.value for s in TaskStatus}
    pairs = {
        (TaskStatus(r["from_status"]), TaskStatus(r["to_status"]))
        for r in await db.fetch("SELECT from_status, to_status FROM task_transitions")
    }
    assert pairs == {(s, t) for s, targets in TRANSITIONS.items() for t in targets}


@pytest.mark.parametrize("source", list(TaskStatus))
@pytest.mark.parametrize("target", list(TaskStatus))
async def test_every_pair_in_the_database(
    db: asyncpg.Connection, source: TaskStatus, target: TaskStatus
) -> None:
    """A change of status made by hand obeys TRANSITIONS and is recorded."""
    if source == target:
        return
    task_id = await insert_task(db, source)
    update = """
        UPDATE tasks SET status = $2,
            finished_at = CASE WHEN $3 THEN now() END,
            worker_id = CASE WHEN $4 THEN 'w2' ELSE worker_id END,
            lease_expires_at = CASE WHEN $4 THEN now() + interval '1 minute' END,
            claim_token = CASE WHEN $4 THEN 2 ELSE claim_token END,
            attempts = CASE WHEN $4 THEN 1 ELSE attempts END
        WHERE id = $1
    """
    processing = target == TaskStatus.PROCESSING
    if target in TRANSITIONS[source]:
        await db.execute(update, task_id, target, target in TERMINAL, processing)
        history = await db.fetch(
            "SELECT event, from_status, to_status, actor FROM task_history "
            "WHERE task_id = $1 ORDER BY id",
            task_id,
        )
        assert [(h["from_status"], h["to_status"]) for h in history] == [
            (None, source.value),
            (source.value, target.value),
        ]
        assert history[-1]["actor"] == "sql:root" or history[-1]["actor"].startswith("sql:")
    else:
        with pytest.raises(asyncpg.CheckViolationError, match="not an allowed transition"):
            await db.execute(update, task_id, target, target in TERMINAL, processing)
        assert await db.fetchval("SELECT status FROM tasks WHERE id = $1", task_id) == source


async def test_finished_at_iff_terminal(db: asyncpg.Connection) -> None:
    task_id = await insert_task(db, TaskStatus.QUEUED)
    with pytest.raises(asyncpg.CheckViolationError, match="tasks_finished_iff_terminal"):
        await db.execute("UPDATE tasks SET finished_at = now() WHERE id = $1", task_id)
    # Changed together with the status, a contradicting field is still refused:
    # only a field the change leaves unset is filled in.
    done = await insert_task(db, TaskStatus.DONE)
    with pytest.raises(asyncpg.CheckViolationError, match="tasks_finished_iff_terminal"):
        await db.execute("UPDATE tasks SET finished_at = NULL WHERE id = $1", done)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (source, target)
        for source, targets in TRANSITIONS.items()
        for target in targets
        if target != TaskStatus.PROCESSING
    ],
)
async def test_a_plain_status_update_fills_in_what_it_implies(
    db: asyncpg.Connection, source: TaskStatus, target: TaskStatus
) -> None:
    """What an operator types in psql: only the status. The database fills in
    the rest and records the change (SPEC §7.7)."""
    task_id = await insert_task(db, source)
    await db.execute("UPDATE tasks SET status = $2 WHERE id = $1", task_id, target)
    row = await db.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    assert row["status"] == target
    assert (row["finished_at"] is not None) is (target in TERMINAL)
    assert row["lease_expires_at"] is None
    if source in TERMINAL and target == TaskStatus.QUEUED:
        # A manual retry: fresh attempts, due now, nobody holding it.
        assert (row["attempts"], row["lease_crashes"], row["worker_id"]) == (0, 0, None)
    history = await db.fetch(
        "SELECT from_status, to_status, actor FROM task_history WHERE task_id = $1 ORDER BY id",
        task_id,
    )
    assert [(h["from_status"], h["to_status"]) for h in history][-1] == (source, target)
    assert history[-1]["actor"].startswith("sql:")


async def test_attempt_and_retry_bounds(db: asyncpg.Connection) -> None:
    task_id = await insert_task(db, TaskStatus.QUEUED)
    with pytest.raises(asyncpg.CheckViolationError, match="tasks_attempts_bounds"):
        await db.execute("UPDATE tasks SET attempts = 5 WHERE id = $1", task_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE tasks SET max_retries = 11 WHERE id = $1", task_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE tasks SET attempts = -1 WHERE id = $1", task_id)
    with pytest.raises(asyncpg.CheckViolationError, match="tasks_processing_has_lease"):
        await db.execute(
            "UPDATE tasks SET status = 'processing', attempts = 1 WHERE id = $1", task_id
        )
    assert await db.fetchval("SELECT retries FROM tasks WHERE id = $1", task_id) == 0


async def test_bad_status_value_is_rejected(db: asyncpg.Connection) -> None:
    task_id = await insert_task(db, TaskStatus.QUEUED)
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await db.execute("UPDATE tasks SET status = 'running' WHERE id = $1", task_id)


TYPE_NAME_CHECKS = {
    "tasks": "INSERT INTO tasks (id, user_id, type, payload, status)"
    " VALUES (gen_random_uuid(), 1, $1, '{}', 'queued')",
    "schedules": "INSERT INTO schedules (user_id, name, cron, type, payload)"
    " VALUES (1, 'every minute', '* * * * *', $1, '{}')",
    "paused_task_types": "INSERT INTO paused_task_types (type) VALUES ($1)",
}


@pytest.mark.parametrize("table", sorted(TYPE_NAME_CHECKS))
async def test_type_names_are_checked_where_they_are_stored(
    db: asyncpg.Connection, table: str
) -> None:
    # The rule is models.TASK_TYPE_PATTERN's, [a-z][a-z0-9_]{0,63}, matched whole.
    insert = TYPE_NAME_CHECKS[table]
    for good in ("a", "send_email", "a" + "b_9" * 21):
        assert TASK_TYPE_PATTERN.fullmatch(good)
        await db.execute(insert, good)
    for bad in ("", "9a", "_a", "Send", "a-b", "a b", "é", "a\n", "a" * 65):
        assert not TASK_TYPE_PATTERN.fullmatch(bad)
        with pytest.raises(asyncpg.CheckViolationError):
            await db.execute(insert, bad)


async def test_history_names_actor_and_event(db: asyncpg.Connection) -> None:
    task_id = await insert_task(db, TaskStatus.POSTPONED)
    async with db.transaction():
        await db.execute("SELECT set_config('taskflow.actor', 'ops:alice', true)")
        await db.execute("SELECT set_config('taskflow.event', 'manual_release', true)")
        await db.execute("UPDATE tasks SET status = 'queued' WHERE id = $1", task_id)
    row = await db.fetchrow(
        "SELECT event, actor FROM task_history WHERE task_id = $1 ORDER BY id DESC LIMIT 1",
        task_id,
    )
    assert (row["event"], row["actor"]) == ("manual_release", "ops:alice")


async def test_deleting_a_task_deletes_its_history(db: asyncpg.Connection) -> None:
    task_id = await insert_task(db, TaskStatus.DONE)
    assert await db.fetchval("SELECT count(*) FROM task_history WHERE task_id = $1", task_id) == 1
    await db.execute("DELETE FROM tasks WHERE id = $1", task_id)
    assert await db.fetchval("SELECT count(*) FROM task_history WHERE task_id = $1", task_id) == 0


# The rules the claims, finishes and inserts evaluate once a row: each must be
# inlined into the statement (its body in the plan, not a call), or every
# statement sets up a function call and every row pays one.
INLINED_RULES = {
    "taskflow_attempt_status(i, 3, false)": "CASE WHEN",
    "taskflow_initial_status(now() + make_interval(secs => i), false)": "CASE WHEN",
    "taskflow_event_name(NULL, 'queued')": "'created'",
    "taskflow_backoff_seconds(i, 100, 1000)": "random()",
    "taskflow_actor()": "current_setting",
    "taskflow_notify_queued_enabled()": "current_setting",
}


@pytest.mark.parametrize("call", sorted(INLINED_RULES))
async def test_per_row_rules_are_inlined(db: asyncpg.Connection, call: str) -> None:
    plan = "\n".join(
        row[0]
        for row in await db.fetch(f"EXPLAIN VERBOSE SELECT {call} FROM generate_series(1, 3) i")
    )
    name = call.split("(", 1)[0]
    assert name not in plan, plan
    assert INLINED_RULES[call] in plan, plan


async def test_migrations_apply_to_an_empty_database_twice_in_parallel() -> None:
    name = f"taskflow_migrate_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        first, second = await asyncio.gather(
            apply_migrations(dsn_for(name)), apply_migrations(dsn_for(name))
        )
        # Exactly one of the two applied each file; the other found it done.
        assert sorted(first + second) == sorted(set(first + second))
        versions = [name for name in first + second if "/" not in name]
        repeatables = [name for name in first + second if "/" in name]
        assert versions
        assert repeatables == [f.name for f in repeatable_files()]
        assert await apply_migrations(dsn_for(name)) == []
        connection = await connect(dsn_for(name))
        try:
            assert await connection.fetchval("SELECT count(*) FROM schema_migrations") == len(
                versions
            )
            assert await connection.fetchval("SELECT count(*) FROM schema_repeatables") == len(
                repeatables
            )
        finally:
            await connection.close()
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_edited_migration_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = f"taskflow_migrate_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x int);")
        assert await apply_migrations(dsn_for(name), tmp_path, repeatables=[]) == ["0001_a"]
        (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x bigint);")
        with pytest.raises(ConfigError, match="only move forward"):
            await apply_migrations(dsn_for(name), tmp_path, repeatables=[])
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_repeatable_sql_is_applied_again_when_a_file_changes(tmp_path: Path) -> None:
    name = f"taskflow_migrate_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x int);")
        view = SqlFile("ops/sql/01_a.sql", "CREATE OR REPLACE VIEW a_view AS SELECT x FROM a;")
        function = SqlFile(
            "db/functions/01_f.sql",
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
        )
        applied = await apply_migrations(dsn_for(name), tmp_path, repeatables=[function, view])
        assert applied == ["0001_a", function.name, view.name]
        # Unchanged: nothing runs again.
        assert await apply_migrations(dsn_for(name), tmp_path, repeatables=[function, view]) == []
        # Editing one file is how a function changes: no new migration.
        edited = SqlFile(function.name, function.sql.replace("SELECT 1", "SELECT 2"))
        assert await apply_migrations(dsn_for(name), tmp_path, repeatables=[edited, view]) == [
            function.name
        ]
        connection = await connect(dsn_for(name))
        try:
            assert await connection.fetchval("SELECT f()") == 2
            recorded = dict(await connection.fetch("SELECT name, checksum FROM schema_repeatables"))
            assert recorded == {edited.name: edited.checksum, view.name: view.checksum}
        finally:
            await connection.close()
        # A file that fails names itself, and nothing of the round is kept.
        broken = SqlFile(view.name, "CREATE OR REPLACE VIEW a_view AS SELECT nope FROM a;")
        with pytest.raises(ConfigError, match=r"ops/sql/01_a\.sql"):
            await apply_migrations(
                dsn_for(name),
                tmp_path,
                repeatables=[
                    SqlFile(function.name, function.sql.replace("SELECT 1", "SELECT 3")),
                    broken,
                ],
            )
        connection = await connect(dsn_for(name))
        try:
            assert await connection.fetchval("SELECT f()") == 2
        finally:
            await connection.close()
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
