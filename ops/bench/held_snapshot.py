"""The held-snapshot phase (``--held-snapshot S``, 0 skips): what the drain
keeps while one transaction holds a snapshot open for S seconds, as a
forgotten ``BEGIN`` in psql or a long report does.

Vacuum cannot remove any row version the snapshot may still see, so every
claim and finish leaves dead versions (and dead entries in the partial
indexes the claim and the pick read) until the transaction ends. The phase
fills and drains ``--drain`` tasks again and again until S seconds have
passed, then reports the last drain's rate against the first, and the dead
row versions the tables held when the snapshot let go.
"""

from __future__ import annotations

import time

from ops.bench.drain import measure_drain
from ops.bench.options import TASK_TYPE
from ops.bench.report import Report
from ops.bench.stack import Stack
from taskflow.enqueue import new_task_id
from taskflow.store.pool import connect
from taskflow.store.tasks import NewTask

# Measurement only: the product's runtime queries live in taskflow/store/.
SELECT_DEAD_ROWS = """
SELECT relname, n_dead_tup FROM pg_stat_user_tables
WHERE relname IN ('tasks', 'task_history')
"""


async def _fill_and_drain(stack: Stack, report: Report, round_number: int) -> float:
    assert stack.store is not None
    seqs = stack.seqs(stack.options.drain)
    block = stack.collector.expect(seqs.start, len(seqs))
    tasks = [NewTask(new_task_id(), TASK_TYPE, {"seq": s}, 0, 3, None) for s in seqs]
    await stack.store.insert_tasks(stack.user_id, tasks)
    drain = await measure_drain(
        stack, report, "held snapshot", block, f"held snapshot, drain {round_number}"
    )
    await stack.stop_workers()
    return float(drain["tasks"]) / max(float(drain["seconds"]), 1e-9)


async def _dead_rows(dsn: str) -> dict[str, int]:
    # A fresh connection: statistics are cached per transaction.
    connection = await connect(dsn, application_name="taskflow-bench-stats")
    try:
        rows = await connection.fetch(SELECT_DEAD_ROWS)
    finally:
        await connection.close()
    return {row["relname"]: int(row["n_dead_tup"]) for row in rows}


async def run_held_snapshot(stack: Stack, report: Report) -> None:
    seconds = stack.options.held_snapshot_seconds
    print(f"# drains while one transaction holds a snapshot for {seconds:.0f} s", flush=True)
    holder = await connect(stack.dsn, application_name="taskflow-bench-held-snapshot")
    rates: list[float] = []
    try:
        transaction = holder.transaction(isolation="repeatable_read")
        await transaction.start()
        await holder.fetchval("SELECT count(*) FROM tasks")  # the snapshot is taken here
        deadline = time.monotonic() + seconds
        while True:
            rates.append(await _fill_and_drain(stack, report, len(rates) + 1))
            print(f"  drain {len(rates)}: {rates[-1]:,.0f} tasks/s", flush=True)
            if time.monotonic() >= deadline:
                break
        dead = await _dead_rows(stack.dsn)
        await transaction.rollback()
    finally:
        await holder.close()
    report.details["held_snapshot"] = {"seconds": seconds, "rates": rates, "dead_rows": dead}
    report.add(
        "held_snapshot_drain_ratio",
        f"drain after {seconds:.0f} s of a held snapshot / the first drain under it",
        round(rates[-1] / rates[0], 3),
        "x",
        f"{len(rates)} drains of {stack.options.drain:,}: first {rates[0]:,.0f}/s, "
        f"last {rates[-1]:,.0f}/s; dead row versions kept: tasks {dead.get('tasks', 0):,}, "
        f"task_history {dead.get('task_history', 0):,}",
    )
