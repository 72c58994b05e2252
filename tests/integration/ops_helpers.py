"""Shared by the operator tests (test_ops_sql.py, test_status_cli.py): a fast
engine configuration without a broker, task creation through the real
Enqueuer, and the environment a TaskFlow subprocess needs for the test database."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from taskflow.config import Settings
from taskflow.enqueue import Enqueuer
from taskflow.handlers import build_registry
from taskflow.models import TaskCreate
from tests.conftest import TEST_SECRET, make_settings
from tests.stores import Store

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

FAST: dict[str, Any] = {
    "scheduler_interval_ms": 50,
    "lease_seconds": 2,
    "retry_backoff_base_ms": 100,
    "retry_backoff_max_ms": 1000,
    "shutdown_grace_seconds": 1,
    "worker_poll_interval_ms": 100,
}


def fast_settings(database: str, tmp_path: Path, **overrides: Any) -> Settings:
    """No broker: workers claim from Postgres, woken by NOTIFY."""
    return make_settings(database, queue=None, files=tmp_path / "files", **{**FAST, **overrides})


async def create(
    store: Store,
    settings: Settings,
    user_id: int,
    task_type: str,
    payload: dict[str, Any],
    **fields: Any,
) -> uuid.UUID:
    enqueuer = Enqueuer(store, build_registry(settings))
    row, _ = await enqueuer.create(user_id, TaskCreate(type=task_type, payload=payload, **fields))
    task_id: uuid.UUID = row["id"]
    return task_id


def all_in(store: Store, ids: Sequence[uuid.UUID], status: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        count = await store.pool.fetchval(
            "SELECT count(*) FROM tasks WHERE id = ANY($1) AND status = $2", list(ids), status
        )
        return bool(count == len(ids))

    return check


async def expire_lease(store: Store, task_id: uuid.UUID) -> None:
    """What a dead worker leaves behind: its lease runs out."""
    await store.pool.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1", task_id
    )


def write_config(directory: Path, **values: Any) -> Path:
    path = directory / "config.json"
    path.write_text(json.dumps(values))
    return path


def subprocess_env(database: str, config: Path, files: Path) -> dict[str, str]:
    """What `python -m taskflow ...` needs to use the test database and only it."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": database,
        "AMQP_URL": "off",
        "SECRET_KEY": TEST_SECRET,
        "TASKFLOW_ENV_FILE": "/nonexistent/.env",
        "TASKFLOW_CONFIG": str(config),
        "TASKFLOW_PLUGINS": "tests.plugins:TASK_TYPES",
        "TASKFLOW_LOG_FORMAT": "text",
        "BASE_FILE_PATH": str(files),
        "PYTHONPATH": str(REPO_ROOT),
    }
