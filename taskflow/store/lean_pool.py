"""asyncpg's pool, with the common acquire and release done inline.

Every query that TaskFlow runs on a pool borrows a connection and gives it back
(``pool.fetch`` does too). asyncpg's ``release`` always goes through
``asyncio.shield``: a new Task, and one more turn of the event loop, per
query. Its ``acquire`` goes through two nested coroutines and a queue's
``get``. Measured against a connection held by the caller, for ``SELECT 1``
in a loop (CPU per query): the stock pool adds 40 - 46 µs on asyncio's loop
and 36 µs on uvloop. Doing the common case inline removes 26 - 30 µs and
19 µs of that, and 4 - 5 % of a single ``Enqueuer.create`` against the stock
pool (532 -> 511 µs wall on asyncio's loop, 556 -> 526 on uvloop; alternated
loops of 300).

The common case is a connection that comes back in a clean state: open, not in
a transaction, with no cancellation in progress, not expired, and under its
query limit. Then asyncpg's release would only clear the listeners, call the
reset hook, and hand the connection back; this pool's reset hook does nothing
(:func:`_keep_session` says why), so the rest is done inline, with no await
between taking the connection back and queueing it. Any other connection goes
asyncpg's own way, which rolls back, waits for a cancellation, closes or
reconnects as it always did.

Both shortcuts use asyncpg's private attributes. ``FAST_PATHS`` says whether
this asyncpg has them all (checked at import, on its classes); without them
the pool is asyncpg's own, unchanged. The requirements pin asyncpg, and
``tests/integration/test_lean_pool.py`` checks that the shortcuts are in use
with the pinned version and behave as asyncpg's own paths do.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from asyncpg.connection import Connection
from asyncpg.pool import Pool, PoolConnectionHolder, PoolConnectionProxy
from asyncpg.protocol.protocol import BaseProtocol

_NEEDED = {
    Pool: ("_queue", "_generation", "_closing", "_check_init", "_schedule_min_size_maintenance"),
    PoolConnectionHolder: (
        "_con",
        "_pool",
        "_generation",
        "_max_queries",
        "_timeout",
        "_release",
        "_setup_inactive_callback",
        "acquire",
    ),
    PoolConnectionProxy: ("_con", "_holder"),
    Connection: ("_protocol", "_top_xact", "_listeners", "_log_listeners", "_on_release"),
    BaseProtocol: ("_is_cancelling", "is_in_transaction", "queries_count"),
}
FAST_PATHS = all(hasattr(cls, name) for cls, names in _NEEDED.items() for name in names)


async def _keep_session(_connection: Connection[Any]) -> None:
    """Release without asyncpg's reset query (RESET ALL, UNLISTEN *, ...):
    TaskFlow never leaves session state on a pooled connection (its
    set_config calls are transaction-local; LISTEN uses its own connection),
    and the reset would cost a round trip on every query."""


class LeanPool(Pool):
    """A pool whose connections keep their session state between borrowers
    (:func:`_keep_session`), so a clean connection needs no reset and no Task
    to come back. Made by :func:`create_lean_pool`."""

    async def _acquire(self, timeout: float | None) -> Any:
        pool: Any = self
        if not FAST_PATHS or timeout is not None or pool._closing or pool._queue.empty():
            return await super()._acquire(timeout)  # type: ignore[misc]
        pool._check_init()
        holder = pool._queue.get_nowait()
        try:
            proxy = await holder.acquire()
        except BaseException:
            pool._queue.put_nowait(holder)
            pool._schedule_min_size_maintenance()
            raise
        holder._timeout = None
        return proxy

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:
        if FAST_PATHS and self._clean(connection):
            connection._con._on_release()
            # What asyncpg's reset does to a connection outside a transaction;
            # the pool's reset hook (_keep_session) adds nothing.
            connection._con._listeners.clear()
            connection._con._log_listeners.clear()
            holder = connection._holder
            holder._timeout = None
            holder._release()
            holder._setup_inactive_callback()
            return
        await super().release(connection, timeout=timeout)

    def _clean(self, connection_proxy: Any) -> bool:
        if type(connection_proxy) is not PoolConnectionProxy:
            return False
        proxy: Any = connection_proxy
        connection = proxy._con
        holder = proxy._holder
        if connection is None or holder._pool is not self or holder._con is not connection:
            return False
        protocol = connection._protocol
        pool: Any = self
        return bool(
            not connection.is_closed()
            and not protocol._is_cancelling()
            and not protocol.is_in_transaction()
            and connection._top_xact is None
            and holder._generation == pool._generation
            and protocol.queries_count < holder._max_queries
        )


async def create_lean_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    init: Callable[[Any], Coroutine[Any, Any, None]] | None = None,
    **connect_options: Any,
) -> LeanPool:
    """``asyncpg.create_pool``, with its defaults, for a LeanPool."""
    pool = LeanPool(
        dsn,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        init=init,
        reset=_keep_session,
        loop=None,
        **connect_options,
    )
    await pool
    return pool
