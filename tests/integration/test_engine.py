"""The queue engine against real Postgres and RabbitMQ: claims, fencing, retries,
timeouts, cancellation, leases, the scheduler, and the no-broker path."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from taskflow.broker import Broker
from taskflow.config import Settings
from taskflow.enqueue import Enqueuer, new_task_id
from taskflow.handlers import build_registry
from taskflow.models import TaskCreate, TaskStatus
from taskflow.runtime import worker_runtime
from taskflow.scheduler import Scheduler
from taskflow.store.dispatch import DispatchStore, FairLimits
from taskflow.store.engine import (
    CLAIM_QUEUED_TASKS,
    EXTEND_LEASES,
    FINISH_PROCESSING_TASKS,
    HAND_BACK_TASKS,
    PROMOTE_DUE_TASKS,
    RESCUE_EXPIRED_LEASES,
    SAVE_TASK_PROGRESS,
    Outcome,
)
from taskflow.store.pool import connect
from taskflow.store.tasks import NewTask, TaskStore
from taskflow.worker.process import Worker
from tests.conftest import (
    AMQP_URL,
    make_settings,
    new_user,
    published_ids,
    running_scheduler,
    running_worker,
    wait_until,
)
from tests.stores import Store, claim, finish

FAST = {
    "scheduler_interval_ms": 50,
    "lease_seconds": 2,
    "retry_backoff_base_ms": 100,
    "retry_backoff_max_ms": 1000,
    "shutdown_grace_seconds": 1,
    "worker_poll_interval_ms": 200,
    "republish_after_seconds": 0.3,
}


@pytest.fixture
def fast(database: str, queue_name: str, tmp_path: Path) -> Settings:
    return make_settings(database, queue=queue_name, files=tmp_path / "files", **FAST)


@pytest.fixture
def no_broker(database: str, tmp_path: Path) -> Settings:
    return make_settings(database, queue=None, files=tmp_path / "files", **FAST)


@pytest.fixture
async def publisher(fast: Settings) -> AsyncIterator[Broker]:
    broker = Broker(AMQP_URL, fast.amqp_queue, name="test-publisher")
    broker.start()
    assert await broker.wait_connected(5)
    yield broker
    await broker.close()


@pytest.fixture
async def user_id(store: Store) -> int:
    return await new_user(store)


def enqueuer(store: Store, settings: Settings) -> Enqueuer:
    return Enqueuer(store, build_registry(settings))


async def dispatched(store: Store, publisher: Broker, ids: list[uuid.UUID]) -> None:
    """Pick these ids into the dispatch window and publish them as one
    message, as the dispatcher would (nothing else is queued here)."""
    rows = await store.dispatch(len(ids), FairLimits())
    assert {row["id"] for row in rows} == set(ids)
    assert await publisher.publish_ids(ids)


async def create(
    queue: Enqueuer, user_id: int, task_type: str, payload: dict[str, Any], **fields: Any
) -> uuid.UUID:
    row, _ = await queue.create(user_id, TaskCreate(type=task_type, payload=payload, **fields))
    task_id: uuid.UUID = row["id"]
    return task_id


async def status_of(store: Store, task_id: uuid.UUID) -> str:
    status: str = await store.pool.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
    return status


async def events_of(store: Store, task_id: uuid.UUID) -> list[str]:
    rows = await store.pool.fetch(
        "SELECT event FROM task_history WHERE task_id = $1 ORDER BY id", task_id
    )
    return [row["event"] for row in rows]


def all_in(store: Store, ids: list[uuid.UUID], status: str) -> Any:
    async def check() -> bool:
        count = await store.pool.fetchval(
            "SELECT count(*) FROM tasks WHERE id = ANY($1) AND status = $2", ids, status
        )
        return bool(count == len(ids))

    return check


async def queued_and_dispatched(
    store: Store, user_id: int, count: int, *, task_type: str = "test_noop", **payload: Any
) -> list[uuid.UUID]:
    """Queued and picked into the dispatch window in one transaction, so no
    idle worker takes them from the pick first: as if the dispatcher had."""
    async with store.pool.acquire() as connection, connection.transaction():
        rows = await TaskStore(connection).insert_tasks(  # type: ignore[arg-type]
            user_id,
            [NewTask(new_task_id(), task_type, dict(payload), 0, 3, None) for _ in range(count)],
        )
        await DispatchStore(connection).dispatch(count, FairLimits())  # type: ignore[arg-type]
    return [row["id"] for row in rows]


async def bulk_queued(store: Store, user_id: int, count: int, **payload: Any) -> list[uuid.UUID]:
    rows = await store.insert_tasks(
        user_id,
        [
            NewTask(new_task_id(), "test_noop", {"n": i, **payload}, 0, 3, None)
            for i in range(count)
        ],
    )
    return [row["id"] for row in rows]


# ----- claims


async def test_eight_concurrent_claimers_claim_each_row_exactly_once(
    store: Store, user_id: int
) -> None:
    ids = await bulk_queued(store, user_id, 1000)
    claimed: list[uuid.UUID] = []

    async def by_next(worker: str) -> None:
        while rows := await store.claim_fair(worker, 30, 7, start_now=7, limits=FairLimits()):
            claimed.extend(row["id"] for row in rows)

    async def by_ids(worker: str) -> None:
        # Overlapping random batches, as duplicate deliveries would produce,
        # of ids the pick sent (claims by id take nothing else).
        rng = random.Random(worker)
        for _ in range(150):
            sample = rng.sample(ids, 20)
            await store.pool.execute(
                "INSERT INTO dispatched_tasks (task_id, user_id, type) "
                "SELECT t.id, t.user_id, t.type FROM tasks t "
                "WHERE t.id = ANY($1) AND t.status = 'queued' ON CONFLICT DO NOTHING",
                sample,
            )
            rows = await claim(store, sample, worker, 30)
            claimed.extend(row["id"] for row in rows)

    await asyncio.gather(
        *(by_next(f"next-{i}") for i in range(4)), *(by_ids(f"ids-{i}") for i in range(4))
    )
    await by_next("sweeper")
    counts = Counter(claimed)
    assert len(counts) == 1000
    assert max(counts.values()) == 1
    history = await store.pool.fetch(
        "SELECT task_id, count(*) AS n FROM task_history WHERE event = 'claimed' GROUP BY task_id"
    )
    assert len(history) == 1000
    assert all(row["n"] == 1 for row in history)
    tokens = await store.pool.fetchval("SELECT count(DISTINCT claim_token) FROM tasks")
    assert tokens == 1000


async def test_a_worker_and_a_scheduler_run_every_task_once(
    store: Store, fast: Settings, user_id: int
) -> None:
    queue = enqueuer(store, fast)
    ids = [await create(queue, user_id, "test_noop", {"n": i}) for i in range(40)]
    async with running_scheduler(fast), running_worker(fast, concurrency=4) as worker:
        await wait_until(all_in(store, ids, "done"), what="all done")
        assert worker.broker is not None
        assert worker.broker.connected.is_set()
    rows = await store.pool.fetch("SELECT attempts, result FROM tasks WHERE id = ANY($1)", ids)
    assert all(row["attempts"] == 1 for row in rows)
    assert sorted(row["result"]["n"] for row in rows) == list(range(40))
    assert await events_of(store, ids[0]) == ["created", "claimed", "completed"]


async def test_the_dispatcher_publishes_a_window_the_size_of_the_free_slots(
    store: Store, fast: Settings, user_id: int
) -> None:
    # Five slots alive (a registered worker that heartbeats, not consuming):
    # the window holds five ids, and the backlog stays in Postgres.
    await store.register_worker("five-slots", "host", 5, fast.amqp_queue, liveness_key=None)
    ids = await bulk_queued(store, user_id, 40)
    async with running_scheduler(fast) as scheduler:
        assert scheduler.dispatcher is not None

        async def window_published() -> bool:
            return len(await published_ids(fast.amqp_queue)) == 5

        await wait_until(window_published, what="a window of five ids published")
        await asyncio.sleep(0.3)
        published = await published_ids(fast.amqp_queue)
        assert len(published) == 5  # not the whole backlog
        assert set(published) <= set(ids)
        marked = await store.pool.fetchval("SELECT array_agg(task_id) FROM dispatched_tasks")
        assert set(marked) == set(published)
    async with running_scheduler(fast), running_worker(fast, concurrency=3):
        await wait_until(all_in(store, ids, "done"), what="every task done")
    assert await store.pool.fetchval("SELECT count(*) FROM dispatched_tasks") == 0


async def test_duplicate_stale_and_garbage_messages_are_dropped(
    store: Store, fast: Settings, publisher: Broker, user_id: int
) -> None:
    [task_id] = await queued_and_dispatched(store, user_id, 1)
    assert await publisher.publish_ids([task_id, task_id, task_id, uuid.uuid4()])
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.default_exchange.publish(
        aio_pika.Message(b"not a uuid"), routing_key=fast.amqp_queue
    )
    async with running_worker(fast, concurrency=2):
        await wait_until(all_in(store, [task_id], "done"))
        # A stale message for a finished task arrives later.
        assert await publisher.publish_ids([task_id])

        async def drained() -> bool:
            return await publisher.queue_depth() == 0

        await wait_until(drained, what="queue drained")
        await asyncio.sleep(0.2)
    assert (await events_of(store, task_id)).count("claimed") == 1
    declared = await channel.declare_queue(fast.amqp_queue, durable=True, passive=True)
    assert declared.declaration_result.message_count == 0  # everything was acked
    await connection.close()


async def test_an_id_the_pick_did_not_send_is_not_claimed(
    store: Store, fast: Settings, user_id: int
) -> None:
    """Claims by id take only what the fair pick sent: every cap is counted over it."""
    [task_id] = await bulk_queued(store, user_id, 1)
    assert await store.claim_queued_tasks([task_id], "w", 30) == []
    await store.dispatch(1, FairLimits())
    claimed = await store.claim_queued_tasks([task_id], "w", 30)
    assert [row["id"] for row in claimed] == [task_id]
    # Claimed, it left the dispatch window.
    assert await store.count_dispatched() == 0


async def test_the_pick_keeps_the_email_rate_among_a_users_other_tasks(
    store: Store, fast: Settings, user_id: int
) -> None:
    """Emails past the user's rate stay queued; the user's other tasks behind
    them are picked in the same visit, in their order."""
    tasks = [
        NewTask(new_task_id(), kind, {"n": n}, 0, 3, None)
        for n, kind in enumerate(
            ["send_email", "test_noop", "send_email", "send_email", "test_noop", "send_email"]
        )
    ]
    await store.insert_tasks(user_id, tasks)
    picked = await store.dispatch(10, FairLimits(email_per_user_per_minute=2))
    by_id = {task.id: task for task in tasks}
    assert sorted(by_id[row["id"]].payload["n"] for row in picked) == [0, 1, 2, 4]
    # The window counts against the rate: nothing more goes until those start.
    assert await store.dispatch(10, FairLimits(email_per_user_per_minute=2)) == []


async def test_ids_of_one_message_are_claimed_once_each_in_one_statement(
    store: Store, fast: Settings, publisher: Broker, user_id: int
) -> None:
    ids = await queued_and_dispatched(store, user_id, 6)
    assert await publisher.publish_ids(ids)  # one message of six ids
    assert await publisher.queue_depth() == 1
    async with running_worker(fast, concurrency=8):
        await wait_until(all_in(store, ids, "done"))
    tokens = await store.pool.fetch(
        "SELECT claim_token, worker_id FROM tasks WHERE id = ANY($1)", ids
    )
    # Six fresh fencing tokens, one per task, from one claiming worker.
    assert len({row["claim_token"] for row in tokens}) == 6
    assert len({row["worker_id"] for row in tokens}) == 1
    claimed_at = await store.pool.fetchval(
        "SELECT count(DISTINCT at) FROM task_history WHERE event = 'claimed' AND task_id = ANY($1)",
        ids,
    )
    assert claimed_at == 1  # one statement
    for task_id in ids:
        assert await events_of(store, task_id) == ["created", "claimed", "completed"]
    assert await publisher.queue_depth() == 0


async def test_an_idle_worker_takes_ids_waiting_behind_another_workers_long_tasks(
    store: Store, fast: Settings, publisher: Broker, user_id: int
) -> None:
    async with (
        running_worker(fast, concurrency=1, worker_id="one-slot") as one,
        running_worker(fast, concurrency=3, worker_id="three-slots") as three,
    ):

        async def connected() -> bool:
            return all(w.broker is not None and w.broker.connected.is_set() for w in (one, three))

        await wait_until(connected, what="both workers consuming")
        ids = await queued_and_dispatched(store, user_id, 4, task_type="test_sleep", seconds=1.5)
        assert await publisher.publish_ids(ids)
        # Whichever worker gets the message claims what its slots take and
        # holds the rest; the other, with free slots and no deliveries, takes
        # those once they have been picked for a poll interval.
        await wait_until(all_in(store, ids, "done"), timeout=10)

        async def acked() -> bool:
            return await publisher.queue_depth() == 0 and not any(
                w.intake.deliveries for w in (one, three)
            )

        await wait_until(acked, what="the message acked by its holder")
    workers = Counter(
        await store.pool.fetchval("SELECT array_agg(worker_id) FROM tasks WHERE id = ANY($1)", ids)
    )
    assert workers == {"one-slot": 1, "three-slots": 3}


# ----- fencing and leases


async def test_a_worker_whose_lease_lapsed_cannot_finish_or_save(
    store: Store, fast: Settings, user_id: int
) -> None:
    [task_id] = await bulk_queued(store, user_id, 1)
    [first] = await claim(store, [task_id], "worker-a", 30)
    await store.pool.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1", task_id
    )
    scheduler = Scheduler(fast, store, store, dispatcher=None)
    report = await scheduler.tick()
    assert report.rescued == 1
    assert report.promoted == 1
    [second] = await claim(store, [task_id], "worker-b", 30)
    assert second["claim_token"] != first["claim_token"]
    assert second["attempts"] == 2

    # worker-a comes back from a pause: none of its writes land.
    late = Outcome(task_id, first["claim_token"], "done", {"by": "a"}, True)
    assert await finish(store, late) == {}
    assert not await store.save_task_progress(task_id, first["claim_token"], {"by": "a"})
    assert await store.extend_leases("worker-a", [(task_id, first["claim_token"])], 30) == set()
    failed = Outcome(task_id, first["claim_token"], "permanent", error="late")
    assert await finish(store, failed) == {}

    done = Outcome(task_id, second["claim_token"], "done", {"by": "b"}, True)
    assert await finish(store, done) == {task_id: TaskStatus.DONE}
    row = await store.pool.fetchrow(
        "SELECT status, result, worker_id FROM tasks WHERE id = $1", task_id
    )
    assert (row["status"], row["result"], row["worker_id"]) == ("done", {"by": "b"}, "worker-b")
    history = await store.pool.fetch(
        "SELECT event, worker_id, error FROM task_history WHERE task_id = $1 ORDER BY id", task_id
    )
    assert [h["event"] for h in history] == [
        "created",
        "claimed",
        "lease_expired",
        "due",
        "claimed",
        "completed",
    ]
    assert history[2]["worker_id"] == "worker-a"
    assert "worker worker-a lost" in history[2]["error"]
    # Done at most once, whatever the late worker tried.
    assert [h["event"] for h in history].count("completed") == 1


async def test_rescue_fails_a_task_out_of_retries_and_quarantines_crashers(
    store: Store, database: str, queue_name: str, tmp_path: Path, user_id: int
) -> None:
    settings = make_settings(
        database, queue=queue_name, files=tmp_path, max_lease_crashes=2, **FAST
    )
    scheduler = Scheduler(settings, store, store, dispatcher=None)
    no_retries = (
        await store.insert_tasks(user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 0, None)])
    )[0]["id"]
    crasher = (await bulk_queued(store, user_id, 1))[0]

    async def lose_lease(task_id: uuid.UUID) -> None:
        await claim(store, [task_id], "doomed-worker", 30)
        await store.pool.execute(
            "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
            task_id,
        )
        await scheduler.tick()

    await lose_lease(no_retries)
    assert await status_of(store, no_retries) == "failed"
    await lose_lease(crasher)
    assert await status_of(store, crasher) == "queued"
    await lose_lease(crasher)
    row = await store.pool.fetchrow(
        "SELECT status, attempts, last_error, finished_at FROM tasks WHERE id = $1", crasher
    )
    assert row["status"] == "failed"
    assert row["attempts"] == 2  # max_retries 3 would have allowed more
    assert "quarantined after 2 attempts ended with a lost worker" in row["last_error"]
    assert row["finished_at"] is not None


async def test_rescue_takes_at_most_its_batch_oldest_lease_first(
    store: Store, user_id: int
) -> None:
    ids = list(await bulk_queued(store, user_id, 3))
    await claim(store, ids, "doomed-worker", 30)
    for age, task_id in zip((3, 1, 2), ids, strict=True):
        await store.pool.execute(
            "UPDATE tasks SET lease_expires_at = now() - make_interval(secs => $2) WHERE id = $1",
            task_id,
            age,
        )
    first = await store.rescue_expired_leases(2, 3)
    assert {row["id"] for row in first} == {ids[0], ids[2]}  # the two oldest leases
    assert {(row["status"], row["worker_id"]) for row in first} == {("retrying", "doomed-worker")}
    assert [row["id"] for row in await store.rescue_expired_leases(2, 3)] == [ids[1]]
    assert await store.rescue_expired_leases(2, 3) == []
    actors = await store.pool.fetch(
        "SELECT DISTINCT actor FROM task_history WHERE event = 'lease_expired'"
    )
    assert [row["actor"] for row in actors] == ["scheduler"]


async def test_heartbeat_keeps_a_long_task_alive(
    store: Store, fast: Settings, publisher: Broker, user_id: int
) -> None:
    queue = enqueuer(store, fast)
    task_id = await create(queue, user_id, "test_sleep", {"seconds": 3.5})  # lease is 2 s
    async with running_scheduler(fast), running_worker(fast):
        await wait_until(all_in(store, [task_id], "done"), timeout=15)
    assert await events_of(store, task_id) == ["created", "claimed", "completed"]


# ----- outcomes: retries, backoff, permanent errors, timeouts


async def test_transient_failures_retry_with_backoff_then_succeed(
    store: Store, fast: Settings, publisher: Broker, user_id: int
) -> None:
    queue = enqueuer(store, fast)
    task_id = await create(queue, user_id, "test_fail", {"kind": "transient", "times": 2})
    async with running_scheduler(fast), running_worker(fast):
        await wait_until(all_in(store, [task_id], "done"))
    assert await events_of(store, task_id) == [
        "created",
        "claimed",
        "attempt_failed",
        "due",
        "claimed",
        "attempt_failed",
        "due",
        "claimed",
        "completed",
    ]
    history = await store.pool.fetch(
        "SELECT event, at, error FROM task_history WHERE task_id = $1 ORDER BY id", task_id
    )
    failures = [h for h in history if h["event"] == "attempt_failed"]
    dues = [h for h in history if h["event"] == "due"]
    # Backoff ceilings 100 ms then 200 ms; the delay is at least half the ceiling.
    assert dues[0]["at"] - failures[0]["at"] >= timedelta(milliseconds=50)
    assert dues[1]["at"] - failures[1]["at"] >= timedelta(milliseconds=100)
    assert failures[0]["error"] == "transient failure on attempt 1"
    row = await store.pool.fetchrow(
        "SELECT attempts, retries, result FROM tasks WHERE id = $1", task_id
    )
    assert (row["attempts"], row["retries"]) == (3, 2)
    assert row["result"] == {"succeeded_on_attempt": 3}


async def test_out_of_retries_permanent_errors_bugs_and_timeouts(
    store: Store, database: str, queue_name: str, tmp_path: Path, publisher: Broker, user_id: int
) -> None:
    settings = make_settings(
        database,
        queue=queue_name,
        files=tmp_path,
        task_timeout_seconds={"test_sleep": 0.3},
        **FAST,
    )
    queue = enqueuer(store, settings)
    exhausted = await create(queue, user_id, "test_fail", {"kind": "transient"}, max_retries=1)
    permanent = await create(queue, user_id, "test_fail", {"kind": "permanent"}, max_retries=5)
    bug = await create(queue, user_id, "test_fail", {"kind": "error", "times": 1})
    slow = await create(queue, user_id, "test_sleep", {"seconds": 5}, max_retries=0)
    async with running_scheduler(settings), running_worker(settings):
        await wait_until(all_in(store, [exhausted, permanent, slow], "failed"))
        await wait_until(all_in(store, [bug], "done"))
    rows = {
        row["id"]: row
        for row in await store.pool.fetch(
            "SELECT id, attempts, last_error, finished_at FROM tasks WHERE id = ANY($1)",
            [exhausted, permanent, bug, slow],
        )
    }
    assert rows[exhausted]["attempts"] == 2
    assert rows[exhausted]["last_error"] == "transient failure on attempt 2"
    assert rows[permanent]["attempts"] == 1
    assert rows[permanent]["last_error"] == "permanent failure on attempt 1"
    assert rows[bug]["attempts"] == 2
    assert rows[bug]["last_error"] == "RuntimeError: handler bug on attempt 1"
    assert rows[slow]["last_error"] == "timed out after 0.3s"
    assert all(rows[i]["finished_at"] is not None for i in (exhausted, permanent, slow))
    assert (await events_of(store, permanent))[-1] == "failed"


async def test_progress_is_saved_and_a_retry_resumes(
    store: Store, fast: Settings, publisher: Broker, user_id: int
) -> None:
    queue = enqueuer(store, fast)
    task_id = await create(queue, user_id, "test_progress", {"steps": 5, "fail_at": 2})
    async with running_scheduler(fast), running_worker(fast):
        await wait_until(all_in(store, [task_id], "done"))
    result = await store.pool.fetchval("SELECT result FROM tasks WHERE id = $1", task_id)
    assert [step["attempt"] for step in result["steps"]] == [1, 1, 2, 2, 2]


# ----- cancellation


async def test_cancelling_a_running_task_stops_its_handler(
    store: Store, fast: Settings, publisher: Broker, user_id: int, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    queue = enqueuer(store, fast)
    task_id = await create(queue, user_id, "test_sleep", {"seconds": 60, "marks": str(marks)})
    async with running_worker(fast, concurrency=1) as worker:
        await wait_until(all_in(store, [task_id], "processing"))
        await wait_until(lambda: _has_files(marks), what="handler started")
        row = await store.cancel_task(task_id, user_id, actor="test")
        assert row is not None
        assert row["status"] == "cancelled"

        async def handler_stopped() -> bool:
            return any("cancelled" in p.read_text() for p in marks.iterdir())

        await wait_until(handler_stopped, timeout=5, what="handler cancelled")
        await wait_until(lambda: _empty(worker), timeout=5, what="slot freed")
        # The freed slot takes new work.
        follow_up = await create(queue, user_id, "test_noop", {})
        await wait_until(all_in(store, [follow_up], "done"))
    assert await status_of(store, task_id) == "cancelled"
    assert (await events_of(store, task_id))[-1] == "cancelled"


async def _has_files(path: Path) -> bool:
    return any(path.iterdir())


async def _empty(worker: Worker) -> bool:
    return not worker.running


# ----- the scheduler


async def test_postponed_tasks_run_when_due(
    store: Store, fast: Settings, publisher: Broker, user_id: int
) -> None:
    from datetime import UTC, datetime

    queue = enqueuer(store, fast)
    run_at = datetime.now(UTC) + timedelta(milliseconds=700)
    task_id = await create(queue, user_id, "test_noop", {}, run_at=run_at)
    assert await status_of(store, task_id) == "postponed"
    async with running_scheduler(fast), running_worker(fast):
        await wait_until(all_in(store, [task_id], "done"))
    started = await store.pool.fetchval("SELECT started_at FROM tasks WHERE id = $1", task_id)
    assert started >= run_at
    assert await events_of(store, task_id) == ["created", "due", "claimed", "completed"]


async def test_two_schedulers_promote_each_row_once(
    store: Store, fast: Settings, user_id: int
) -> None:
    await store.pool.execute(
        """
        INSERT INTO tasks (id, user_id, type, payload, status, run_at)
        SELECT gen_random_uuid(), $1, 'test_noop', '{}', 'postponed', now() - interval '1 s'
        FROM generate_series(1, 500)
        """,
        user_id,
    )
    schedulers = [Scheduler(fast, store, store, dispatcher=None) for _ in range(2)]
    for scheduler in schedulers:
        scheduler.batch = 37
    reports = await asyncio.gather(*(s.tick() for s in schedulers))
    assert sum(r.promoted for r in reports) == 500
    due = await store.pool.fetchval("SELECT count(*) FROM task_history WHERE event = 'due'")
    assert due == 500
    # Promoted is queued, no more: the dispatcher decides what is published.
    assert await store.count_dispatched() == 0


async def test_ids_picked_but_never_claimed_are_published_again(
    store: Store, fast: Settings, user_id: int
) -> None:
    # As if their message was lost with RabbitMQ, or its worker died holding it.
    ids = await queued_and_dispatched(store, user_id, 5)
    await store.pool.execute("UPDATE dispatched_tasks SET dispatched_at = now() - interval '1 min'")
    async with running_scheduler(fast):

        async def published() -> bool:
            return sorted(await published_ids(fast.amqp_queue)) == sorted(ids)

        await wait_until(published, what="published again")
        await asyncio.sleep(0.5)
        assert sorted(await published_ids(fast.amqp_queue)) == sorted(ids)  # once, not every round
    async with running_worker(fast):
        await wait_until(all_in(store, ids, "done"))


# ----- without a broker


async def test_no_broker_workers_wake_on_notify(
    store: Store, no_broker: Settings, user_id: int
) -> None:
    queue = enqueuer(store, no_broker)
    async with running_worker(no_broker, concurrency=3) as worker:
        assert worker.broker is None
        ids = [await create(queue, user_id, "test_noop", {"n": i}) for i in range(30)]
        await wait_until(all_in(store, ids, "done"))


async def test_an_attempt_claimed_ahead_started_when_its_handler_did(
    store: Store, user_id: int
) -> None:
    """Outcomes written together get the start of each handler, however long
    each waited for the statement: not the statement's time less a run time."""
    ids = await bulk_queued(store, user_id, 3)
    claimed = await claim(store, ids, "w", 30, start_now=1)
    ahead = [row for row in claimed if not row["started"]]
    assert len(ahead) == 2
    now = time.monotonic()
    # The first ran 0.8 s ago for a moment; the second started after it.
    await finish(
        store,
        Outcome(ahead[0]["id"], ahead[0]["claim_token"], "done", handler_started=now - 0.8),
        Outcome(ahead[1]["id"], ahead[1]["claim_token"], "done", handler_started=now - 0.3),
    )
    rows = await store.pool.fetch(
        "SELECT id, extract(epoch FROM finished_at - started_at) AS ago FROM tasks "
        "WHERE id = ANY($1)",
        [row["id"] for row in ahead],
    )
    ago = {row["id"]: float(row["ago"]) for row in rows}
    assert 0.75 <= ago[ahead[0]["id"]] <= 1.3
    assert 0.25 <= ago[ahead[1]["id"]] <= 0.8
    assert ago[ahead[0]["id"]] > ago[ahead[1]["id"]]


