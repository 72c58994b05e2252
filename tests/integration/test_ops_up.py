"""The README's first command, `./ops/up`, from a clean clone of this commit.

Each test clones HEAD into a temporary directory and runs that clone's
./ops/up as a new user would, with nothing configured: once with the local
Postgres and RabbitMQ (a fresh database and queue of the test's own), once
with neither reachable, so it starts an embedded Postgres in the test's
state directory and runs without the broker. Both answer the seed README's
register call, exactly as written but for the port, and stop every process
they started when told to.

The clone is given a virtualenv of its own whose packages are this venv's
(a `.pth` line): nothing is downloaded when this venv is current, and should
the clone's ops/lib.sh decide to install anyway, it installs into that
throwaway venv, never into the one these tests run in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import ADMIN_DSN, AMQP_URL, RUN_ID, dsn_for
from tests.integration.test_seed_curl import REGISTER
from tests.processes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
# What a user's shell could carry that would configure TaskFlow.
CONFIGURING = ("POSTGRES_", "AMQP_", "MAIL_", "TASKFLOW_")
UNSET = {"DATABASE_URL", "SECRET_KEY", "NUMOFWORKERS", "BASE_FILE_PATH", "PORT", "PYTHONPATH"}


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clean clone of the commit checked out here (uncommitted changes stay behind)."""
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-checkout", str(REPO_ROOT), str(target)], check=True
    )
    subprocess.run(["git", "-C", str(target), "checkout", "--quiet", head], check=True)
    return target


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv that sees every package of the one running the tests, and its stamp."""
    path = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    [site_packages] = path.glob("lib/python*/site-packages")
    # addsitedir, not a bare path line: it also runs the .pth files found there.
    (site_packages / "zz_tested_venv.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n"
    )
    stamp = Path(sys.prefix) / ".taskflow-install"
    if stamp.is_file():
        shutil.copy(stamp, path / stamp.name)
    return path


def user_environment(venv: Path, state: Path, port: int, **settings: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(CONFIGURING) and key not in UNSET
    }
    env.update(TASKFLOW_VENV=str(venv), TASKFLOW_STATE_DIR=str(state), PORT=str(port))
    env.update(settings)
    return env


def processes() -> dict[int, tuple[int, int, str]]:
    """pid → (parent pid, process group, state letter) for every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat.rpartition(")")[2].split()
        found[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return found


def descendants(root: int) -> set[int]:
    table = processes()
    family = {root}
    while True:
        children = {pid for pid, (parent, _, _) in table.items() if parent in family} - family
        if not children:
            return family - {root}
        family |= children


def still_running(pids: set[int], group: int) -> set[int]:
    """Those of ``pids`` not yet exited, and anything left in the process group."""
    return {
        pid
        for pid, (_, pgid, state) in processes().items()
        if (pid in pids or pgid == group) and state != "Z"
    }


class OpsUp:
    """./ops/up of a clone, in a process group of its own, output to a file."""

    def __init__(self, clone: Path, env: dict[str, str], log_path: Path) -> None:
        self.port = int(env["PORT"])
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["./ops/up"],
                cwd=clone,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"./ops/up exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no API after {timeout}s:\n{self.output()}"
            try:
                url = f"http://127.0.0.1:{self.port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)

    def stop(self, signum: int, *, whole_group: bool, timeout: float = 60) -> int:
        """Signal it as a terminal's Ctrl-C (the whole group) or `kill` (its pid) does;
        return its exit code once it and every process it started have exited."""
        started = descendants(self.process.pid)
        assert started, f"./ops/up started no process:\n{self.output()}"
        if whole_group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"./ops/up still running after {timeout}s:\n{self.output()}"
            ) from None
        deadline = time.monotonic() + 15
        while left := still_running(started, self.process.pid):
            assert time.monotonic() < deadline, f"left running: {left}\n{self.output()}"
            time.sleep(0.1)
        return code

    def kill(self) -> None:
        """Whatever happened, leave nothing of it running."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@contextmanager
def running_ops_up(clone: Path, env: dict[str, str], log_path: Path) -> Iterator[OpsUp]:
    ops_up = OpsUp(clone, env, log_path)
    try:
        yield ops_up
    finally:
        ops_up.kill()


def register_as_the_seed_does(port: int, curl_home: Path) -> tuple[int, Any]:
    """The seed README's register command, run by bash, on the test's port."""
    result = subprocess.run(
        ["bash", "-c", REGISTER.replace("localhost:8080", f"localhost:{port}")],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CURL_HOME": str(curl_home)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body) if body else None


@pytest.fixture
def curl_home(tmp_path: Path) -> Path:
    home = tmp_path / "curl-home"
    home.mkdir()
    (home / ".curlrc").write_text('silent\nshow-error\nwrite-out = "\\n%{http_code}"\n')
    return home


@pytest.fixture
async def database_name() -> AsyncIterator[str]:
    """A database name nobody has used: ./ops/up creates it, the test drops it."""
    name = f"taskflow_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    yield name
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def postmaster(pgdata: Path) -> tuple[int, str]:
    """The running server's pid and the DSN of its `taskflow` database, from the
    lines of postmaster.pid: pid, data directory, start time, port, socket directory."""
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    return int(lines[0]), f"postgresql://postgres@/taskflow?host={lines[4]}&port={lines[3]}"


def stop_embedded_postgres(pgdata: Path) -> None:
    """Leave no embedded server behind, should ./ops/up have failed to stop it."""
    if not (pgdata / "postmaster.pid").is_file():
        return
    pid, _ = postmaster(pgdata)
    try:
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown: it is the test's own
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while pid in still_running({pid}, -1) and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.timeout(300)
async def test_ops_up_with_the_local_services_answers_the_seed_register_call(
    clone: Path,
    venv: Path,
    tmp_path: Path,
    curl_home: Path,
    database_name: str,
    queue_name: str,
) -> None:
    state = tmp_path / "state"
    env = user_environment(
        venv,
        state,
        free_port(),
        DATABASE_URL=dsn_for(database_name),
        AMQP_URL=AMQP_URL,
        AMQP_QUEUE=queue_name,
    )
    with running_ops_up(clone, env, tmp_path / "ops-up.log") as ops_up:
        ops_up.wait_until_serving(timeout=120)
        status, body = register_as_the_seed_does(ops_up.port, curl_home)
        assert status == 201, (body, ops_up.output())
        assert set(body) == {"user_id"}
        code = ops_up.stop(signal.SIGINT, whole_group=True)
    output = ops_up.output()
    assert code == 0, output
    assert f"Postgres: using 127.0.0.1:5432/{database_name}" in output
    assert f"RabbitMQ: using 127.0.0.1:5672, queue '{queue_name}'" in output
    assert f"generated a local one in {state / 'secret_key'}" in output
    assert "Traceback" not in output
    # The user went into the database it was given, created by ./ops/up.
    connection = await asyncpg.connect(dsn_for(database_name))
    try:
        email = await connection.fetchval("SELECT email FROM users WHERE id = $1", body["user_id"])
    finally:
        await connection.close()
    assert email == "example@example.com"


@pytest.mark.timeout(300)
async def test_ops_up_without_postgres_or_rabbitmq_starts_an_embedded_postgres(
    clone: Path, venv: Path, tmp_path: Path, curl_home: Path
) -> None:
    state = tmp_path / "state"
    closed_postgres, closed_rabbitmq = free_port(), free_port()
    env = user_environment(
        venv,
        state,
        free_port(),
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT=str(closed_postgres),
        AMQP_HOST="127.0.0.1",
        AMQP_PORT=str(closed_rabbitmq),
    )
    pgdata = state / "pg"
    try:
        with running_ops_up(clone, env, tmp_path / "ops-up.log") as ops_up:
            # First start: initdb, then the server (tens of seconds on a busy machine).
            ops_up.wait_until_serving(timeout=240)
            status, body = register_as_the_seed_does(ops_up.port, curl_home)
            assert status == 201, (body, ops_up.output())
            assert set(body) == {"user_id"}
            # The user went into the embedded server.
            server_pid, dsn = postmaster(pgdata)
            connection = await asyncpg.connect(dsn, timeout=10)
            try:
                email = await connection.fetchval(
                    "SELECT email FROM users WHERE id = $1", body["user_id"]
                )
            finally:
                await connection.close()
            assert email == "example@example.com"
            code = ops_up.stop(signal.SIGTERM, whole_group=False)
        output = ops_up.output()
        assert code == 0, output
        assert (
            f"Postgres: none reachable at 127.0.0.1:{closed_postgres}; "
            f"started an embedded one in {pgdata}"
        ) in output
        assert "RabbitMQ: not reachable; running without the broker" in output
        assert "Traceback" not in output
        # The embedded server went with it (its data stays for the next start).
        deadline = time.monotonic() + 15
        while still_running({server_pid}, -1) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not still_running({server_pid}, -1), f"embedded Postgres left running:\n{output}"
        assert (pgdata / "PG_VERSION").is_file()
    finally:
        stop_embedded_postgres(pgdata)
