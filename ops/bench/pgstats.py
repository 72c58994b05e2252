"""Postgres's cost per task: row writes per table, commits and WAL bytes, as
the change of the server's cumulative counters over a phase (the same window
as the shared harness's ``pg_writes``)."""

from __future__ import annotations

from typing import Any

from taskflow.store.pool import connect

# Measurement only: the product's runtime queries live in taskflow/store/.
SELECT_TABLE_STATS = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, seq_scan,
       coalesce(idx_scan, 0) AS idx_scan
FROM pg_stat_user_tables
"""
SELECT_COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
SELECT_WAL_POSITION = "SELECT pg_current_wal_lsn()::text"
# asyncpg has no codec for pg_lsn parameters: positions travel as text.
SELECT_WAL_DIFF = "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)"


async def pg_stats(dsn: str) -> dict[str, Any]:
    """Cumulative counters: row changes per table, commits, WAL position.
    A fresh connection each time: statistics are cached per transaction."""
    connection = await connect(dsn, application_name="taskflow-bench-stats")
    try:
        tables = {
            row["relname"]: [int(row[k]) for k in list(row.keys())[1:]]
            for row in await connection.fetch(SELECT_TABLE_STATS)
        }
        commits = int(await connection.fetchval(SELECT_COMMITS))
        wal = str(await connection.fetchval(SELECT_WAL_POSITION))
    finally:
        await connection.close()
    return {"tables": tables, "commits": commits, "wal": wal}


async def pg_stats_delta(
    dsn: str, before: dict[str, Any], after: dict[str, Any], tasks: int
) -> dict[str, Any]:
    connection = await connect(dsn, application_name="taskflow-bench-stats")
    try:
        wal_bytes = float(await connection.fetchval(SELECT_WAL_DIFF, after["wal"], before["wal"]))
    finally:
        await connection.close()
    per_table: dict[str, dict[str, float]] = {}
    writes = 0
    for table, values in sorted(after["tables"].items()):
        old = before["tables"].get(table, [0] * len(values))
        inserted, updated, deleted, hot, seq_scan, idx_scan = (
            a - b for a, b in zip(values, old, strict=True)
        )
        writes += inserted + updated + deleted
        if inserted or updated or deleted or seq_scan or idx_scan:
            per_table[table] = {
                "inserted": round(inserted / tasks, 3),
                "updated": round(updated / tasks, 3),
                "deleted": round(deleted / tasks, 3),
                "hot_updated": round(hot / tasks, 3),
                "seq_scans": seq_scan,
                "index_scans": idx_scan,
            }
    return {
        "tasks": tasks,
        "row_writes_per_task": round(writes / tasks, 3),
        "commits_per_task": round((after["commits"] - before["commits"]) / tasks, 3),
        "wal_bytes_per_task": round(wal_bytes / tasks),
        "per_table": per_table,
    }
