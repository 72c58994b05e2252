"""``taskflow migrate``: the schema, forward only, and the SQL that is re-applied.

Two kinds of SQL files:

- Versioned migrations, ``db/migrations/NNNN_*.sql``: tables, types, indexes,
  triggers. Each is applied once, in order, in its own transaction, and never
  edited after it landed: a changed file is refused.
- Repeatable SQL, ``db/functions/*.sql`` (the engine's functions) then
  ``ops/sql/*.sql`` (the operators' views and functions): each file is written
  with CREATE OR REPLACE and is the one source of what it defines. After the
  versioned migrations, when any of them is new or changed, or a versioned
  migration was just applied, all of them are applied again in that order, in
  one transaction, so a view always sees the functions it uses. Changing one
  is editing its file.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from taskflow.errors import ConfigError
from taskflow.store.pool import Connection, connect

log = logging.getLogger(__name__)

MIGRATIONS_LOCK_ID = 0x7461736B666C6F77  # "taskflow": one migrator at a time, cluster-wide per DB

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED_MIGRATIONS = "SELECT version, checksum FROM schema_migrations"
INSERT_APPLIED_MIGRATION = "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)"
CREATE_REPEATABLES_TABLE = """
CREATE TABLE IF NOT EXISTS schema_repeatables (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED_REPEATABLES = "SELECT name, checksum FROM schema_repeatables"
DELETE_APPLIED_REPEATABLES = "DELETE FROM schema_repeatables"
INSERT_APPLIED_REPEATABLE = "INSERT INTO schema_repeatables (name, checksum) VALUES ($1, $2)"
# A new database's first task_history partitions: today and two days ahead,
# a day wide (the width at the default retention; the scheduler's retention
# duty goes on from the last one at its own). Without them, history written
# before the scheduler's first round lands in the default partition, and
# that day then gets no partition of its own (see taskflow_history_extend).
HISTORY_PARTITIONS_READY = """
SELECT to_regclass('task_history_default') IS NOT NULL
   AND to_regprocedure('taskflow_history_extend(interval, timestamptz, timestamptz, integer)')
       IS NOT NULL
"""
CREATE_FIRST_HISTORY_PARTITIONS = """
SELECT taskflow_history_extend(interval '1 day', now(), now() + interval '2 days')
WHERE NOT EXISTS (
    SELECT 1 FROM pg_inherits i
    WHERE i.inhparent = 'task_history'::regclass
      AND i.inhrelid <> 'task_history_default'::regclass
)
"""

# (directory in the repository, its copy inside an installed wheel), in the
# order they are applied. pyproject.toml force-includes each into the wheel.
SQL_SOURCES = {
    "migrations": (("db", "migrations"), "_migrations"),
    "functions": (("db", "functions"), "_sql_functions"),
    "operators": (("ops", "sql"), "_sql_operators"),
}
REPEATABLE_SOURCES = ("functions", "operators")


@dataclass(frozen=True)
class SqlFile:
    # A migration's version ("0001_initial"); a repeatable file's path in the
    # repository ("db/functions/10_retry_rule.sql"), the same in a wheel.
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_directory(source: str) -> Path:
    """A source's directory in the repository, or its copy inside a wheel."""
    parts, packaged = SQL_SOURCES[source]
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent.joinpath(*parts), package / packaged):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"cannot find {'/'.join(parts)}")


def migrations_directory() -> Path:
    return sql_directory("migrations")


def versioned_files(directory: Path) -> list[SqlFile]:
    """The versioned migrations in ``directory``, in order; named by stem."""
    return [
        SqlFile(path.stem, path.read_text(encoding="utf-8"))
        for path in sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    ]


def repeatable_files() -> list[SqlFile]:
    """Every repeatable file, in the order they are applied."""
    files = []
    for source in REPEATABLE_SOURCES:
        prefix = "/".join(SQL_SOURCES[source][0])
        for path in sorted(sql_directory(source).glob("*.sql")):
            files.append(SqlFile(f"{prefix}/{path.name}", path.read_text(encoding="utf-8")))
    return files


async def apply_migrations(
    dsn: str, directory: Path | None = None, *, repeatables: list[SqlFile] | None = None
) -> list[str]:
    """Apply what is new: versioned migrations, then the repeatable SQL if
    any of it changed. Returns the names of what was applied.

    An advisory lock makes concurrent migrators wait for each other; a
    versioned file whose checksum changed after it was applied is refused.
    """
    versioned = versioned_files(directory or migrations_directory())
    repeatables = repeatable_files() if repeatables is None else repeatables
    connection = await connect(dsn, application_name="taskflow-migrate")
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATIONS_LOCK_ID)
        try:
            applied = await _apply_versioned(connection, versioned)
            # Also after any new migration: it may have dropped what a
            # repeatable file defines (a view over a table it rebuilt).
            applied += await _apply_repeatables(connection, repeatables, force=bool(applied))
            if await connection.fetchval(HISTORY_PARTITIONS_READY):
                await connection.execute(CREATE_FIRST_HISTORY_PARTITIONS)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATIONS_LOCK_ID)
    finally:
        await connection.close()
    return applied


async def _apply_versioned(connection: Connection, files: list[SqlFile]) -> list[str]:
    await connection.execute(CREATE_MIGRATIONS_TABLE)
    applied = {
        row["version"]: row["checksum"] for row in await connection.fetch(SELECT_APPLIED_MIGRATIONS)
    }
    applied_now: list[str] = []
    for migration in files:
        version = migration.name
        if version in applied:
            if applied[version] != migration.checksum:
                raise ConfigError(
                    f"migration {version}.sql changed after it was applied; "
                    "migrations only move forward: add a new file instead"
                )
            continue
        async with connection.transaction():
            await connection.execute(migration.sql)
            await connection.execute(INSERT_APPLIED_MIGRATION, version, migration.checksum)
        applied_now.append(version)
        log.info("migration applied", extra={"event": "migration", "version": version})
    return applied_now


async def _apply_repeatables(
    connection: Connection, files: list[SqlFile], *, force: bool = False
) -> list[str]:
    await connection.execute(CREATE_REPEATABLES_TABLE)
    recorded = {
        row["name"]: row["checksum"] for row in await connection.fetch(SELECT_APPLIED_REPEATABLES)
    }
    if recorded == {f.name: f.checksum for f in files} and not force:
        return []
    changed = [f.name for f in files if recorded.get(f.name) != f.checksum]
    async with connection.transaction():
        for sql_file in files:
            try:
                await connection.execute(sql_file.sql)
            except asyncpg.PostgresError as exc:
                raise ConfigError(f"{sql_file.name}: {exc}") from exc
        await connection.execute(DELETE_APPLIED_REPEATABLES)
        await connection.executemany(
            INSERT_APPLIED_REPEATABLE, [(f.name, f.checksum) for f in files]
        )
    log.info("repeatable SQL applied", extra={"event": "migration", "changed": changed})
    return changed
