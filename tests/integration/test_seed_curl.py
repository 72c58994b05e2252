"""The seed README's five curl examples, run verbatim against a real server.

A real ``taskflow api`` subprocess (uvicorn) serves a fresh database and a fresh
RabbitMQ queue. The commands are the README's text with only ``localhost:8080``,
``your_token`` and ``task_id`` replaced. To see each status code without
touching a command, curl reads a ``.curlrc`` (through ``CURL_HOME``) that adds
``--silent --write-out``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from tests.conftest import AMQP_URL, TEST_SECRET
from tests.integration.api_helpers import picked, task_row
from tests.stores import Store

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_README = REPO_ROOT.parent / "shared" / "seed" / "000_b2df771ad2789501.txt"

# Copied from the seed README's "API-примеры (curl)" section, in its order.
REGISTER = """curl -X POST http://localhost:8080/api/register \\
-H "Content-Type: application/json" \\
-d '{"email": "example@example.com", "password": "example"}'"""
LOGIN = """curl -X POST http://localhost:8080/api/login \\
-H "Content-Type: application/json" \\
-d '{"email": "example@example.com", "password": "example"}'"""
LIST = """curl -X GET http://localhost:8080/api/tasks \\
-H "Authorization: your_token\""""
GET = """curl -X GET http://localhost:8080/api/tasks/task_id \\
-H "Authorization: your_token\""""
CREATE = """curl -X POST http://localhost:8080/api/tasks \\
-H "Authorization: your_token" \\
-H "Content-Type: application/json" \\
-d '{
  "type": "download_files",
  "payload": {
    "urls": ["https://go.dev/"]
  },
  "max_retries": 3,
  "run_at": "2025-06-03T12:50:50Z"
}'"""
SEED_COMMANDS = [REGISTER, LOGIN, LIST, GET, CREATE]


def _seed_commands(text: str) -> list[str]:
    """The ```bash blocks of the README's curl section, list indentation removed."""
    section = text.split("## API-примеры (curl)", 1)[1]
    commands = []
    for indent, body in re.findall(r"\n( *)```bash\n(.*?)\n *```", section, re.S):
        lines = [line.removeprefix(indent) for line in body.split("\n")]
        commands.append("\n".join(lines))
    return commands


def test_the_commands_here_are_the_seed_readme_s() -> None:
    # shared/ sits beside the repository on developers' machines and in CI.
    if SEED_README.is_file():
        assert _seed_commands(SEED_README.read_text(encoding="utf-8")) == SEED_COMMANDS


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def api_server(database: str, queue_name: str, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``taskflow api`` in a subprocess; yields its port once /healthz answers."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "AMQP_"))}
    env.update(
        DATABASE_URL=database,
        SECRET_KEY=TEST_SECRET,
        AMQP_URL=AMQP_URL,
        AMQP_QUEUE=queue_name,
        TASKFLOW_ENV_FILE="/nonexistent",
        BASE_FILE_PATH=str(tmp_path / "files"),
    )
    env.pop("TASKFLOW_CONFIG", None)
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskflow", "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"the API exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no /healthz:\n{log_path.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        yield port, log_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # A clean shutdown (uvicorn re-raises the SIGTERM it handled, hence -15),
    # and no traceback in the log.
    assert process.returncode in (0, -signal.SIGTERM), log_path.read_text()
    assert "Traceback" not in log_path.read_text()


def _curl(command: str, curl_home: Path) -> tuple[int, Any]:
    """Run one command with bash; return (status code, decoded JSON body)."""
    result = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CURL_HOME": str(curl_home)},
        check=False,
    )
    assert result.returncode == 0, (command, result.stderr)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body) if body else None


@pytest.fixture
def curl_home(tmp_path: Path) -> Path:
    home = tmp_path / "curl-home"
    home.mkdir()
    (home / ".curlrc").write_text('silent\nshow-error\nwrite-out = "\\n%{http_code}"\n')
    return home


async def test_seed_readme_curl_examples_verbatim(
    api_server: tuple[int, Path], curl_home: Path, store: Store, queue_name: str
) -> None:
    port, _ = api_server

    def run(command: str, **replace: str) -> tuple[int, Any]:
        command = command.replace("localhost:8080", f"localhost:{port}")
        for old, new in replace.items():
            command = command.replace(old, new)
        return _curl(command, curl_home)

    # 1. Registration
    status, body = run(REGISTER)
    assert status == 201, body
    assert set(body) == {"user_id"}
    user = await store.pool.fetchrow("SELECT id, email FROM users WHERE id = $1", body["user_id"])
    assert user["email"] == "example@example.com"

    # 2. Login: the token goes as is into the Authorization header.
    status, body = run(LOGIN)
    assert status == 200, body
    token = body["token"]
    assert token.startswith("Bearer ")
    assert token == f"Bearer {body['access_token']}"

    # 3. The user's tasks: none yet.
    status, body = run(LIST, your_token=token)
    assert (status, body) == (200, [])

    # 5. Create a task (run_at is in the past by now: it is queued at once).
    status, created = run(CREATE, your_token=token)
    assert status == 201, created
    assert created["type"] == "download_files"
    assert created["payload"] == {"urls": ["https://go.dev/"]}
    assert created["max_retries"] == 3
    assert created["run_at"] == "2025-06-03T12:50:50Z"
    assert created["status"] == "queued"
    assert created["user_id"] == user["id"]
    assert (await task_row(store, created["id"]))["status"] == "queued"
    assert await picked(store) == [created["id"]]

    # 4. Get it by the id the creation returned.
    status, body = run(GET, your_token=token, task_id=created["id"])
    assert (status, body) == (200, created)
    UUID(body["id"])

    status, body = run(LIST, your_token=token)
    assert (status, body) == (200, [created])


async def test_real_server_refuses_bad_requests_with_json(
    api_server: tuple[int, Path], curl_home: Path, tmp_path: Path, store: Store
) -> None:
    port, _ = api_server
    base = f"http://127.0.0.1:{port}"
    huge = tmp_path / "huge.json"
    huge.write_bytes(b'{"email": "' + b"x" * (3 * 1024 * 1024) + b'"}')
    before = await store.pool.fetchval("SELECT count(*) FROM users")
    cases = [
        (f"curl -X POST {base}/api/register --data-binary @{huge}", 413),
        # Chunked, so no Content-Length to refuse it up front.
        (
            f"curl -X POST {base}/api/register -H 'Transfer-Encoding: chunked' "
            f"--data-binary @{huge}",
            413,
        ),
        (f"curl -X POST {base}/api/register -d '{{\"email\": '", 400),
        (f"curl -X POST {base}/api/login -d '[]'", 400),
        (f"curl {base}/nowhere", 404),
        (f"curl -X DELETE {base}/api/register", 405),
        (f"curl {base}/api/tasks", 401),
        (f"curl {base}/api/tasks -H 'Authorization: Bearer x.y.z'", 401),
    ]
    for command, expected in cases:
        status, body = _curl(command, curl_home)
        assert status == expected, (command, body)
        assert isinstance(body.get("error"), str), (command, body)
    assert await store.pool.fetchval("SELECT count(*) FROM users") == before
    status, body = _curl(f"curl {base}/readyz", curl_home)
    assert (status, body["checks"]) == (200, {"postgres": "ok", "rabbitmq": "ok"})
