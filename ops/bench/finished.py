"""Finished tasks present before anything is measured (``--finished N``, 0
by default): the states of a service that has run for a while, so the drain,
latency and backlog are measured beside N done tasks and their 3 N history
rows, as after weeks of retention.

They belong to a user of their own, are written in chunks by SQL (created,
claimed and completed in one transaction each, so nothing ever sees them
queued), and the tables are vacuumed and analyzed before the first phase.
"""

from __future__ import annotations

import time

from ops.bench.options import TASK_TYPE
from ops.bench.progress import Progress
from ops.bench.stack import Stack
from taskflow.store.pool import connect

CHUNK = 250_000
# Measurement only: the product's runtime queries live in taskflow/store/.
INSERT_OWNER = """
INSERT INTO users (email, password_hash) VALUES ('finished@bench.invalid', 'not a hash')
RETURNING id
"""
# Nothing wakes for them: no NOTIFY, and they are done before they commit.
INSERT_QUEUED = """
INSERT INTO tasks (id, user_id, type, payload, status)
SELECT gen_random_uuid(), $1, $2, jsonb_build_object('seq', -n), 'queued'
FROM generate_series(1, $3) AS n
"""
CLAIM = """
UPDATE tasks SET status = 'processing', attempts = 1, worker_id = 'bench-finished',
    started_at = now(), lease_expires_at = now() + interval '1 minute', claim_token = 0
WHERE user_id = $1 AND status = 'queued'
"""
FINISH = """
UPDATE tasks SET status = 'done', result = '{"ok": true}', lease_expires_at = NULL
WHERE user_id = $1 AND status = 'processing'
"""


async def fill_finished(stack: Stack, count: int) -> float:
    """Write ``count`` finished tasks with their history; returns the seconds it took."""
    print(f"# {count:,} finished tasks present (filling)", flush=True)
    connection = await connect(stack.dsn, application_name="taskflow-bench-finished")
    written = 0
    started = time.perf_counter()
    try:
        owner = int(await connection.fetchval(INSERT_OWNER))
        async with Progress("finished fill", count, lambda: written, unit="tasks written"):
            while written < count:
                size = min(CHUNK, count - written)
                async with connection.transaction():
                    await connection.execute("SET LOCAL taskflow.notify_queued = off")
                    await connection.execute(INSERT_QUEUED, owner, TASK_TYPE, size)
                    await connection.execute(CLAIM, owner)
                    await connection.execute(FINISH, owner)
                written += size
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()
    seconds = time.perf_counter() - started
    print(f"  written and vacuumed in {seconds:.1f} s", flush=True)
    return seconds