async def test_burst_worker_claims_by_priority_and_exits_when_idle(
    store: Store, no_broker: Settings, user_id: int
) -> None:
    rows = await store.insert_tasks(
        user_id,
        [NewTask(new_task_id(), "test_noop", {"n": p}, p, 3, None) for p in (0, 50, -20, 100)],
    )
    async with worker_runtime(
        no_broker, build_registry(no_broker), concurrency=1, burst=True
    ) as worker:
        await asyncio.wait_for(worker.run(asyncio.Event()), 15)
    order = await store.pool.fetch(
        "SELECT payload->>'n' AS n FROM tasks WHERE id = ANY($1) ORDER BY started_at",
        [row["id"] for row in rows],
    )
    assert [int(row["n"]) for row in order] == [100, 50, 0, -20]


# ----- the hot-path queries use their indexes


async def test_claim_and_promotion_use_their_indexes_with_100k_finished_rows(
    store: Store, user_id: int
) -> None:
    await store.pool.execute(
        """
        INSERT INTO tasks (id, user_id, type, payload, status, attempts, finished_at, run_at)
        SELECT gen_random_uuid(), $1, 'test_noop', '{}', 'done', 1, now(), now()
        FROM generate_series(1, 100000)
        """,
        user_id,
    )
    await bulk_queued(store, user_id, 50)
    await store.pool.execute(
        """
        INSERT INTO tasks (id, user_id, type, payload, status, run_at)
        SELECT gen_random_uuid(), $1, 'test_noop', '{}', 'postponed', now() + interval '1 h'
        FROM generate_series(1, 50)
        """,
        user_id,
    )
    await store.pool.execute("ANALYZE tasks")
    plans = {"promote": ("tasks_due_idx", PROMOTE_DUE_TASKS, [100])}
    for name, (index, sql, args) in plans.items():
        # Plain EXPLAIN plans without executing, so nothing is claimed.
        plan = await store.pool.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
        assert index in str(plan), f"{name} does not use {index}: {plan}"
        assert "'tasks'" not in _seq_scans(plan), f"{name} scans tasks sequentially: {plan}"

    # The rescue rule is a SQL function, which EXPLAIN does not look into:
    # auto_explain reports the plans of the statements inside it instead.
    plans_inside = await _nested_plans(store, RESCUE_EXPIRED_LEASES, [100, 3])
    # Either partial index of processing rows serves it; never a scan of tasks.
    assert "tasks_lease_idx" in str(plans_inside) or "tasks_processing_user_idx" in str(
        plans_inside
    ), f"rescue does not use an index of processing rows: {plans_inside}"
    assert "'tasks'" not in _seq_scans(plans_inside), f"rescue scans tasks: {plans_inside}"
    # The claim of ids sent is a SQL function too (planned at each call):
    # an id it does not know claims nothing.
    claim = await _nested_plans(store, CLAIM_QUEUED_TASKS, [[uuid.uuid4()], "w", 30.0, 1])
    assert "tasks_pkey" in str(claim), f"the claim does not use it: {claim}"
    assert "'tasks'" not in _seq_scans(claim), f"the claim scans tasks: {claim}"
    # The fair pick walks each user's queued tasks in their index.
    pick = await _nested_plans(store, "SELECT * FROM taskflow_fair_pick($1, 0, '{}', 0)", [10])
    assert "tasks_queued_user_idx" in str(pick), f"the pick does not use it: {pick}"
    assert "'tasks'" not in _seq_scans(pick), f"the pick scans tasks: {pick}"


