"""Find (or start) the Postgres and RabbitMQ that ./ops/up will use.

Prints shell `export` lines on stdout and one human line per service on stderr.
Postgres: the configured one (DATABASE_URL / POSTGRES_*, default 127.0.0.1:5432)
if it answers, else an embedded server (the pgserver package) under .state/pg.
RabbitMQ: the configured one (AMQP_URL / AMQP_*, default 127.0.0.1:5672) if it
answers, else none: workers then claim from Postgres, woken by LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import sys
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from taskflow.config import REPO_ROOT, load_settings

STATE = Path(os.environ.get("TASKFLOW_STATE_DIR", REPO_ROOT / ".state"))
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def export(name: str, value: str) -> None:
    print(f"export {name}={shlex.quote(value)}")


async def postgres_answers(dsn: str) -> bool:
    try:
        connection = await asyncpg.connect(dsn, timeout=3)
    except asyncpg.InvalidCatalogNameError:
        return True  # the server is there; `taskflow up` creates the database
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await connection.close()
    return True


def tcp_answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def embedded_postgres() -> str:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (as in CI); harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import pgserver  # only needed on machines without a Postgres

    STATE.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(STATE / "pg", cleanup_mode=None)
    base = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
    parts = urlsplit(base)
    return parts._replace(path="/taskflow").geturl()


def main() -> None:
    settings = load_settings()
    dsn = settings.database_url.get_secret_value()
    shown = urlsplit(dsn)
    if asyncio.run(postgres_answers(dsn)):
        say(f"Postgres: using {shown.hostname or 'socket'}:{shown.port or 5432}{shown.path}")
    else:
        dsn = embedded_postgres()
        say(
            f"Postgres: none reachable at {shown.hostname}:{shown.port or 5432}; "
            f"started an embedded one in {STATE / 'pg'}"
        )
    export("DATABASE_URL", dsn)

    amqp = settings.amqp_url.get_secret_value() if settings.amqp_url else None
    explicitly_off = os.environ.get("AMQP_URL", "x").strip().lower() in ("off", "none", "")
    candidate = amqp or (None if explicitly_off else DEFAULT_AMQP)
    if candidate and tcp_answers(candidate, 5672):
        parts = urlsplit(candidate)
        say(f"RabbitMQ: using {parts.hostname}:{parts.port or 5672}, queue {settings.amqp_queue!r}")
        export("AMQP_URL", candidate)
    else:
        say(
            "RabbitMQ: not reachable; running without the broker "
            "(workers claim from Postgres, woken by LISTEN/NOTIFY)"
        )
        export("AMQP_URL", "off")


if __name__ == "__main__":
    main()
