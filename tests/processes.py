"""Real TaskFlow processes for tests: `python -m taskflow <component>` with an
environment and a config.json of the test's own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import AMQP_URL, TEST_SECRET

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def component_env(
    directory: Path,
    dsn: str,
    *,
    queue: str | None,
    tunables: dict[str, Any] | None = None,
    **extra: str,
) -> dict[str, str]:
    """Environment for a component process; tunables go into its own config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.json"
    config.write_text(json.dumps(tunables or {}))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TASKFLOW_", "AMQP_", "POSTGRES_", "MAIL_"))
    }
    env.update(
        DATABASE_URL=dsn,
        AMQP_URL=AMQP_URL if queue else "off",
        AMQP_QUEUE=queue or "tasks",
        SECRET_KEY=TEST_SECRET,
        BASE_FILE_PATH=str(directory / "files"),
        TASKFLOW_PLUGINS="tests.plugins:TASK_TYPES",
        TASKFLOW_ENV_FILE="/nonexistent/.env",
        TASKFLOW_CONFIG=str(config),
        TASKFLOW_LOG_FORMAT="text",
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


class Component:
    """One running `taskflow` process whose output goes to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskflow", *args],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    def terminate(self, timeout: float = 30) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"{self.name} did not stop within {timeout}s") from None
        finally:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_http(url: str, timeout: float = 20) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")
