"""What every command does first: load the settings (once, here), set up
logging, and, when it needs Postgres, make sure it can connect, so a wrong
port, role, password or database name is one line on stderr (exit 4), not a
traceback from deep inside a service."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

from taskflow.config import Settings, load_settings
from taskflow.errors import ConfigError, StoreUnavailable
from taskflow.log import setup_logging
from taskflow.store.pool import DATABASE_ERRORS, connect

# SQLSTATEs of a refused login: no such database, no such role (or not
# allowed to log in), wrong password. Each gets a hint at what to fix.
_HINTS = {
    "3D000": "create it with `taskflow migrate --create-database`",
    "28000": "check POSTGRES_USER or DATABASE_URL",
    "28P01": "check POSTGRES_PASSWORD or DATABASE_URL",
}


def start(args: argparse.Namespace, component: str, *, quiet: bool = False) -> Settings:
    """Settings and logging. ``quiet``: a command whose output is its answer
    (``status``, ``tasks``) logs only warnings, unless a level is configured."""
    settings = load_settings()
    level = settings.log_level
    if quiet and "log_level" not in settings.model_fields_set:
        level = "WARNING"
    setup_logging(
        component,
        level=level,
        log_format=getattr(args, "log_format", None) or configured_log_format(settings),
    )
    return settings


def configured_log_format(settings: Settings) -> str | None:
    """TASKFLOW_LOG_FORMAT if set; None lets logging choose by where it writes."""
    return settings.log_format if "log_format" in settings.model_fields_set else None


def database_unavailable(
    dsn: str, error: BaseException, *, doing: str = "connect to"
) -> StoreUnavailable:
    """One line naming where we tried, as whom, and Postgres's reason; never the password."""
    parts = urlsplit(dsn)
    database = unquote(parts.path.lstrip("/")) or "(default database)"
    try:
        port: int | str = parts.port or 5432
    except ValueError:  # not a number: Postgres's reason below says so
        port = "?"
    where = f"{parts.hostname or 'localhost'}:{port}/{database}"
    if parts.username:
        where += f" as {unquote(parts.username)}"
    reason = " ".join(str(error).split()) or type(error).__name__
    hint = _HINTS.get(getattr(error, "sqlstate", None) or "")
    return StoreUnavailable(
        f"cannot {doing} Postgres at {where}: {reason}" + (f" ({hint})" if hint else "")
    )


@contextmanager
def reporting_connection_errors(dsn: str, *, doing: str = "connect to") -> Iterator[None]:
    """For a block that only connects (and perhaps creates the database): any
    database error in it is a refusal, any ValueError a malformed address."""
    try:
        yield
    except DATABASE_ERRORS as exc:
        raise database_unavailable(dsn, exc, doing=doing) from exc
    except ValueError as exc:  # asyncpg could not parse the address
        password = urlsplit(dsn).password
        reason = str(exc).replace(password, "***") if password else str(exc)
        raise ConfigError(
            f"DATABASE_URL (or POSTGRES_*): not a Postgres address: {reason}"
        ) from exc


def require_database(settings: Settings) -> None:
    """Connect once and hang up. The services would fail the same way a moment
    later, but with a traceback, or (the API) inside its server's start-up."""
    dsn = settings.database_url.get_secret_value()

    async def probe() -> None:
        connection = await connect(dsn, application_name="taskflow-check")
        await connection.close()

    with reporting_connection_errors(dsn):
        asyncio.run(probe())


def operator_actor() -> str:
    """Who a change made from the command line is recorded as in the task's
    history: ``cli:<login>``, as a change made in psql is ``ops:<role>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry, as in some containers
        user = f"uid {os.getuid()}"
    return f"cli:{user}"


def tune_gc() -> None:
    """A service allocates many short-lived objects per request or task, and
    CPython's default first-generation threshold (700 allocations) then runs
    a collection every few requests: collect young objects less often.
    (Freezing the start-up heap as well helped the API a little more in some
    runs but made forked bench workers start tasks ~5 ms later; not done.)"""
    import gc

    gc.set_threshold(50_000, 20, 20)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_until_stopped(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` with SIGTERM/SIGINT setting ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    _install_uvloop()
    asyncio.run(runner())
