"""Fair share and limits with real workers (SPEC §8): who runs next is
decided in Postgres, with RabbitMQ on; the caps hold across worker processes
and nothing is left stuck; the email rate delays tasks, never fails them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from uuid import UUID

import pytest

from taskflow import dispatcher
from taskflow.enqueue import Enqueuer, new_task_id
from taskflow.handlers import build_registry
from taskflow.models import TaskCreate
from taskflow.store.tasks import NewTask
from tests import servers
from tests.conftest import (
    make_settings,
    new_user,
    published_ids,
    running_scheduler,
    running_worker,
    wait_until,
)
from tests.processes import Component, component_env
from tests.servers import SMTPTestServer
from tests.stores import Store

smtp_server = servers.smtp_server

HANDLER_SECONDS = 0.05
# SPEC §8: B's task starts within 1 s plus one handler's duration. The slack
# is for a loaded CI machine, not for the design.
FAIRNESS_SLACK_SECONDS = 0.5


def _sleepers(count: int, seconds: float, priority: int = 0) -> list[NewTask]:
    return [
        NewTask(new_task_id(), "test_sleep", {"seconds": seconds}, priority, 3, None)
        for _ in range(count)
    ]


async def _status_counts(store: Store, user_id: int) -> dict[str, int]:
    rows = await store.pool.fetch(
        "SELECT status::text, count(*) FROM tasks WHERE user_id = $1 GROUP BY 1", user_id
    )
    return {row[0]: row[1] for row in rows}


async def test_a_newcomer_runs_within_a_second_while_another_user_has_a_backlog(
    store: Store, database: str, queue_name: str, tmp_path: Path
) -> None:
    settings = make_settings(database, queue=queue_name, files=tmp_path / "files")
    heavy = await new_user(store, "heavy@example.com")
    light = await new_user(store, "light@example.com")
    await store.insert_tasks(heavy, _sleepers(1000, HANDLER_SECONDS))
    enqueuer = Enqueuer(store, build_registry(settings))
    async with (
        running_scheduler(settings),
        running_worker(settings, concurrency=4),
        running_worker(settings, concurrency=4),
    ):

        async def heavy_running() -> bool:
            return (await _status_counts(store, heavy)).get("done", 0) >= 50

        await wait_until(heavy_running, timeout=30, what="the heavy user's backlog draining")
        latencies = []
        for _ in range(5):
            row, _ = await enqueuer.create(
                light, TaskCreate(type="test_sleep", payload={"seconds": HANDLER_SECONDS})
            )

            async def started(task_id: UUID = row["id"]) -> bool:
                status = await store.pool.fetchval(
                    "SELECT status FROM tasks WHERE id = $1", task_id
                )
                return status in ("processing", "done")

            await wait_until(started, timeout=10, what="the light user's task starting")
            waited = await store.pool.fetchval(
                "SELECT extract(epoch FROM started_at - created_at) FROM tasks WHERE id = $1",
                row["id"],
            )
            latencies.append(float(waited))
            backlog = (await _status_counts(store, heavy)).get("queued", 0)
            assert backlog > 300, "the heavy user's backlog should still be there"
            await asyncio.sleep(0.2)
    print(f"\nthe light user's tasks started after {[round(x, 3) for x in latencies]} s")
    assert max(latencies) <= 1 + HANDLER_SECONDS + FAIRNESS_SLACK_SECONDS, latencies


async def test_priority_orders_a_users_own_tasks_with_the_broker_on(
    store: Store, database: str, queue_name: str, tmp_path: Path
) -> None:
    settings = make_settings(database, queue=queue_name, files=tmp_path / "files")
    user = await new_user(store)
    await store.insert_tasks(user, _sleepers(400, 0.02))
    async with running_scheduler(settings), running_worker(settings, concurrency=4):

        async def under_way() -> bool:
            return (await _status_counts(store, user)).get("done", 0) >= 20

        await wait_until(under_way, timeout=30, what="the first tasks done")
        urgent = await store.insert_tasks(user, _sleepers(10, 0.02, priority=10))
        inserted_at = await store.pool.fetchval("SELECT now()")
        waiting_then = (await _status_counts(store, user)).get("queued", 0)

        async def urgent_started() -> bool:
            count = await store.pool.fetchval(
                "SELECT count(*) FROM tasks WHERE id = ANY($1) AND started_at IS NOT NULL",
                [row["id"] for row in urgent],
            )
            return bool(count == len(urgent))

        await wait_until(urgent_started, timeout=20, what="the urgent tasks started")
        last_urgent = await store.pool.fetchval(
            "SELECT max(started_at) FROM tasks WHERE id = ANY($1)", [row["id"] for row in urgent]
        )
        overtaken = await store.pool.fetchval(
            "SELECT count(*) FROM tasks WHERE user_id = $1 AND priority = 0 "
            "AND started_at > $2 AND started_at < $3",
            user,
            inserted_at,
            last_urgent,
        )
    # Only what was already on its way (the window, a few slots' worth) ran
    # before them, not the priority-0 backlog.
    assert waiting_then > 200
    assert overtaken < 60, (overtaken, waiting_then)


@pytest.fixture
def capped_env(database: str, queue_name: str, tmp_path: Path) -> dict[str, str]:
    return component_env(
        tmp_path,
        database,
        queue=queue_name,
        tunables={"type_max_running": {"test_sleep": 4}, "lease_seconds": 5},
    )


async def test_the_caps_hold_across_worker_processes_and_nothing_is_stuck(
    store: Store, capped_env: dict[str, str], tmp_path: Path
) -> None:
    capped = await new_user(store, "capped@example.com")
    sleepy = await new_user(store, "sleepy@example.com")
    quick = await new_user(store, "quick@example.com")
    await store.pool.execute(
        "INSERT INTO user_limits (user_id, max_running) VALUES ($1, 3)", capped
    )
    await store.insert_tasks(
        capped,
        [NewTask(new_task_id(), "test_noop", {}, 0, 3, None) for _ in range(60)]
        + _sleepers(10, 0.05),
    )
    await store.insert_tasks(sleepy, _sleepers(40, 0.05))
    await store.insert_tasks(
        quick, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None) for _ in range(100)]
    )
    logs = tmp_path / "logs"
    components = [Component("scheduler", ["scheduler"], capped_env, logs)] + [
        Component(f"worker-{i}", ["worker", "--concurrency", "4"], capped_env, logs)
        for i in range(3)
    ]
    peaks: dict[str, int] = {"capped": 0, "test_sleep": 0}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            row = await store.pool.fetchrow(
                "SELECT count(*) FILTER (WHERE user_id = $1) AS capped, "
                "count(*) FILTER (WHERE type = 'test_sleep') AS test_sleep, "
                "(SELECT count(*) FROM tasks WHERE status <> 'done') AS unfinished "
                "FROM tasks WHERE status = 'processing'",
                capped,
            )
            peaks = {key: max(peaks[key], row[key]) for key in peaks}
            if row["unfinished"] == 0:
                break
            await asyncio.sleep(0.01)
        unfinished = await store.pool.fetchval("SELECT count(*) FROM tasks WHERE status <> 'done'")
    finally:
        for component in components:
            if component.alive():
                component.terminate()
    assert unfinished == 0, "every task done: none stuck behind a cap"
    assert 1 <= peaks["capped"] <= 3, peaks
    assert 1 <= peaks["test_sleep"] <= 4, peaks


async def test_the_email_rate_delays_tasks_and_never_fails_them(
    store: Store,
    database: str,
    queue_name: str,
    tmp_path: Path,
    smtp_server: SMTPTestServer,
) -> None:
    settings = make_settings(
        database,
        queue=queue_name,
        files=tmp_path / "files",
        email_per_user_per_minute=3,
        mail_host=smtp_server.host,
        mail_port=smtp_server.port,
    )
    user = await new_user(store)
    enqueuer = Enqueuer(store, build_registry(settings))
    ids = []
    for n in range(6):
        row, _ = await enqueuer.create(
            user,
            TaskCreate(
                type="send_email", payload={"to": "rcpt@example.com", "subject": f"mail {n}"}
            ),
        )
        ids.append(row["id"])

    async def done_count() -> int:
        count: int = await store.pool.fetchval(
            "SELECT count(*) FROM tasks WHERE id = ANY($1) AND status = 'done'", ids
        )
        return count

    async with running_scheduler(settings), running_worker(settings, concurrency=4):

        async def three_sent() -> bool:
            return await done_count() == 3

        await wait_until(three_sent, timeout=15, what="the first three emails")
        await asyncio.sleep(1.5)
        statuses = await _status_counts(store, user)
        assert statuses == {"done": 3, "queued": 3}, statuses  # waiting, not failed
        why = await store.pool.fetchval(
            "SELECT taskflow_why(id) FROM tasks WHERE id = ANY($1) AND status = 'queued' LIMIT 1",
            ids,
        )
        assert "email_per_user_per_minute" in why
        # A minute later (here: their start moved a minute back) the rest go.
        await store.pool.execute(
            "UPDATE tasks SET started_at = started_at - interval '61 seconds' "
            "WHERE id = ANY($1) AND status = 'done'",
            ids,
        )
        await store.pool.execute("NOTIFY taskflow_queued")

        async def all_sent() -> bool:
            return await done_count() == 6

        await wait_until(all_sent, timeout=15, what="the other three emails")
    assert len(smtp_server.messages) == 6


async def test_a_worker_that_joins_gets_ids_at_once_not_at_the_next_look(
    store: Store, database: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher sends ids only for live workers' slots. A worker joining
    tells it (NOTIFY taskflow_workers): without that, a backlog waited for the
    dispatcher's next look at the fleet (here made a minute away)."""
    monkeypatch.setattr(dispatcher, "IDLE_SECONDS", 60.0)
    monkeypatch.setattr(dispatcher, "SLOTS_REFRESH_SECONDS", 60.0)
    settings = make_settings(database, queue=queue_name, files=tmp_path / "files")
    user_id = await new_user(store)
    tasks = _sleepers(20, 0)
    await store.insert_tasks(user_id, tasks)
    async with running_scheduler(settings) as scheduler:
        assert scheduler.dispatcher is not None
        await asyncio.sleep(0.5)  # its first round saw no worker: it idles
        assert scheduler.dispatcher.dispatched == 0
        await store.register_worker("joining", "host", 4, queue_name, liveness_key=None)

        async def sent() -> bool:
            assert scheduler.dispatcher is not None
            return scheduler.dispatcher.dispatched > 0

        await wait_until(sent, timeout=15, what="ids sent for the joining worker")
    assert len(await published_ids(queue_name)) > 0


