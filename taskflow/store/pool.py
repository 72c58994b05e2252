"""The connection to Postgres: pools, single connections, LISTEN, and the errors
that mean "the database is not there right now".

The store package is the only importer of asyncpg. Its modules follow the
audiences of the database: ``accounts`` and ``tasks`` (the API's queries),
``engine`` (the worker's and scheduler's guarded transitions), ``operators``
(``taskflow status``, retention), ``events`` (live streams and the dashboard),
``migrations``; ``lean_pool`` is the pool they share. Each query is a named
constant run by the method of the same name. Every change of a task's status
is a guarded UPDATE (``... AND status = ...``): no returned row means the
transition was not allowed, or somebody else got there first. History rows are
written by the triggers of ``db/migrations/0001_initial.sql`` in the same
transaction as the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self, TypeAlias
from uuid import UUID

import asyncpg
import orjson
from asyncpg.pgproto.pgproto import UUID as PgUUID

from taskflow.errors import StoreUnavailable
from taskflow.store.lean_pool import create_lean_pool
from taskflow.waiting import wait_any

log = logging.getLogger(__name__)

Record = asyncpg.Record
NotifyCallback = Callable[[str, str], None]
# A connection of its own or one borrowed from a pool. A string: asyncpg's
# classes are generic only in their type stubs.
Connection: TypeAlias = "asyncpg.Connection[Record] | asyncpg.pool.PoolConnectionProxy[Record]"

# Errors that mean "the database is not there right now", as opposed to a bug.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    # Raised when a connection broke in the middle of an operation and is reused.
    asyncpg.exceptions.InternalClientError,
)


# Everything the database can throw at a running process: worth logging and
# retrying in a loop that must not die (a claim, a heartbeat, a tick).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def uuid_of_bytes(data: bytes) -> UUID:
    """A UUID from its 16 bytes, as asyncpg's own type (a uuid.UUID, the type
    rows come back with): five times quicker to make than uuid.UUID(bytes=)."""
    return PgUUID(data)


class JsonText(str):
    """JSON text already written (a task's payload, by its validation): sent to a
    json or jsonb parameter as it is, instead of being parsed and written again."""

    __slots__ = ()


def _json_dumps(value: Any) -> str:
    if type(value) is JsonText:
        return value
    return orjson.dumps(value).decode()


async def _init_connection(connection: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await connection.set_type_codec(
            name, encoder=_json_dumps, decoder=orjson.loads, schema="pg_catalog"
        )


def _server_settings(
    application_name: str, actor: str | None, notify_queued: bool = True
) -> dict[str, str]:
    # Read by the triggers, set once per connection instead of once per
    # transaction: who makes the changes, and whether enqueues NOTIFY (see
    # taskflow_notify_queued_enabled in the schema).
    settings = {"application_name": application_name[:63]}
    if actor:
        settings["taskflow.actor"] = actor
    if not notify_queued:
        settings["taskflow.notify_queued"] = "off"
    return settings


async def connect(
    dsn: str, *, application_name: str = "taskflow", actor: str | None = None
) -> asyncpg.Connection:
    connection = await asyncpg.connect(
        dsn, server_settings=_server_settings(application_name, actor), timeout=10
    )
    await _init_connection(connection)
    return connection


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    application_name: str = "taskflow",
    actor: str | None = None,
    notify_queued: bool = True,
) -> asyncpg.Pool:
    try:
        pool = await create_lean_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            server_settings=_server_settings(application_name, actor, notify_queued),
            timeout=10,
            command_timeout=60,
        )
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailable(f"cannot connect to Postgres: {exc}") from exc
    assert pool is not None
    return pool


SELECT_READY = "SELECT 1"
NOTIFY_QUEUED = "SELECT pg_notify('taskflow_queued', '')"


class Queries:
    """A family of queries over a shared pool; each process opens one pool
    (:meth:`Database.open`) and hands it to the families it needs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def notify_queued(self) -> None:
        """Wake the workers that claim from Postgres (the broker missed ids)."""
        await self.pool.execute(NOTIFY_QUEUED)


class Database(Queries):
    """A process's pool: opened once by its composition root, closed at exit."""

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        application_name: str = "taskflow",
        actor: str | None = None,
        notify_queued: bool = True,
    ) -> Self:
        """``notify_queued=False``: this process publishes ids to RabbitMQ, and
        calls :meth:`notify_queued` itself when a publish fails."""
        return cls(
            await create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                application_name=application_name,
                actor=actor or application_name,
                notify_queued=notify_queued,
            )
        )

    async def close(self) -> None:
        await self.pool.close()

    async def ready(self) -> bool:
        await self.pool.fetchval(SELECT_READY, timeout=2)
        return True


