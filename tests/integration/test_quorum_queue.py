"""AMQP_QUEUE_TYPE=quorum (SPEC §10): RabbitMQ's replicated queue type, which
runs on a single node too. Tasks flow through it as through a classic one,
and a queue keeps the type it was made with."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from taskflow.config import load_settings
from taskflow.enqueue import Enqueuer
from taskflow.handlers import build_registry
from taskflow.models import TaskCreate
from tests.conftest import make_settings, new_user, running_scheduler, running_worker, wait_until
from tests.stores import Store


def _queue_type(name: str) -> str | None:
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for line in listed.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return fields[1]
    return None


def test_the_queue_type_is_read_from_the_environment() -> None:
    environ = {
        "DATABASE_URL": "postgresql://x@h/d",
        "SECRET_KEY": "k" * 32,
        "AMQP_QUEUE_TYPE": "quorum",
        "TASKFLOW_ENV_FILE": "/nonexistent/.env",
    }
    assert load_settings(environ).amqp_queue_type == "quorum"


async def test_tasks_run_through_a_quorum_queue(
    database: str, queue_name: str, tmp_path: Path, store: Store
) -> None:
    settings = make_settings(
        database, queue=queue_name, files=tmp_path / "files", amqp_queue_type="quorum"
    )
    user = await new_user(store)
    enqueuer = Enqueuer(store, build_registry(settings))
    async with running_scheduler(settings) as scheduler, running_worker(settings, concurrency=4):
        # Once the dispatcher has seen the worker (it reads the live slots
        # every second), more than its slots at once: the rest go by RabbitMQ.
        await asyncio.sleep(1.5)
        rows = await enqueuer.create_many(
            user, [TaskCreate(type="test_noop", payload={"n": n}) for n in range(300)]
        )
        ids = [row["id"] for row in rows]

        async def all_done() -> bool:
            done = await store.pool.fetchval(
                "SELECT count(*) FROM tasks WHERE id = ANY($1) AND status = 'done'", ids
            )
            return bool(done == len(ids))

        await wait_until(all_done, timeout=30, what="the tasks through the quorum queue")
        # Ids went through RabbitMQ, not only the workers' Postgres path.
        assert scheduler.dispatcher is not None
        assert scheduler.dispatcher.dispatched > 0
    assert await asyncio.to_thread(_queue_type, queue_name) == "quorum"
