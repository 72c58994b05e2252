"""A task belongs to a user who exists (db/migrations/0017): the rule a
foreign key kept, checked once per inserting statement, for every writer and
under concurrent deletion of the user."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from taskflow.errors import ValidationFailed
from taskflow.store.inserts import NewTask
from taskflow.store.pool import connect
from tests.conftest import new_user, wait_until, waiting_on_a_lock
from tests.stores import Store

INSERT = """
INSERT INTO tasks (id, user_id, type, payload, status)
SELECT gen_random_uuid(), u, 'send_email', '{}', 'queued' FROM unnest($1::bigint[]) AS u
"""


def _new_task() -> NewTask:
    return NewTask(uuid.uuid4(), "send_email", {}, 0, 3, None)


async def _tasks_of(store: Store, user_id: int) -> int:
    count: int = await store.pool.fetchval("SELECT count(*) FROM tasks WHERE user_id = $1", user_id)
    return count


async def test_a_task_of_a_missing_user_is_refused_and_nothing_is_written(
    store: Store,
) -> None:
    alive = await new_user(store, "alive@example.com")
    with pytest.raises(asyncpg.ForeignKeyViolationError) as raised:
        # One good owner and one missing: the whole statement is refused.
        await store.pool.execute(INSERT, [alive, alive, alive + 1000])
    assert raised.value.constraint_name == "tasks_owner_exists"
    assert f"(user_id)=({alive + 1000})" in (raised.value.detail or "")
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 0
    assert await store.pool.fetchval("SELECT count(*) FROM task_history") == 0

    # The store's inserts answer it as the API's 400.
    with pytest.raises(ValidationFailed, match="no longer exists"):
        await store.insert_tasks(alive + 1000, [_new_task()])
    with pytest.raises(ValidationFailed, match="no longer exists"):
        await store.insert_task(alive + 1000, _new_task())
    await store.insert_tasks(alive, [_new_task(), _new_task()])
    assert await _tasks_of(store, alive) == 2


async def test_an_insert_checks_its_owner_once_not_once_a_row(store: Store) -> None:
    user_id = await new_user(store)
    plan = await store.pool.fetchval(
        f"EXPLAIN (ANALYZE, FORMAT JSON) {INSERT}", [user_id] * 50, column=0
    )
    calls = {t.get("Constraint Name", t["Trigger Name"]): t["Calls"] for t in plan[0]["Triggers"]}
    assert calls.pop("tasks_history_insert") == 1
    # The one per-row check left: the schedule's key, for rows that have none.
    assert calls == {"tasks_schedule_id_fkey": 50}


async def test_deleting_a_user_deletes_their_tasks_only(store: Store) -> None:
    leaving = await new_user(store, "leaving@example.com")
    staying = await new_user(store, "staying@example.com")
    await store.insert_tasks(leaving, [_new_task() for _ in range(3)])
    await store.insert_tasks(staying, [_new_task() for _ in range(2)])
    await store.pool.execute("DELETE FROM users WHERE id = $1", leaving)
    assert await _tasks_of(store, leaving) == 0
    assert await _tasks_of(store, staying) == 2


async def test_a_user_deleted_during_an_insert_takes_the_new_tasks_along(
    database: str, store: Store
) -> None:
    user_id = await new_user(store)
    inserter = await connect(database)
    deleter = await connect(database)
    try:
        async with inserter.transaction():
            await inserter.execute(INSERT, [user_id] * 5)
            deleting = asyncio.create_task(
                deleter.execute("DELETE FROM users WHERE id = $1", user_id)
            )
            await wait_until(lambda: waiting_on_a_lock(store), timeout=10, what="the deletion")
            assert not deleting.done(), "the deletion must wait for the insert's owner lock"
        assert await asyncio.wait_for(deleting, 10) == "DELETE 1"
        assert await _tasks_of(store, user_id) == 0
    finally:
        await inserter.close()
        await deleter.close()


@pytest.mark.parametrize("deletion_commits", [True, False])
async def test_an_insert_that_waited_for_a_deletion_follows_its_outcome(
    database: str, store: Store, deletion_commits: bool
) -> None:
    user_id = await new_user(store)
    inserter = await connect(database)
    deleter = await connect(database)
    try:
        transaction = deleter.transaction()
        await transaction.start()
        await deleter.execute("DELETE FROM users WHERE id = $1", user_id)
        inserting = asyncio.create_task(inserter.execute(INSERT, [user_id] * 5))
        await wait_until(lambda: waiting_on_a_lock(store), timeout=10, what="the insert")
        assert not inserting.done(), "the insert must wait for the deletion"
        if deletion_commits:
            await transaction.commit()
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await asyncio.wait_for(inserting, 10)
            assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 0
        else:
            await transaction.rollback()
            assert await asyncio.wait_for(inserting, 10) == "INSERT 0 5"
            assert await _tasks_of(store, user_id) == 5
    finally:
        await inserter.close()
        await deleter.close()


async def test_owners_never_change(store: Store) -> None:
    first = await new_user(store, "first@example.com")
    second = await new_user(store, "second@example.com")
    (row,) = await store.insert_tasks(first, [_new_task()])
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="changes user_id"):
        await store.pool.execute("UPDATE tasks SET user_id = $1 WHERE id = $2", second, row["id"])
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="changes id"):
        await store.pool.execute("UPDATE users SET id = DEFAULT WHERE id = $1", first)
    # Other changes of the same rows go through.
    await store.pool.execute("UPDATE tasks SET priority = 5 WHERE id = $1", row["id"])
    await store.pool.execute("UPDATE users SET is_admin = true WHERE id = $1", first)
    assert await _tasks_of(store, first) == 1
