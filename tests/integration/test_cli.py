"""The `taskflow` command line as a user meets it, run as subprocesses: its
help, its exit codes, one-line errors instead of tracebacks, and log lines
that are text on a terminal and JSON otherwise."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from taskflow.cli import build_parser, exits
from taskflow.cli.exits import EXIT_CODES_HELP, ExitCode
from taskflow.cli.startup import database_unavailable
from tests.conftest import ADMIN_DSN
from tests.integration.ops_helpers import PYTHON, REPO_ROOT, subprocess_env, write_config

COMMANDS = (
    "api",
    "scheduler",
    "worker",
    "migrate",
    "up",
    "status",
    "tasks",
    "pause",
    "resume",
    "bench",
)
TASK_ID = "0194f9f2-6d3c-7c1e-9a4b-2f0e8d7c6b5a"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()


def run_taskflow(args: list[str], env: dict[str, str], *, timeout: float = 60) -> Run:
    result = subprocess.run(
        [PYTHON, "-m", "taskflow", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def run_taskflow_on_a_terminal(args: list[str], env: dict[str, str], *, timeout: float = 60) -> Run:
    """stderr is a pseudo-terminal, as when a person runs the command; stdout a pipe."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [PYTHON, "-m", "taskflow", *args],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
        )
    finally:
        os.close(follower)  # the child holds the only copy: EOF comes when it exits
    written = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                process.kill()
                raise AssertionError(f"taskflow {args} did not finish within {timeout}s")
            readable, _, _ = select.select([leader], [], [], remaining)
            if not readable:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(leader)
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    process.stdout.close()
    code = process.wait(timeout)
    # A terminal turns each "\n" into "\r\n".
    return Run(code, stdout, written.decode().replace("\r\n", "\n"))


@pytest.fixture
def env(database: str, tmp_path: Path) -> dict[str, str]:
    """For the test database; no log format, so the command chooses its own."""
    config = write_config(tmp_path, lease_seconds=2)
    environment = subprocess_env(database, config, tmp_path / "files")
    del environment["TASKFLOW_LOG_FORMAT"]
    return environment


# ----- help


async def test_help_lists_every_command_with_a_summary_examples_and_exit_codes(
    env: dict[str, str],
) -> None:
    shown = await asyncio.to_thread(run_taskflow, ["--help"], env)
    assert shown.code == 0, shown.stderr
    out = shown.stdout
    assert out.startswith("usage: taskflow ")
    assert "TaskFlow is a task queue on PostgreSQL" in out
    assert "settings are loaded here" not in out  # no note meant for developers
    listed = re.findall(r"^    (\w+) +\S.*$", out.split("\ncommands:\n", 1)[1], re.M)
    assert tuple(listed[: len(COMMANDS)]) == COMMANDS
    assert "\nexamples:\n  taskflow up\n" in out
    assert "  taskflow status --check\n" in out
    assert "\nexit codes:\n" in out
    for code in ExitCode:
        assert re.search(rf"^  {code.value}  {code.name.lower().replace('_', ' ')}\b", out, re.M)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command and subcommand, by its full name ("tasks retry")."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                found[name] = subparser
                found.update({f"{name} {sub}": p for sub, p in _commands(subparser).items()})
    return found


def test_every_command_describes_each_option_and_shows_examples() -> None:
    commands = _commands(build_parser())
    assert set(COMMANDS) | {"tasks show", "tasks retry", "tasks cancel"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description, name
        assert parser.epilog, name
        assert parser.epilog.startswith("examples:\n  taskflow "), name
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):  # each checked itself
                assert action.help, (name, action.dest)
                assert action.help != argparse.SUPPRESS, (name, action.dest)


def test_the_exit_code_table_is_one_text_in_help_and_docstring() -> None:
    assert exits.__doc__ is not None
    assert EXIT_CODES_HELP in exits.__doc__
    assert build_parser().epilog is not None
    assert build_parser().epilog.endswith("exit codes:\n" + EXIT_CODES_HELP)


# ----- exit codes


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nosuchcommand"],
        ["status", "--no-such-option"],
        ["tasks"],
        ["tasks", "show", "not-a-uuid"],
        ["tasks", "retry"],
        ["worker", "--concurrency", "many"],
    ],
)
async def test_a_bad_command_line_exits_2(env: dict[str, str], args: list[str]) -> None:
    result = await asyncio.to_thread(run_taskflow, args, env)
    assert result.code == 2, result
    assert result.stderr.startswith("usage: taskflow"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"lease_secs": 30}, "lease_secs: unknown key"),
        ({"lease_seconds": "soon"}, "lease_seconds"),
    ],
)
async def test_a_bad_config_json_exits_3_in_one_line_naming_the_key(
    env: dict[str, str], tmp_path: Path, config: dict[str, object], named: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(config))
    for args in (["status"], ["migrate"], ["worker", "--burst"]):
        result = await asyncio.to_thread(run_taskflow, args, {**env, "TASKFLOW_CONFIG": str(bad)})
        assert result.code == 3, (args, result)
        [line] = result.stderr_lines()
        assert line.startswith("taskflow: configuration error: "), line
        assert named in line


async def test_a_malformed_database_url_exits_3_without_its_password(
    env: dict[str, str],
) -> None:
    malformed = {**env, "DATABASE_URL": "postgresql://root:s3cret-pw@127.0.0.1:port/x"}
    for args in (["status"], ["migrate", "--create-database"], ["worker", "--burst"]):
        result = await asyncio.to_thread(run_taskflow, args, malformed)
        assert result.code == 3, (args, result)
        [line] = result.stderr_lines()
        assert line.startswith("taskflow: configuration error: DATABASE_URL"), line
        assert "s3cret" not in line