async def test_with_no_worker_alive_new_tasks_do_not_wake_the_dispatcher(
    store: Store, database: str, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every producer's commit NOTIFYs; while no worker is alive there is
    nothing to dispatch, so the dispatcher stops hearing of each task (it
    cost every one-at-a-time create a wake-up of the scheduler's session and
    process), and hears again once a worker joins."""
    monkeypatch.setattr(dispatcher, "IDLE_SECONDS", 60.0)
    monkeypatch.setattr(dispatcher, "SLOTS_REFRESH_SECONDS", 60.0)
    settings = make_settings(database, queue=queue_name, files=tmp_path / "files")
    user_id = await new_user(store)
    async with running_scheduler(settings) as scheduler:
        assert scheduler.dispatcher is not None
        await asyncio.sleep(0.5)  # its first round saw no worker
        rounds = scheduler.dispatcher.rounds
        for task in _sleepers(20, 0):
            await store.insert_task(user_id, task)
        await asyncio.sleep(0.5)
        assert scheduler.dispatcher.rounds == rounds

        await store.register_worker("joining", "host", 4, queue_name, liveness_key=None)

        async def sent() -> bool:
            assert scheduler.dispatcher is not None
            return scheduler.dispatcher.dispatched > 0

        await wait_until(sent, timeout=15, what="ids sent for the joining worker")
        rounds = scheduler.dispatcher.rounds
        for task in _sleepers(3, 0):
            await store.insert_task(user_id, task)

        async def woken() -> bool:
            assert scheduler.dispatcher is not None
            return scheduler.dispatcher.rounds > rounds

        await wait_until(woken, timeout=5, what="a round for a task queued with a worker alive")