async def name_change(connection: Connection, *, actor: str, event: str | None = None) -> None:
    """Tell the history trigger who makes this transaction's changes."""
    await connection.execute(
        "SELECT set_config('taskflow.actor', $1, true), set_config('taskflow.event', $2, true)",
        actor,
        event or "",
    )


SessionHook = Callable[["asyncpg.Connection[Record]"], Awaitable[None]]


def _unheard(_channel: str, _payload: str) -> None:
    """Notifications that arrive before the owner says where they go."""


async def _nothing_to_prepare(_connection: asyncpg.Connection[Record]) -> None:
    """A session that needs nothing before it listens."""


class Listener:
    """One connection LISTENing on channels, reconnecting when Postgres goes
    away. Built by a process's composition root; its owner says where the
    notifications go (:meth:`on_notify`), what each new session must do
    before it listens (:meth:`on_session`), and runs it.

    Besides the channels' notifications the callback hears, with an empty
    payload: ``"connected"`` once a session is prepared and listening,
    ``"lost"`` the moment it ends, and ``"reconnected"`` just before the next
    attempt to connect (anything may have happened while it was deaf).
    """

    def __init__(self, dsn: str, channels: Iterable[str], *, name: str) -> None:
        self.dsn = dsn
        self.channels = tuple(channels)
        self.callback: NotifyCallback = _unheard
        self.prepare_session: SessionHook = _nothing_to_prepare
        self.name = name
        self._connection: asyncpg.Connection | None = None
        self.connected = asyncio.Event()
        self.lost = asyncio.Event()
        self._muted: set[str] = set()
        self._heard: set[str] = set()  # LISTENed on in the current session
        self._tuning = asyncio.Lock()

    def on_notify(self, callback: NotifyCallback) -> None:
        self.callback = callback

    def on_session(self, prepare: SessionHook) -> None:
        self.prepare_session = prepare

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                self._connection = await connect(self.dsn, application_name=self.name)
                self.lost.clear()
                self._connection.add_termination_listener(lambda _c: self.lost.set())
                await self.prepare_session(self._connection)
                self._heard.clear()
                for channel in self.channels:
                    await self._tune(channel)
                self.connected.set()
                self.callback("connected", "")
                delay = 0.1
                # Wake up periodically to notice a silently dead connection.
                while not stop.is_set() and not self.lost.is_set():
                    await wait_any(stop, self.lost, timeout=5)
                    if not stop.is_set() and not self.lost.is_set():
                        await self._connection.execute("SELECT 1", timeout=5)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "listener connection lost",
                    extra={"event": "listener_lost", "error": str(exc)},
                )
            finally:
                was_connected = self.connected.is_set()
                self.connected.clear()
                if self._connection is not None:
                    self._connection.terminate()
                    self._connection = None
                if was_connected:
                    self.callback("lost", "")
            if not stop.is_set():
                await wait_any(stop, timeout=delay)
                delay = min(delay * 2, 5)
                # Anything may have happened while we were deaf: let the owner look.
                self.callback("reconnected", "")

    async def set_listening(self, channel: str, listening: bool) -> None:
        """Stop hearing one of the channels, or hear it again, until told
        otherwise (reconnects keep it). A notification nobody acts on is not
        free: every commit that sends one wakes this session and this process."""
        if channel not in self.channels:
            raise ValueError(f"{channel!r} is not one of this listener's channels")
        if listening == (channel not in self._muted):
            return  # as asked already; each new session starts that way
        if listening:
            self._muted.discard(channel)
        else:
            self._muted.add(channel)
        # An error means the session is ending; the next one starts as asked.
        with contextlib.suppress(*DATABASE_ERRORS):
            await self._tune(channel)

    async def _tune(self, channel: str) -> None:
        async with self._tuning:
            connection = self._connection
            wanted = channel not in self._muted
            if connection is None or wanted == (channel in self._heard):
                return
            if wanted:
                await connection.add_listener(channel, self._on_notify)
                self._heard.add(channel)
            else:
                await connection.remove_listener(channel, self._on_notify)
                self._heard.discard(channel)

    def _on_notify(self, _connection: Any, _pid: int, channel: str, payload: object, /) -> None:
        self.callback(channel, str(payload))


async def create_database_if_missing(dsn: str) -> bool:
    """Create the database named in ``dsn`` (connecting to ``postgres`` to do it)."""
    from urllib.parse import unquote, urlsplit

    database = unquote(urlsplit(dsn).path.lstrip("/")) or "postgres"
    try:
        connection = await connect(dsn)
        await connection.close()
        return False
    except asyncpg.InvalidCatalogNameError:
        pass
    admin_dsn = _replace_database(dsn, "postgres")
    connection = await connect(admin_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{database.replace(chr(34), chr(34) * 2)}"')
    except asyncpg.DuplicateDatabaseError:
        return False
    finally:
        await connection.close()
    return True


def _replace_database(dsn: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))
