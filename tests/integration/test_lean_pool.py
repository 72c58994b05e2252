"""The pool's inline acquire and release (taskflow/store/lean_pool.py): taken
for clean connections with the pinned asyncpg, and asyncpg's own release for
every other connection, which then behaves as asyncpg makes it behave."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from taskflow.store.lean_pool import FAST_PATHS, LeanPool
from taskflow.store.pool import connect, create_pool


@pytest.fixture
async def pool(database: str) -> AsyncIterator[Any]:
    pool = await create_pool(database, min_size=1, max_size=1)
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), 10)


@pytest.fixture
async def stock_releases() -> AsyncIterator[list[str]]:
    """One entry per connection taken back asyncpg's own way, seen from
    outside: that way runs through asyncio.shield, a Task per release."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task[Any]:
        if getattr(coro, "__qualname__", "") == "PoolConnectionHolder.release":
            made.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **options)

    loop.set_task_factory(factory)
    try:
        yield made
    finally:
        loop.set_task_factory(previous)


async def _backend(pool: Any) -> int:
    pid: int = await pool.fetchval("SELECT pg_backend_pid()")
    return pid


async def test_the_pinned_asyncpg_takes_the_short_paths(
    pool: Any, stock_releases: list[str]
) -> None:
    assert FAST_PATHS
    assert isinstance(pool, LeanPool)
    first = await _backend(pool)
    for _ in range(20):
        assert await pool.fetchval("SELECT 1") == 1
    assert await _backend(pool) == first
    assert stock_releases == []
    assert pool.get_idle_size() == 1


async def test_a_borrower_waiting_for_the_only_connection_gets_it(
    pool: Any, stock_releases: list[str]
) -> None:
    # max_size=1: the second waits on the pool's queue until the first is back.
    borrowers = (pool.fetchval("SELECT pg_sleep(0.05)::text || $1", str(n)) for n in range(3))
    results = await asyncio.wait_for(asyncio.gather(*borrowers), 10)
    assert sorted(results) == ["0", "1", "2"]
    assert stock_releases == []
    assert pool.get_idle_size() == 1


async def test_a_connection_left_in_a_transaction_is_rolled_back(
    pool: Any, stock_releases: list[str]
) -> None:
    await pool.execute("CREATE TABLE lean_pool_probe (n int)")
    connection = await pool.acquire()
    # An unmanaged transaction left open, as a bug elsewhere would leave it.
    await connection.execute("BEGIN; INSERT INTO lean_pool_probe VALUES (1)")
    await pool.release(connection)
    assert len(stock_releases) == 1
    async with pool.acquire() as again:
        assert not again.is_in_transaction()
        assert await again.fetchval("SELECT count(*) FROM lean_pool_probe") == 0


async def test_a_cancelled_query_leaves_the_pool_whole(
    pool: Any, stock_releases: list[str]
) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.fetchval("SELECT pg_sleep(30)"), 0.3)
    assert len(stock_releases) == 1
    # The statement was cancelled in Postgres, not left running on the connection.
    assert await asyncio.wait_for(pool.fetchval("SELECT 1"), 5) == 1
    assert pool.get_idle_size() == 1


async def test_listeners_do_not_outlive_their_borrower(database: str, pool: Any) -> None:
    heard: list[str] = []
    # asyncpg warns of a listener left behind, on its own path as on this one.
    with pytest.warns(asyncpg.InterfaceWarning, match="active notification listener"):
        async with pool.acquire() as connection:
            await connection.add_listener("lean_pool_probe", lambda *args: heard.append(args[3]))
    other = await connect(database)
    try:
        await other.execute("NOTIFY lean_pool_probe, 'after release'")
    finally:
        await other.close()
    # The same session (max_size=1) reads the notification with its next reply.
    await pool.fetchval("SELECT pg_sleep(0.1)")
    assert await pool.fetchval("SELECT 1") == 1
    assert heard == []


async def test_an_expired_connection_is_closed_and_replaced(
    pool: Any, stock_releases: list[str]
) -> None:
    first = await _backend(pool)
    async with pool.acquire() as connection:
        await pool.expire_connections()
        await connection.fetchval("SELECT 1")
    assert len(stock_releases) == 1
    assert await _backend(pool) != first


async def test_close_does_not_wait_for_connections_given_back(database: str) -> None:
    pool = await create_pool(database, min_size=2, max_size=2)
    await asyncio.gather(*(pool.fetchval("SELECT pg_sleep(0.02)") for _ in range(6)))
    await asyncio.wait_for(pool.close(), 5)
    assert pool._closed  # no public way to ask
