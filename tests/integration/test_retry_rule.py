"""The one retry rule (taskflow/retries.py), swept through every path that
applies it: the worker's fenced finish, the claim's ``last_attempt``, the
scheduler's rescue of lapsed leases and the operators' taskflow_requeue_stuck().

The oracle below is the rule as SPEC §3 states it; every path must agree with
it for every (attempts, max_retries, lease crashes) a task can be in.
"""

from __future__ import annotations

import itertools
import uuid

import pytest

from taskflow.models import TaskStatus
from taskflow.store.engine import Outcome
from tests.conftest import new_user
from tests.stores import Store, claim, finish

MAX_LEASE_CRASHES = 3
# (attempts, max_retries, lease_crashes): attempts of a running task run from 1
# to 1 + max_retries (the schema's bound).
STATES = [
    (attempts, max_retries, crashes)
    for max_retries in range(0, 5)
    for attempts in range(1, max_retries + 2)
    for crashes in range(0, MAX_LEASE_CRASHES)
]


def expected_after_error(attempts: int, max_retries: int, *, permanent: bool) -> TaskStatus:
    """SPEC §3: a task runs at most 1 + max_retries times; permanent errors end it."""
    if permanent or attempts >= max_retries + 1:
        return TaskStatus.FAILED
    return TaskStatus.RETRYING


async def _running_tasks(store: Store, states: list[tuple[int, int, int]]) -> list[uuid.UUID]:
    """Tasks in processing with the given counters, as if a worker held them."""
    user_id = await new_user(store, f"rule-{uuid.uuid4().hex[:6]}@example.com")
    ids = [uuid.uuid4() for _ in states]
    await store.pool.execute(
        """
        INSERT INTO tasks (id, user_id, type, payload, status, attempts, max_retries,
                           lease_crashes, worker_id, lease_expires_at, claim_token, started_at)
        SELECT s.id, $1, 'test_noop', '{}', 'processing', s.attempts, s.max_retries,
               s.crashes, 'rule-worker', now() + interval '1 hour',
               nextval('task_claim_token_seq'), now()
        FROM unnest($2::uuid[], $3::int[], $4::int[], $5::int[])
             AS s(id, attempts, max_retries, crashes)
        """,
        user_id,
        ids,
        [a for a, _, _ in states],
        [m for _, m, _ in states],
        [c for _, _, c in states],
    )
    return ids


@pytest.mark.parametrize("permanent", [False, True])
async def test_the_workers_finish_applies_the_rule(store: Store, permanent: bool) -> None:
    ids = await _running_tasks(store, STATES)
    tokens = dict(
        await store.pool.fetch("SELECT id, claim_token FROM tasks WHERE id = ANY($1)", ids)
    )
    ending = "permanent" if permanent else "transient"
    statuses = await finish(
        store, *(Outcome(task_id, tokens[task_id], ending, error="boom") for task_id in ids)
    )
    rows = {
        row["id"]: row
        for row in await store.pool.fetch(
            "SELECT id, status, run_at - now() AS delay, finished_at FROM tasks WHERE id = ANY($1)",
            ids,
        )
    }
    for task_id, (attempts, max_retries, _) in zip(ids, STATES, strict=True):
        want = expected_after_error(attempts, max_retries, permanent=permanent)
        assert statuses[task_id] == want, (attempts, max_retries, permanent)
        assert rows[task_id]["status"] == want
        if want is TaskStatus.RETRYING:
            # The backoff of the one rule: base 2 s doubled per attempt, equal jitter.
            ceiling = min(600.0, 2.0 * 2 ** (attempts - 1))
            seconds = rows[task_id]["delay"].total_seconds()
            assert ceiling / 2 - 1 <= seconds <= ceiling, (attempts, seconds)
            assert rows[task_id]["finished_at"] is None
        else:
            assert rows[task_id]["finished_at"] is not None


async def test_a_handlers_own_delay_wins_over_the_backoff(store: Store) -> None:
    [task_id] = await _running_tasks(store, [(1, 3, 0)])
    token = await store.pool.fetchval("SELECT claim_token FROM tasks WHERE id = $1", task_id)
    await finish(store, Outcome(task_id, token, "transient", error="429", delay_seconds=120))
    delay = await store.pool.fetchval("SELECT run_at - now() FROM tasks WHERE id = $1", task_id)
    assert 115 <= delay.total_seconds() <= 120


async def test_the_claim_tells_the_handler_whether_this_is_its_last_attempt(
    store: Store,
) -> None:
    user_id = await new_user(store)
    cases = [(attempts, max_retries) for max_retries in range(0, 4) for attempts in range(0, 4)]
    cases = [(a, m) for a, m in cases if a <= m]  # attempts before this claim
    ids = [uuid.uuid4() for _ in cases]
    await store.pool.execute(
        """
        INSERT INTO tasks (id, user_id, type, payload, status, attempts, max_retries)
        SELECT s.id, $1, 'test_noop', '{}', 'queued', s.attempts, s.max_retries
        FROM unnest($2::uuid[], $3::int[], $4::int[]) AS s(id, attempts, max_retries)
        """,
        user_id,
        ids,
        [a for a, _ in cases],
        [m for _, m in cases],
    )
    claimed = {row["id"]: row for row in await claim(store, ids, "w", 30)}
    for task_id, (before, max_retries) in zip(ids, cases, strict=True):
        attempt = before + 1
        last = expected_after_error(attempt, max_retries, permanent=False) is TaskStatus.FAILED
        assert claimed[task_id]["last_attempt"] is last, (attempt, max_retries)


@pytest.mark.parametrize("path", ["scheduler", "operator"])
async def test_a_lapsed_lease_is_rescued_by_the_same_rule(store: Store, path: str) -> None:
    ids = await _running_tasks(store, STATES)
    await store.pool.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = ANY($1)", ids
    )
    if path == "scheduler":
        rescued = await store.rescue_expired_leases(len(ids), MAX_LEASE_CRASHES)
        assert len(rescued) == len(ids)
    else:
        moved = await store.pool.fetchval(
            "SELECT taskflow_requeue_stuck(max_lease_crashes => $1)", MAX_LEASE_CRASHES
        )
        assert moved == len(ids)
    rows = {
        row["id"]: row
        for row in await store.pool.fetch(
            "SELECT id, status, lease_crashes, last_error FROM tasks WHERE id = ANY($1)", ids
        )
    }
    for task_id, (attempts, max_retries, crashes) in zip(ids, STATES, strict=True):
        quarantined = crashes + 1 >= MAX_LEASE_CRASHES
        want = expected_after_error(attempts, max_retries, permanent=quarantined)
        row = rows[task_id]
        assert row["status"] == want, (attempts, max_retries, crashes, path)
        assert row["lease_crashes"] == crashes + 1
        out_of_retries = attempts >= max_retries + 1
        assert ("quarantined" in row["last_error"]) is (quarantined and not out_of_retries)


async def test_backoff_is_bounded_jittered_and_grows(store: Store) -> None:
    for attempt, (base, cap) in itertools.product(
        [1, 2, 3, 10, 20, 62, 63, 1000], [(2000, 600_000), (100, 1000)]
    ):
        delays = [
            row[0]
            for row in await store.pool.fetch(
                "SELECT taskflow_backoff_seconds($1, $2, $3) FROM generate_series(1, 200)",
                attempt,
                base,
                cap,
            )
        ]
        ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62)) / 1000
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, base, cap)
        assert len(set(delays)) > 100  # jittered, not constant
