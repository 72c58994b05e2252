"""A large create_many is sent in parts (INSERT_PART_SIZE tasks a statement)
in one transaction, each validated while Postgres inserts the one before:
still all or nothing, in order, whatever fails and wherever."""

from __future__ import annotations

import asyncio

import pytest

from taskflow.enqueue import INSERT_PART_SIZE, Enqueuer
from taskflow.errors import LimitExceeded, ValidationFailed
from taskflow.handlers import Registry
from taskflow.models import TaskCreate
from taskflow.store.pool import connect
from tests.conftest import new_user, wait_until, waiting_on_a_lock
from tests.stores import Store

# Three parts, the last a short one.
COUNT = 2 * INSERT_PART_SIZE + 7


def _requests(count: int = COUNT) -> list[TaskCreate]:
    return [TaskCreate(type="test_noop", payload={"n": n}) for n in range(count)]


async def _nothing_written(store: Store) -> None:
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 0
    assert await store.pool.fetchval("SELECT count(*) FROM task_history") == 0


async def test_parts_keep_the_order_and_ids_come_back_in_it(
    store: Store, registry: Registry
) -> None:
    enqueuer = Enqueuer(store, registry)
    user_id = await new_user(store)
    rows = await enqueuer.create_many(user_id, _requests())
    assert [row["payload"]["n"] for row in rows] == list(range(COUNT))
    ids = await enqueuer.create_many_ids(user_id, _requests())
    stored = await store.pool.fetch(
        "SELECT id, payload FROM tasks WHERE id = ANY ($1::uuid[])", ids
    )
    by_id = {row["id"]: row["payload"]["n"] for row in stored}
    assert [by_id[task_id] for task_id in ids] == list(range(COUNT))
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == 2 * COUNT


@pytest.mark.parametrize("bad_at", [0, INSERT_PART_SIZE + 3, COUNT - 1])
async def test_an_invalid_item_in_any_part_writes_nothing(
    store: Store, registry: Registry, bad_at: int
) -> None:
    enqueuer = Enqueuer(store, registry)
    user_id = await new_user(store)
    requests = _requests()
    requests[bad_at] = TaskCreate(type="test_noop", payload={"n": "not a number"})
    with pytest.raises(ValidationFailed) as raised:
        await enqueuer.create_many(user_id, requests)
    assert [d["field"] for d in raised.value.details] == [f"tasks[{bad_at}].payload.n"]
    await _nothing_written(store)
    # The connection went back to the pool usable: the next create goes through.
    assert len(await enqueuer.create_many_ids(user_id, _requests())) == COUNT


async def test_a_limit_crossed_in_a_later_part_writes_nothing(
    store: Store, registry: Registry
) -> None:
    enqueuer = Enqueuer(store, registry)
    user_id = await new_user(store)
    await store.pool.execute(
        "INSERT INTO user_limits (user_id, max_active_tasks) VALUES ($1, $2)",
        user_id,
        INSERT_PART_SIZE + 5,
    )
    with pytest.raises(LimitExceeded) as raised:
        await enqueuer.create_many(user_id, _requests())
    assert raised.value.limit == "user_max_active_tasks"
    await _nothing_written(store)


async def test_a_create_cancelled_with_a_part_in_flight_writes_nothing(
    database: str, store: Store, registry: Registry
) -> None:
    """A caller gone mid-create (a client that hung up): the part in flight is
    given up, the transaction rolled back, and the pool stays usable."""
    enqueuer = Enqueuer(store, registry)
    user_id = await new_user(store)
    holder = await connect(database)
    try:
        # The first part's owner check waits behind this lock.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
        creating = asyncio.create_task(enqueuer.create_many_ids(user_id, _requests()))
        await wait_until(
            lambda: waiting_on_a_lock(store), timeout=10, what="the first part waiting"
        )
        creating.cancel()
        with pytest.raises(asyncio.CancelledError):
            await creating
        await transaction.rollback()
    finally:
        await holder.close()
    await _nothing_written(store)
    assert len(await enqueuer.create_many_ids(user_id, _requests())) == COUNT


async def test_an_owner_deleted_before_the_create_writes_nothing(
    store: Store, registry: Registry
) -> None:
    enqueuer = Enqueuer(store, registry)
    user_id = await new_user(store)
    await store.pool.execute("DELETE FROM users WHERE id = $1", user_id)
    # The first part fails in Postgres while the second is being validated.
    with pytest.raises(ValidationFailed, match="no longer exists"):
        await enqueuer.create_many_ids(user_id, _requests())
    await _nothing_written(store)
