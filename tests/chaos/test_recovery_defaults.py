"""Recovery at default settings (SPEC §7.3): a worker killed with SIGKILL has
its task running again elsewhere within 2 s, seen from its Postgres session
ending; a worker frozen with SIGSTOP loses its task after the lease plus one
tick, and once it resumes its outcome is refused.

Real worker and scheduler processes with an empty config.json: lease_seconds
30, scheduler_interval_ms 1000."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from pathlib import Path
from uuid import UUID

import pytest

from taskflow.enqueue import new_task_id
from taskflow.store.tasks import NewTask
from tests.chaos.test_chaos import executions, publish
from tests.conftest import new_user, wait_until
from tests.processes import Component, component_env
from tests.stores import Store

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

DEFAULTS: dict[str, object] = {}  # config.json as shipped: every default
KILLS = 6
# SPEC §7.3 says 2 s; the slack is for a busy CI machine, not for the design.
RERUN_SECONDS = 2.0
RERUN_SLACK_SECONDS = 0.5


async def _create_sleeper(
    store: Store, user_id: int, queue: str, marks: Path, seconds: float
) -> UUID:
    task = NewTask(
        new_task_id(), "test_sleep", {"seconds": seconds, "marks": str(marks)}, 0, 3, None
    )
    await store.insert_tasks(user_id, [task])
    await publish(queue, [task.id])
    return task.id


async def _ready(worker: Component) -> bool:
    return "worker started" in worker.output()


def _runs_of(marks: Path, task_id: UUID) -> list[dict[str, float | int | None]]:
    return list(executions(marks).get(task_id, []))


async def test_a_killed_workers_task_runs_again_within_two_seconds(
    store: Store, database: str, queue_name: str, tmp_path: Path
) -> None:
    user_id = await new_user(store)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = component_env(tmp_path, database, queue=queue_name, tunables=DEFAULTS)
    logs = tmp_path / "logs"
    scheduler = Component("scheduler", ["scheduler"], env, logs)
    workers = {
        w.pid: w
        for w in (
            Component(f"worker-{i}", ["worker", "--concurrency", "2"], env, logs) for i in range(2)
        )
    }
    generation = len(workers)
    delays: list[float] = []
    try:
        for _ in range(KILLS):
            # A fleet, not a worker still booting, is what takes the task over.
            for worker in workers.values():
                await wait_until(
                    lambda w=worker: _ready(w), timeout=30, what=f"{worker.name} consuming"
                )
            task_id = await _create_sleeper(store, user_id, queue_name, marks, 60)

            async def started(task: UUID = task_id) -> bool:
                return len(_runs_of(marks, task)) == 1

            await wait_until(started, timeout=30, what="the task started")
            [first] = _runs_of(marks, task_id)
            victim = workers.pop(int(first["pid"]))  # type: ignore[arg-type]
            killed_at = time.time()
            victim.kill()
            replacement = Component(
                f"worker-{generation}", ["worker", "--concurrency", "2"], env, logs
            )
            workers[replacement.pid] = replacement
            generation += 1

            async def rerun(task: UUID = task_id) -> bool:
                return len(_runs_of(marks, task)) == 2

            await wait_until(rerun, timeout=35, what="the task running again")
            second = _runs_of(marks, task_id)[1]
            delays.append(float(second["start"]) - killed_at)  # type: ignore[arg-type]
            assert second["pid"] != first["pid"]
            # Free the slot for the next round: cancel stops the running handler.
            await store.cancel_task(task_id, None, actor="test")
        history = await store.pool.fetch(
            "SELECT event, from_status, to_status FROM task_history WHERE event = 'worker_lost'"
        )
    finally:
        for component in [*workers.values(), scheduler]:
            if component.alive():
                component.terminate()
    # Seen from the session, not the lease (30 s here).
    assert len(history) == KILLS
    assert all(row["to_status"] == "retrying" for row in history)
    print(
        f"\nkill -9 -> rerun at defaults over {KILLS} kills: "
        f"median {statistics.median(delays):.2f} s, max {max(delays):.2f} s"
    )
    assert max(delays) <= RERUN_SECONDS + RERUN_SLACK_SECONDS, delays


async def test_a_frozen_worker_loses_its_task_after_the_lease_and_writes_nothing(
    store: Store, database: str, queue_name: str, tmp_path: Path
) -> None:
    user_id = await new_user(store)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = component_env(tmp_path, database, queue=queue_name, tunables=DEFAULTS)
    logs = tmp_path / "logs"
    scheduler = Component("scheduler", ["scheduler"], env, logs)
    frozen = Component("frozen", ["worker", "--concurrency", "1"], env, logs)
    other: Component | None = None
    try:
        task_id = await _create_sleeper(store, user_id, queue_name, marks, 4)

        async def started() -> bool:
            return len(_runs_of(marks, task_id)) == 1

        await wait_until(started, timeout=30, what="the task started")
        frozen.process.send_signal(signal.SIGSTOP)
        frozen_at = time.time()
        # Only now may another worker take it: the frozen one's session lives
        # on (it is not dead), so its lease is the rule.
        other = Component("other", ["worker", "--concurrency", "1"], env, logs)

        async def rescued() -> bool:
            status = await store.pool.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
            return status != "processing" or len(_runs_of(marks, task_id)) > 1

        await wait_until(rescued, timeout=45, what="the lease rescue")
        rescued_after = time.time() - frozen_at
        # The lease (30 s) counted from its last extension, at most a third of
        # a lease before the freeze, plus one tick.
        assert 30 - 10 - 1 <= rescued_after <= 30 + 1 + 2, rescued_after
        frozen.process.send_signal(signal.SIGCONT)
        resumed_at = time.time()

        async def done() -> bool:
            status = await store.pool.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
            return bool(status == "done")

        await wait_until(done, timeout=30, what="the rerun finished")
        await asyncio.sleep(2)  # time for the resumed worker to try to write
        row = await store.pool.fetchrow(
            "SELECT status, worker_id, result FROM tasks WHERE id = $1", task_id
        )
        events = [
            (r["event"], r["attempt"])
            for r in await store.pool.fetch(
                "SELECT event, attempt FROM task_history WHERE task_id = $1 ORDER BY id", task_id
            )
        ]
    finally:
        if frozen.alive():
            frozen.process.send_signal(signal.SIGCONT)
        for component in [frozen, scheduler, *([other] if other else [])]:
            if component.alive():
                component.terminate()
    assert row["status"] == "done"
    # Done once, by the second attempt (whichever worker took it): the frozen
    # first attempt wrote nothing.
    assert events == [
        ("created", 0),
        ("claimed", 1),
        ("lease_expired", 1),
        ("due", 1),
        ("claimed", 2),
        ("completed", 2),
    ]
    first = next(run for run in _runs_of(marks, task_id) if run["attempt"] == 1)
    assert first["pid"] == frozen.pid
    if first["end"] is not None:
        # Its handler finished on resume before its heartbeat noticed: that is
        # the time it ran on after resuming, and its outcome was discarded.
        ran_on = float(first["end"]) - resumed_at  # type: ignore[arg-type]
        print(f"\nthe frozen worker's handler ran on {max(ran_on, 0) * 1000:.0f} ms after resuming")
    assert "outcome discarded" in frozen.output() or "lease lost" in frozen.output()