async def test_statements_by_id_probe_the_primary_key_whatever_the_statistics(
    store: Store, user_id: int
) -> None:
    """The worker's by-id statements must not read a churned partial index.

    The statistics below say the queued and processing slices are empty, as
    they do after an ANALYZE that saw none: a guard written as a plain
    ``status = 'processing'`` then made the planner read all of
    tasks_lease_idx (dead entries included) for every finish and heartbeat.
    """
    finished = await bulk_queued(store, user_id, 5000)
    claimed = await claim(store, finished, "w", 30)
    await finish(store, *(Outcome(row["id"], row["claim_token"], "done") for row in claimed))
    await store.pool.execute("ANALYZE tasks")
    fresh = await bulk_queued(store, user_id, 50)
    held = await claim(store, fresh[:25], "w", 30)
    ids, tokens = [row["id"] for row in held], [row["claim_token"] for row in held]
    n = len(held)
    statements = {
        "claim": (CLAIM_QUEUED_TASKS, [fresh[25:], "w", 30.0, 8]),
        "finish": (
            FINISH_PROCESSING_TASKS,
            [
                ids,
                tokens,
                ["done"] * n,
                [None] * n,
                [False] * n,
                [None] * n,
                [None] * n,
                2000,
                600000,
                [0.001] * n,
            ],
        ),
        "heartbeat": (EXTEND_LEASES, ["w", ids, tokens, 30.0]),
        "hand back": (HAND_BACK_TASKS, [ids, tokens]),
        "progress": (SAVE_TASK_PROGRESS, [ids[0], tokens[0], {"step": 1}]),
    }
    for name, (sql, args) in statements.items():
        if name == "claim":  # a SQL function: the plans of what it runs, rolled back
            plan = str(await _nested_plans(store, sql, args))
        else:
            plan = str(await store.pool.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
        assert "tasks_pkey" in plan, f"{name} does not probe the primary key: {plan}"
        for partial in ("tasks_queued_idx", "tasks_lease_idx"):
            assert partial not in plan, f"{name} reads {partial}: {plan}"


async def _nested_plans(store: Store, sql: str, args: list[Any]) -> list[Any]:
    """The plans of the statements ``sql`` runs, from auto_explain, with its
    changes rolled back."""
    notices: list[Any] = []

    def listener(_connection: Any, message: Any) -> None:
        notices.append(message)

    async with store.pool.acquire() as connection:
        connection.add_log_listener(listener)
        transaction = connection.transaction()
        await transaction.start()
        try:
            await connection.execute(
                """
                LOAD 'auto_explain';
                SET LOCAL auto_explain.log_min_duration = 0;
                SET LOCAL auto_explain.log_nested_statements = on;
                SET LOCAL auto_explain.log_format = json;
                SET LOCAL auto_explain.log_level = notice;
                SET LOCAL client_min_messages = notice;
                """
            )
            await connection.fetch(sql, *args)
        finally:
            await transaction.rollback()
            await connection.execute("RESET client_min_messages")
            connection.remove_log_listener(listener)
    plans = []
    for notice in notices:
        text = notice.message
        if "{" in text:
            plans.append(json.loads(text[text.index("{") :]))
    assert plans, "auto_explain reported no plans"
    return plans


def _seq_scans(plan: Any) -> str:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("Node Type") == "Seq Scan":
                found.append(f"'Relation Name': '{node.get('Relation Name')}'")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(plan)
    return " ".join(found)


async def test_scheduler_prunes_old_history_and_old_finished_tasks(
    store: Store, fast: Settings, user_id: int
) -> None:
    old, recent = await bulk_queued(store, user_id, 2)
    await store.pool.execute(
        """
        UPDATE tasks SET status = 'cancelled', finished_at = now() WHERE id = ANY($1);
        """,
        [old, recent],
    )
    settings = fast.model_copy(update={"history_retention_days": 10, "task_retention_days": 60})
    await store.pool.execute(
        "UPDATE task_history SET at = now() - interval '20 days' WHERE task_id = $1", recent
    )
    await store.pool.execute(
        "UPDATE tasks SET finished_at = now() - interval '61 days' WHERE id = $1", old
    )
    scheduler = Scheduler(settings, store, store, dispatcher=None)
    report = await scheduler.tick()  # the first tick prunes
    assert report.pruned >= 3
    assert await store.pool.fetchval("SELECT count(*) FROM tasks WHERE id = $1", old) == 0
    assert (
        await store.pool.fetchval("SELECT count(*) FROM task_history WHERE task_id = $1", old) == 0
    )
    # The recent task stays; only its history past retention went.
    assert await status_of(store, recent) == "cancelled"
    assert await events_of(store, recent) == []


async def test_retention_left_behind_is_pruned_at_the_next_tick_not_a_minute_later(
    store: Store, fast: Settings, user_id: int
) -> None:
    """A round is capped (50 batches); a rate above what one round a minute
    deletes must not grow the table for ever."""
    ids = await bulk_queued(store, user_id, 130)
    await store.pool.execute(
        "UPDATE tasks SET status = 'cancelled', finished_at = now() WHERE id = ANY($1)", ids
    )
    await store.pool.execute(
        "UPDATE tasks SET finished_at = now() - interval '61 days' WHERE id = ANY($1)", ids
    )
    settings = fast.model_copy(update={"task_retention_days": 60, "scheduler_batch_size": 1})
    scheduler = Scheduler(settings, store, store, dispatcher=None)

    async def left() -> int:
        count: int = await store.pool.fetchval("SELECT count(*) FROM tasks WHERE id = ANY($1)", ids)
        return count

    await scheduler.tick()  # the first tick prunes: one round, 50 batches of 1
    assert await left() == 80
    await scheduler.tick()
    assert await left() == 30
    await scheduler.tick()
    assert await left() == 0
    # Caught up: back to once a minute, so a task that expires now waits.
    [late] = await bulk_queued(store, user_id, 1)
    await store.pool.execute(
        "UPDATE tasks SET status = 'cancelled', finished_at = now() - interval '61 days' "
        "WHERE id = $1",
        late,
    )
    await scheduler.tick()
    assert await store.pool.fetchval("SELECT count(*) FROM tasks WHERE id = $1", late) == 1


async def test_a_statement_that_queues_tasks_rings_once(
    database: str, fast: Settings, store: Store, user_id: int
) -> None:
    """NOTIFY taskflow_queued wakes the dispatchers and idle workers: once per
    statement that queues tasks, not once per task (a NOTIFY serialises its
    transaction's commit), and not for a statement that queues nothing."""
    heard: list[str] = []
    listener = await connect(database)
    await listener.add_listener("taskflow_queued", lambda *args: heard.append(args[3]))
    try:
        await bulk_queued(store, user_id, 500)
        await store.insert_tasks(user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None)])
        await store.pool.execute(
            "INSERT INTO tasks (id, user_id, type, payload, status, run_at) VALUES "
            "(gen_random_uuid(), $1, 'test_noop', '{}', 'postponed', now() + interval '1 h')",
            user_id,
        )

        async def rang_twice() -> bool:
            return len(heard) >= 2

        await wait_until(rang_twice, timeout=5, what="two NOTIFYs")
        await asyncio.sleep(0.3)
        assert heard == ["", ""]
    finally:
        await listener.close()


async def test_scheduler_removes_stale_temporary_files_only(
    no_broker: Settings, store: Store
) -> None:
    """Writers that crashed leave hidden .tmp- files in user areas; a tick
    removes those older than temporary_file_max_age_seconds and nothing else."""
    base = no_broker.base_file_path
    old = time.time() - no_broker.temporary_file_max_age_seconds - 60
    stale, kept = [], []
    for user in ("1", "2", "30", "400"):
        area = base / user
        area.mkdir(parents=True)
        crashed = area / ".tmp-crashed"
        crashed.write_bytes(b"partial")
        os.utime(crashed, (old, old))
        stale.append(crashed)
        writing = area / ".tmp-writing"  # a write in progress
        writing.write_bytes(b"fresh")
        finished = area / "old-file.bin"  # a user's file, however old
        finished.write_bytes(b"mine")
        os.utime(finished, (old, old))
        kept += [writing, finished]
    scheduler = Scheduler(no_broker, store, store, dispatcher=None)
    report = await scheduler.tick()
    assert report.temporary_files_removed == len(stale)
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
