"""Find (or start) the Postgres and RabbitMQ for ./ops/up, then run `taskflow up`.

Says in one line each what it found:
Postgres: the configured one (DATABASE_URL / POSTGRES_*, default 127.0.0.1:5432)
if it answers, else an embedded server (the pgserver package) under .state/pg
(TASKFLOW_STATE_DIR), stopped again when `taskflow up` ends.
RabbitMQ: the configured one (AMQP_URL / AMQP_*, default 127.0.0.1:5672) if it
answers, else none: workers then claim from Postgres, woken by LISTEN/NOTIFY.

Usage: devstack.py PORT [taskflow up options...]
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import asyncpg

from taskflow.config import REPO_ROOT, load_settings

STATE = Path(os.environ.get("TASKFLOW_STATE_DIR", REPO_ROOT / ".state"))
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
    # "stop": pgserver stops the server when the last process holding it exits
    # (this one, after `taskflow up`), so Ctrl-C leaves nothing running; the
    # data stays under STATE for the next start.
    server = pgserver.get_server(STATE / "pg", cleanup_mode="stop")
    base = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
    parts = urlsplit(base)
    return parts._replace(path="/taskflow").geturl()


def find_services(env: dict[str, str]) -> bool:
    """Set DATABASE_URL and AMQP_URL in ``env``; True if an embedded Postgres was started."""
    settings = load_settings()
    dsn = settings.database_url.get_secret_value()
    shown = urlsplit(dsn)
    embedded = not asyncio.run(postgres_answers(dsn))
    if embedded:
        dsn = embedded_postgres()
        say(
            f"Postgres: none reachable at {shown.hostname}:{shown.port or 5432}; "
            f"started an embedded one in {STATE / 'pg'}"
        )
    else:
        say(f"Postgres: using {shown.hostname or 'socket'}:{shown.port or 5432}{shown.path}")
    env["DATABASE_URL"] = dsn

    amqp = settings.amqp_url.get_secret_value() if settings.amqp_url else None
    explicitly_off = os.environ.get("AMQP_URL", "x").strip().lower() in ("off", "none", "")
    candidate = amqp or (None if explicitly_off else DEFAULT_AMQP)
    if candidate and tcp_answers(candidate, 5672):
        parts = urlsplit(candidate)
        say(f"RabbitMQ: using {parts.hostname}:{parts.port or 5672}, queue {settings.amqp_queue!r}")
        env["AMQP_URL"] = candidate
    else:
        say(
            "RabbitMQ: not reachable; running without the broker "
            "(workers claim from Postgres, woken by LISTEN/NOTIFY)"
        )
        env["AMQP_URL"] = "off"
    return embedded


def run_until_done(command: list[str], env: dict[str, str]) -> int:
    """Run ``command``, passing on the signals that stop it, and wait for it."""
    received: list[int] = []
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        for child in children:
            child.send_signal(signum)

    # Handlers first: a Ctrl-C that comes while the child starts must reach it
    # rather than end this process (which would stop Postgres under it).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    child = subprocess.Popen(command, env=env)  # noqa: S603
    children.append(child)
    for signum in received:
        child.send_signal(signum)
    return child.wait()


def main(argv: list[str]) -> int:
    port, *up_options = argv
    env = dict(os.environ)
    embedded = find_services(env)
    say(f"API: http://localhost:{port}   (Ctrl-C stops everything)")
    say(
        f"Try: curl -X POST http://localhost:{port}/api/register "
        "-H 'Content-Type: application/json' "
        """-d '{"email": "example@example.com", "password": "example"}'"""
    )
    command = [sys.executable, "-m", "taskflow", "up", "--port", port, *up_options]
    if not embedded:
        os.execve(sys.executable, command, env)  # noqa: S606 - nothing to stop afterwards
    return run_until_done(command, env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
