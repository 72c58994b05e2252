"""The fair pick itself (db/functions/50_fair_dispatch.sql), statement by
statement: round-robin over users, weights, priority within a user, the caps,
a sole user served in one visit, and an empty pick that writes nothing."""

from __future__ import annotations

import itertools
from collections import Counter

from taskflow.store.dispatch import FairLimits
from tests.conftest import new_user
from tests.stores import Store

_emails = itertools.count()


async def _user(store: Store) -> int:
    return await new_user(store, f"pick-{next(_emails)}@example.com")


async def _queue(store: Store, user: int, count: int, *, priority: int = 0) -> list[object]:
    rows = await store.pool.fetch(
        "INSERT INTO tasks (id, user_id, type, payload, status, priority) "
        "SELECT gen_random_uuid(), $1, 'test_noop', '{}', 'queued', $3 "
        "FROM generate_series(1, $2) RETURNING id",
        user,
        count,
        priority,
    )
    return [row["id"] for row in rows]


async def _users_of(store: Store, wanted: int, limits: FairLimits | None = None) -> list[int]:
    rows = await store.dispatch(wanted, limits or FairLimits())
    return [row["user_id"] for row in rows]


async def test_one_turn_each_then_the_rest_shared_among_the_hungry(store: Store) -> None:
    users = [await _user(store) for _ in range(3)]
    for user in users:
        await _queue(store, user, 20)
    # One circle of one task each.
    assert Counter(await _users_of(store, 3)) == Counter(users)
    # Nine more: after a circle of one each, the six left are shared by the
    # three, who all took what they were offered.
    assert Counter(await _users_of(store, 9)) == Counter({user: 3 for user in users})


async def test_picks_go_round_from_where_the_last_one_stopped(store: Store) -> None:
    users = sorted([await _user(store) for _ in range(3)])
    for user in users:
        await _queue(store, user, 5)
    taken = [(await _users_of(store, 1))[0] for _ in range(6)]
    assert taken[:3] == taken[3:]
    assert sorted(taken[:3]) == users


async def test_a_weight_takes_that_many_at_each_turn(store: Store) -> None:
    light, heavy = await _user(store), await _user(store)
    await store.pool.execute("INSERT INTO user_limits (user_id, weight) VALUES ($1, 3)", heavy)
    await _queue(store, light, 20)
    await _queue(store, heavy, 20)
    assert Counter(await _users_of(store, 4)) == Counter({light: 1, heavy: 3})


async def test_a_sole_user_gets_the_whole_pick_in_priority_order(store: Store) -> None:
    user = await _user(store)
    low = await _queue(store, user, 6, priority=0)
    high = await _queue(store, user, 3, priority=5)
    rows = await store.dispatch(8, FairLimits())
    assert len(rows) == 8
    assert {row["id"] for row in rows[:3]} == set(high)
    assert {row["id"] for row in rows[3:]} <= set(low)
    # The one left comes next, and then nothing.
    assert len(await store.dispatch(8, FairLimits())) == 1
    assert await store.dispatch(8, FairLimits()) == []


async def test_a_sole_user_is_held_to_their_running_cap(store: Store) -> None:
    user = await _user(store)
    await _queue(store, user, 10)
    assert len(await store.dispatch(8, FairLimits(user_max_running=3))) == 3
    assert await store.dispatch(8, FairLimits(user_max_running=3)) == []
    await store.pool.execute("INSERT INTO user_limits (user_id, max_running) VALUES ($1, 5)", user)
    assert len(await store.dispatch(8, FairLimits(user_max_running=3))) == 2


async def test_a_newcomer_is_not_behind_a_sole_users_backlog(store: Store) -> None:
    heavy = await _user(store)
    await _queue(store, heavy, 50)
    assert Counter(await _users_of(store, 10)) == Counter({heavy: 10})
    newcomer = await _user(store)
    await _queue(store, newcomer, 1)
    assert newcomer in await _users_of(store, 2)


async def test_an_empty_pick_and_a_repeated_user_rewrite_nothing(store: Store) -> None:
    user = await _user(store)
    assert await store.dispatch(8, FairLimits()) == []
    await _queue(store, user, 3)
    assert len(await store.dispatch(1, FairLimits())) == 1
    version = await store.pool.fetchval("SELECT xmin::text FROM dispatch_state")
    assert len(await store.dispatch(1, FairLimits())) == 1
    assert await store.dispatch(8, FairLimits()) != []
    assert await store.dispatch(8, FairLimits()) == []
    # The same user each time: the round-robin position stays, unwritten.
    assert await store.pool.fetchval("SELECT xmin::text FROM dispatch_state") == version


async def test_the_email_rate_does_not_walk_the_windows_dead_entries(store: Store) -> None:
    """Every visit counts the user's emails on their way to a worker. The
    window churns at the drain's rate; 5,000 of the user's other tasks that
    went through it leave dead entries until vacuum, and the count read them
    all (49 heap blocks here) instead of probing the email-only index."""
    user = await _user(store)
    await store.pool.execute(
        "INSERT INTO dispatched_tasks (task_id, user_id, type) "
        "SELECT gen_random_uuid(), $1, 'test_noop' FROM generate_series(1, 5000)",
        user,
    )
    await store.pool.execute("DELETE FROM dispatched_tasks")
    [task_id] = await _queue(store, user, 1)
    fetched = """
        SELECT coalesce(sum(pg_stat_get_xact_blocks_fetched(c.oid)), 0)
        FROM pg_class c WHERE c.relname = 'dispatched_tasks'
    """
    async with store.pool.acquire() as connection, connection.transaction():
        before = await connection.fetchval(fetched)
        rows = await connection.fetch("SELECT * FROM taskflow_dispatch(1, 0, '{}'::jsonb, 30)")
        after = await connection.fetchval(fetched)
    assert [row["id"] for row in rows] == [task_id]
    assert after - before < 10
