"""A real worker process: SIGTERM drains it (finish what fits in the grace
period, hand the rest back without burning an attempt, deregister)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from taskflow.broker import Broker
from taskflow.enqueue import new_task_id
from taskflow.store.tasks import NewTask
from tests.conftest import AMQP_URL, new_user, wait_until
from tests.processes import Component, component_env
from tests.stores import Store


async def test_sigterm_drains_then_hands_back(
    store: Store, database: str, queue_name: str, tmp_path: Path
) -> None:
    user_id = await new_user(store)
    env = component_env(
        tmp_path,
        database,
        queue=queue_name,
        tunables={"shutdown_grace_seconds": 2.5, "lease_seconds": 30},
    )
    worker = Component("worker", ["worker", "--concurrency", "4"], env, tmp_path / "logs")
    try:
        await wait_until(lambda: _registered(store), timeout=20, what="worker registered")
        short = [NewTask(new_task_id(), "test_sleep", {"seconds": 1}, 0, 3, None) for _ in range(2)]
        long = NewTask(new_task_id(), "test_sleep", {"seconds": 120}, 0, 3, None)
        rows = await store.insert_tasks(user_id, [*short, long])
        # Published ids reach the worker through RabbitMQ.
        broker = Broker(AMQP_URL, queue_name)
        broker.start()
        assert await broker.wait_connected(5)
        assert await broker.publish_ids([row["id"] for row in rows])
        await broker.close()

        async def three_running() -> bool:
            count = await store.pool.fetchval(
                "SELECT count(*) FROM tasks WHERE status = 'processing'"
            )
            return bool(count == 3)

        await wait_until(three_running, timeout=15, what="three tasks running")
        code = await asyncio.to_thread(worker.terminate, 30)
    finally:
        if worker.alive():
            worker.kill()
    assert code == 0, worker.output()
    statuses = {
        row["id"]: (row["status"], row["attempts"])
        for row in await store.pool.fetch("SELECT id, status, attempts FROM tasks")
    }
    assert [statuses[task.id] for task in short] == [("done", 1), ("done", 1)]
    assert statuses[long.id] == ("queued", 0)  # handed back; the attempt does not count
    events = await store.pool.fetch(
        "SELECT event, from_status, to_status FROM task_history WHERE task_id = $1 ORDER BY id",
        long.id,
    )
    assert [e["event"] for e in events] == ["created", "claimed", "handed_back"]
    stopped = await store.pool.fetchval("SELECT stopped_at FROM workers")
    assert stopped is not None
    assert "handed back unfinished tasks" in worker.output()


async def _registered(store: Store) -> bool:
    return bool(await store.pool.fetchval("SELECT count(*) FROM workers"))
