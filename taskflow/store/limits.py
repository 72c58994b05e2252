"""Limits and fair share (SPEC §8) as their users and operators see them:
a user's own overrides and current use (``GET /api/limits``), and every
user's share of the running slots (``taskflow status``, from the
taskflow_user_shares view of ops/sql/18_user_shares.sql).

The use is counted the way the limits count it when they are enforced:
unfinished tasks as taskflow_admit() does, running tasks (processing or on
their way to a worker) and emails started in the last minute as the fair
pick does (db/functions/50_fair_dispatch.sql).
"""

from __future__ import annotations

import asyncpg

from taskflow.errors import ConfigError
from taskflow.store.pool import Queries, Record

# One row even for a user without a user_limits row (its overrides NULL).
# The unfinished tasks are counted a status at a time, each on its partial
# index (tasks_queued_user_idx, tasks_processing_user_idx,
# tasks_waiting_user_idx): one ANY(...) over all five walks every task the
# user ever had. Together they are the statuses outside TERMINAL, as in
# taskflow_admit(); tests/integration/test_limits_api.py covers each.
#
# Emails created today: user_email_days is what email_per_user_per_day is
# held to (a deleted task still counts), but it is kept only while that
# limit is on; the tasks created today fill in when it was off.
SELECT_LIMITS_AND_USE = """
SELECT l.weight, l.max_running, l.max_active_tasks, l.email_per_minute, l.email_per_day,
       l.files_max_bytes, l.max_schedules,
       (SELECT count(*) FROM tasks t WHERE t.user_id = $1 AND t.status = 'queued')
       + (SELECT count(*) FROM tasks t WHERE t.user_id = $1 AND t.status = 'processing')
       + (SELECT count(*) FROM tasks t
          WHERE t.user_id = $1 AND t.status IN ('blocked', 'postponed', 'retrying'))
       AS active_tasks,
       (SELECT count(*) FROM tasks t WHERE t.user_id = $1 AND t.status = 'processing')
       + (SELECT count(*) FROM dispatched_tasks d WHERE d.user_id = $1) AS running_tasks,
       greatest(
           (SELECT d.created FROM user_email_days d
            WHERE d.user_id = $1 AND d.day = (now() AT TIME ZONE 'UTC')::date),
           (SELECT count(*) FROM tasks e
            WHERE e.user_id = $1 AND e.type = 'send_email'
              AND e.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
       ) AS emails_today,
       (SELECT count(*) FROM tasks e
        WHERE e.user_id = $1 AND e.type = 'send_email'
          AND e.started_at > now() - interval '1 minute') AS emails_last_minute,
       (SELECT count(*) FROM schedules s WHERE s.user_id = $1) AS schedules
FROM (SELECT 1) AS one
LEFT JOIN user_limits l ON l.user_id = $1
"""
# count(*) OVER (): how many users have unfinished work, while only $1 rows travel.
SELECT_USER_SHARES = """
SELECT user_id, email, weight, running, dispatched, queued, unfinished, running_share,
       max_running, email_per_minute, emails_last_minute, held_by,
       count(*) OVER () AS total
FROM taskflow_user_shares
LIMIT $1
"""


class LimitsStore(Queries):
    async def select_limits_and_use(self, user_id: int) -> Record:
        """The user's user_limits overrides (None: the default applies) and
        their use: ``active_tasks``, ``running_tasks``, ``emails_today``,
        ``emails_last_minute``, ``schedules``. File bytes are on disk, not here."""
        row = await self.pool.fetchrow(SELECT_LIMITS_AND_USE, user_id)
        assert row is not None  # the LEFT JOIN from one row always makes one
        return row

    async def select_user_shares(self, limit: int) -> list[Record]:
        """The first ``limit`` rows of taskflow_user_shares (the busiest users
        first), each with ``total``: the users with unfinished work."""
        try:
            return await self.pool.fetch(SELECT_USER_SHARES, limit)
        except asyncpg.UndefinedTableError as exc:
            raise ConfigError(
                f"the operator views are missing ({exc}): run `taskflow migrate`"
            ) from exc
