"""Worker liveness from Postgres sessions (SPEC §7.3, db/migrations/0008):
a worker holds an advisory lock while its session lives; the scheduler
rescues the tasks of registered workers whose lock nobody holds, counting
only attempts that really started."""

from __future__ import annotations

from pathlib import Path

from taskflow.config import Settings
from taskflow.enqueue import Enqueuer, new_task_id
from taskflow.handlers import build_registry
from taskflow.models import TaskCreate
from taskflow.scheduler import Scheduler
from taskflow.store.tasks import NewTask
from tests.chaos.test_chaos import executions
from tests.conftest import make_settings, new_user, running_scheduler, running_worker, wait_until
from tests.stores import Store, claim


async def _fake_worker(store: Store, worker_id: str) -> None:
    """A registered worker whose session holds no lock: as if it had died."""
    key = await store.next_liveness_key()
    await store.register_worker(worker_id, "gone-host", 4, None, liveness_key=key)


async def test_a_lost_workers_started_attempts_count_and_claimed_ahead_ones_go_back(
    store: Store, settings: Settings
) -> None:
    user_id = await new_user(store)
    ids = [
        row["id"]
        for row in await store.insert_tasks(
            user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None) for _ in range(3)]
        )
    ]
    await _fake_worker(store, "dead-worker")
    claimed = await claim(store, ids, "dead-worker", 30, start_now=1)
    assert [row["started"] for row in claimed] == [True, False, False]
    started_id = claimed[0]["id"]
    assert await store.pool.fetchval("SELECT taskflow_lost_worker_ids()") == "dead-worker"

    scheduler = Scheduler(settings, store, store, dispatcher=None)
    report = await scheduler.rescue_dead()
    assert report.rescued == 3
    rows = {
        row["id"]: row
        for row in await store.pool.fetch(
            "SELECT id, status, attempts, lease_crashes, unstarted_rescues, last_error "
            "FROM tasks WHERE id = ANY($1)",
            ids,
        )
    }
    # The started attempt counts, as a crash too, and is queued again at once.
    started = rows[started_id]
    assert (started["status"], started["attempts"], started["lease_crashes"]) == ("queued", 1, 1)
    assert "session ended" in started["last_error"]
    # The ones claimed ahead never happened, as far as counting goes.
    for task_id in set(ids) - {started_id}:
        row = rows[task_id]
        assert (row["status"], row["attempts"], row["lease_crashes"]) == ("queued", 0, 0)
        assert row["unstarted_rescues"] == 1
    events = await store.pool.fetch(
        "SELECT task_id, event, from_status, to_status FROM task_history "
        "WHERE event = 'worker_lost' ORDER BY id"
    )
    assert {row["task_id"] for row in events} == set(ids)

    # Put back once, never claimed ahead again: only into a free slot.
    ahead = [task_id for task_id in ids if task_id != started_id]
    assert await claim(store, ahead, "w2", 30, start_now=0) == []
    again = await claim(store, ahead, "w2", 30, start_now=2)
    assert {row["id"] for row in again} == set(ahead)
    assert all(row["started"] for row in again)


async def test_a_worker_that_holds_its_session_is_not_lost(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    user_id = await new_user(store)
    marks = tmp_path / "marks"
    marks.mkdir()
    enqueuer = Enqueuer(store, build_registry(settings))
    row, _ = await enqueuer.create(
        user_id, TaskCreate(type="test_sleep", payload={"seconds": 30, "marks": str(marks)})
    )
    no_broker = make_settings(settings.database_url.get_secret_value(), queue=None, files=tmp_path)
    async with running_worker(no_broker, concurrency=1) as worker:

        async def processing() -> bool:
            status = await store.pool.fetchval("SELECT status FROM tasks WHERE id = $1", row["id"])
            return bool(status == "processing")

        await wait_until(processing, what="claimed")
        assert await store.pool.fetchval("SELECT count(*) FROM taskflow_lost_worker_ids()") == 0
        assert await store.rescue_lost_workers(10, 3) == []
        key = await store.pool.fetchval(
            "SELECT liveness_key FROM workers WHERE id = $1", worker.worker_id
        )
        holders = await store.pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = taskflow_worker_lock_namespace()::oid AND objid = $1::oid "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            key,
        )
        assert holders == 1
        await store.cancel_task(row["id"], None, actor="test")


async def test_a_worker_whose_session_ends_stops_its_handlers_and_nothing_overlaps(
    store: Store, database: str, queue_name: str, tmp_path: Path
) -> None:
    """Its session ended while the process lives (the connection broke): the
    scheduler takes it for dead, so the worker must stop what it runs at once,
    and it carries on once it holds a new session."""
    settings = make_settings(
        database,
        queue=queue_name,
        files=tmp_path / "files",
        scheduler_interval_ms=100,
        worker_liveness_check_ms=50,
    )
    user_id = await new_user(store)
    marks = tmp_path / "marks"
    marks.mkdir()
    enqueuer = Enqueuer(store, build_registry(settings))
    row, _ = await enqueuer.create(
        user_id, TaskCreate(type="test_sleep", payload={"seconds": 3, "marks": str(marks)})
    )
    task_id = row["id"]
    async with running_scheduler(settings), running_worker(settings, concurrency=1) as worker:

        async def started() -> bool:
            return len(executions(marks).get(task_id, [])) == 1

        await wait_until(started, what="the first run")
        # Cut the worker's listening session, as a broken connection would.
        terminated = await store.pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            f"taskflow-worker-listen {worker.worker_id}",
        )
        assert terminated == 1

        async def done() -> bool:
            status = await store.pool.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
            return bool(status == "done")

        await wait_until(done, timeout=20, what="the task done after the session came back")
        # And the worker goes on working with its new session.
        follow_up, _ = await enqueuer.create(user_id, TaskCreate(type="test_noop", payload={}))

        async def follow_up_done() -> bool:
            status = await store.pool.fetchval(
                "SELECT status FROM tasks WHERE id = $1", follow_up["id"]
            )
            return bool(status == "done")

        await wait_until(follow_up_done, what="the next task")
    runs = executions(marks)[task_id]
    assert len(runs) == 2
    first, second = runs
    # The first run was stopped (a cancelled mark, no end) before the second began.
    assert first["end"] is None
    cancelled_at = float(
        next(
            line.split()[1]
            for path in marks.iterdir()
            if path.name.startswith(f"{task_id}.{first['attempt']}.")
            for line in path.read_text().splitlines()
            if line.startswith("cancelled")
        )
    )
    assert cancelled_at <= second["start"]
    completed = await store.pool.fetchval(
        "SELECT count(*) FROM task_history WHERE task_id = $1 AND event = 'completed'", task_id
    )
    assert completed == 1