MISSING_DATABASE = f"taskflow_missing_{uuid.uuid4().hex[:8]}"
UNAVAILABLE = {
    "wrong port": (
        "postgresql://root@127.0.0.1:1/taskflow",
        "127.0.0.1:1/taskflow as root: ",
    ),
    "missing database": (
        ADMIN_DSN.rpartition("/")[0] + f"/{MISSING_DATABASE}",
        f'database "{MISSING_DATABASE}" does not exist '
        "(create it with `taskflow migrate --create-database`)",
    ),
    "unknown role": (
        "postgresql://taskflow_no_such_role@127.0.0.1:5432/postgres",
        'role "taskflow_no_such_role" does not exist (check POSTGRES_USER or DATABASE_URL)',
    ),
}
SERVICES = [
    ["migrate"],
    ["status"],
    ["tasks", "show", TASK_ID],
    ["tasks", "retry", TASK_ID],
    ["tasks", "cancel", TASK_ID],
    ["worker", "--burst", "--no-broker"],
    ["scheduler"],
    ["api", "--port", "1"],
]


@pytest.mark.parametrize("reason", sorted(UNAVAILABLE))
async def test_an_unreachable_database_exits_4_in_one_line(
    env: dict[str, str], reason: str
) -> None:
    dsn, says = UNAVAILABLE[reason]
    commands = [*SERVICES, ["up", "--port", "1"]] if reason != "missing database" else SERVICES
    if reason == "unknown role":
        commands = [*commands, ["migrate", "--create-database"]]
    for args in commands:
        result = await asyncio.to_thread(run_taskflow, args, {**env, "DATABASE_URL": dsn})
        assert result.code == 4, (args, result)
        assert result.stdout == "", (args, result.stdout)
        [line] = result.stderr_lines()
        assert line.startswith("taskflow: cannot "), (args, line)
        assert "Postgres at " in line
        assert says in line, (args, line)
    # Nothing was created along the way.
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        assert not await connection.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", MISSING_DATABASE
        )
    finally:
        await connection.close()


async def test_interrupted_while_starting_exits_130_without_a_traceback(
    env: dict[str, str],
) -> None:
    """SIGINT (Ctrl-C, or a supervisor stopping its group) while a service still
    waits for Postgres, before its own handler is installed."""
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(
        _reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        process = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "taskflow",
            "worker",
            env={**env, "DATABASE_URL": f"postgresql://root@127.0.0.1:{port}/taskflow"},
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        await asyncio.wait_for(connected.wait(), 30)
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert process.returncode == ExitCode.INTERRUPTED == 130
    assert "Traceback" not in stderr.decode(), stderr.decode()
    assert stdout == b""


def test_a_refused_login_names_where_and_as_whom_but_never_the_password() -> None:
    dsn = "postgresql://alice:s3cret-pw@db.example:6543/app"
    refused = database_unavailable(
        dsn, asyncpg.InvalidPasswordError('password authentication failed for user "alice"')
    )
    assert str(refused) == (
        "cannot connect to Postgres at db.example:6543/app as alice: password authentication "
        'failed for user "alice" (check POSTGRES_PASSWORD or DATABASE_URL)'
    )
    timed_out = database_unavailable("postgresql://db.example/app", TimeoutError())
    assert str(timed_out) == "cannot connect to Postgres at db.example:5432/app: TimeoutError"
    assert "s3cret" not in str(refused) + str(timed_out)


# ----- log lines


async def test_logs_are_text_on_a_terminal_and_json_when_piped(env: dict[str, str]) -> None:
    args = ["worker", "--burst", "--no-broker"]
    on_terminal = await asyncio.to_thread(run_taskflow_on_a_terminal, args, env)
    assert on_terminal.code == 0, on_terminal.stderr
    lines = on_terminal.stderr_lines()
    assert any(re.search(r" INFO +taskflow\.worker\.process: worker started \[", x) for x in lines)
    assert not [line for line in lines if line.startswith("{")], lines

    piped = await asyncio.to_thread(run_taskflow, args, env)
    assert piped.code == 0, piped.stderr
    entries = [json.loads(line) for line in piped.stderr_lines()]
    assert "worker started" in [entry["msg"] for entry in entries]
    assert {entry["component"] for entry in entries} == {"worker"}


async def test_a_configured_log_format_wins_over_the_terminal(env: dict[str, str]) -> None:
    for args, extra in (
        (["worker", "--burst", "--no-broker"], {"TASKFLOW_LOG_FORMAT": "json"}),
        (["worker", "--burst", "--no-broker", "--log-format", "json"], {}),
    ):
        result = await asyncio.to_thread(run_taskflow_on_a_terminal, args, {**env, **extra})
        assert result.code == 0, result.stderr
        entries = [json.loads(line) for line in result.stderr_lines()]
        assert "worker started" in [entry["msg"] for entry in entries]

    piped_text = await asyncio.to_thread(
        run_taskflow, ["worker", "--burst", "--no-broker", "--log-format", "text"], env
    )
    assert "taskflow.worker.process: worker started [" in piped_text.stderr


async def test_operator_commands_print_their_answer_and_no_log_lines(
    env: dict[str, str],
) -> None:
    for args in (["status"], ["status", "--check"], ["tasks", "show", TASK_ID]):
        result = await asyncio.to_thread(run_taskflow_on_a_terminal, args, env)
        assert result.code in (0, 1), result
        assert result.stderr in ("", f"taskflow: no task {TASK_ID}\n"), result.stderr
