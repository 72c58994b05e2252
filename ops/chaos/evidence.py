"""What the run left behind, read once every process has stopped: the
database (tasks, their history, the workers), the handlers' marks and the
processes' logs; turned into the report's figures by ``ops.chaos.report``.
Anything that breaks a guarantee comes with its evidence: the task's
history rows and its runs."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import datetime
from typing import Any
from uuid import UUID

from ops.chaos.load import Producer
from ops.chaos.report import (
    Run,
    TaskEnd,
    completed_twice,
    distribution,
    find_overlaps,
    frozen_ran_on,
    interrupted_by_kills,
    kill_reruns,
    not_done,
    parse_marks,
    rerun_figures,
    slots_in_use,
    unended_runs,
    worker_pid,
)
from ops.chaos.scenario import RECOVERY_PAUSE_SECONDS, ServiceRestart, Timeline
from ops.chaos.stack import ChaosStack, log_records, record_time
from taskflow.config import Tunables

RERUN_LIMIT_SECONDS = 2.0  # SPEC §7.3, at default settings
RESCUE_EVENTS = ("worker_lost", "lease_expired")
RELEASE_EVENTS = (*RESCUE_EVENTS, "handed_back")
EVIDENCE_TASKS = 15

SELECT_TASKS = "SELECT id, status::text AS status, lease_crashes, last_error FROM tasks"
SELECT_COMPLETIONS = (
    "SELECT task_id, count(*) AS n FROM task_history WHERE event = 'completed' GROUP BY task_id"
)
SELECT_RELEASES = """
SELECT task_id, at, event, worker_id, attempt FROM task_history
WHERE event IN ('worker_lost', 'lease_expired', 'handed_back') ORDER BY id
"""
# What a worker itself wrote: its pool names it the actor (taskflow/runtime.py).
# The worker_id column is no guide: a rescued task keeps its last worker's id
# until its next claim, so the scheduler's 'due' row carries it too.
SELECT_WRITTEN_BY = """
SELECT task_id, at, event, attempt FROM task_history
WHERE actor = 'worker:' || $1 AND task_id = ANY($2::uuid[]) AND at > to_timestamp($3)
ORDER BY id
"""
SELECT_HISTORY = """
SELECT at, event, from_status::text AS from_status, to_status::text AS to_status, attempt,
       worker_id, error, actor
FROM task_history WHERE task_id = $1 ORDER BY id
"""


def _seconds(at: datetime) -> float:
    return at.timestamp()


def _run_dict(run: Run) -> dict[str, Any]:
    return {
        "attempt": run.attempt,
        "pid": run.pid,
        "start": run.start,
        "end": run.end,
        "stopped": run.stopped,
    }


class Evidence:
    def __init__(self, stack: ChaosStack, timeline: Timeline, producer: Producer) -> None:
        self.stack = stack
        self.timeline = timeline
        self.producer = producer
        self.runs: dict[UUID, list[Run]] = {}
        self.releases: list[Any] = []
        self.killed_at = timeline.killed_at

    async def gather(self) -> dict[str, Any]:
        pool = self.stack.chaos_store.pool
        tasks = await pool.fetch(SELECT_TASKS)
        completions = {row["task_id"]: row["n"] for row in await pool.fetch(SELECT_COMPLETIONS)}
        self.releases = list(await pool.fetch(SELECT_RELEASES))
        self.runs = parse_marks(self.stack.marks)
        ends = {
            row["id"]: TaskEnd(row["status"], row["lease_crashes"], row["last_error"])
            for row in tasks
        }
        # Everything in this database was created by this run; an insert that
        # raised (Postgres restarting) and yet committed is in it too.
        created = self.producer.created | set(ends)
        unfinished = not_done(created, ends, Tunables().max_lease_crashes)
        twice = completed_twice(completions)
        report: dict[str, Any] = {
            "tasks": {
                "created": len(created),
                "long": len(self.producer.long_ids),
                "short": len(self.producer.short_ids),
                "done": sum(1 for end in ends.values() if end.status == "done"),
                "runs": sum(len(runs) for runs in self.runs.values()),
                "lost": [str(t) for t in unfinished["lost"]],
                "quarantined": [str(t) for t in unfinished["quarantined"]],
                "completed_twice": [str(t) for t in twice],
                "by_status": dict(Counter(end.status for end in ends.values())),
            },
            "kills": self._kills(unfinished["quarantined"]),
            "overlaps": self._overlaps(),
            "freeze": await self._freeze(),
            "rabbitmq": self._restart(self.timeline.rabbitmq),
            "postgres": self._restart(self.timeline.postgres),
            "notes": self.timeline.notes,
            "exits": self.timeline.exits,
        }
        suspects = [
            *unfinished["lost"],
            *twice,
            *(UUID(o["task_id"]) for o in report["overlaps"]["listed"] if o["kind"] != "frozen"),
            *(
                UUID(r["task_id"])
                for r in report["kills"]["slowest"]
                if r["seconds"] > RERUN_LIMIT_SECONDS
            ),
            *(UUID(r["task_id"]) for r in report["kills"]["rerun"]["never_rerun"]),
        ]
        report["evidence"] = await self._evidence(list(dict.fromkeys(suspects)))
        return report

    # ----- the kills

    def _killed_worker(self, row: Any) -> int | None:
        """The pid of the killed worker a history row is about, when the row
        came after the kill (the same worker's rows before it do not count)."""
        pid = worker_pid(row["worker_id"])
        if pid is None or pid not in self.killed_at:
            return None
        return pid if _seconds(row["at"]) >= self.killed_at[pid] else None

    def _kills(self, quarantined: list[UUID]) -> dict[str, Any]:
        killed_at = self.killed_at
        rescued_from = []
        kill_to_rescue = []
        rescue_events: Counter[str] = Counter()
        for row in self.releases:
            pid = self._killed_worker(row)
            if row["event"] in RESCUE_EVENTS and pid is not None:
                rescued_from.append((row["task_id"], pid, _seconds(row["at"])))
                kill_to_rescue.append(_seconds(row["at"]) - killed_at[pid])
                rescue_events[row["event"]] += 1
        interrupted = interrupted_by_kills(self.runs, killed_at, rescued_from)
        reruns = kill_reruns(interrupted, killed_at, self.runs)
        frozen_during = {kill.pid for kill in self.timeline.kills if kill.while_frozen}
        slowest = sorted(
            (r for r in reruns if r.seconds is not None), key=lambda r: -(r.seconds or 0)
        )[:10]
        return {
            "count": len(self.timeline.kills),
            "list": [
                {
                    "pid": kill.pid,
                    "at": kill.at,
                    "while_frozen": kill.while_frozen,
                    "holding_tasks": kill.holding_tasks,
                }
                for kill in self.timeline.kills
            ],
            "interrupting": len({pid for _, pid in interrupted}),
            "interrupted_tasks": len(interrupted),
            "while_frozen": len(frozen_during),
            "of_workers_holding_tasks": sum(
                1 for kill in self.timeline.kills if kill.holding_tasks
            ),
            "rescued_by_event": dict(rescue_events),
            "kill_to_rescue": distribution(kill_to_rescue),
            "rerun": rerun_figures(reruns, quarantined),
            "rerun_while_frozen": distribution(
                r.seconds for r in reruns if r.seconds is not None and r.killed_pid in frozen_during
            ),
            "over_limit": sum(1 for r in reruns if (r.seconds or 0) > RERUN_LIMIT_SECONDS),
            "slowest": [
                {"task_id": str(r.task_id), "killed_pid": r.killed_pid, "seconds": r.seconds}
                for r in slowest
            ],
        }

    def _overlaps(self) -> dict[str, Any]:
        overlaps = find_overlaps(self.runs, self.killed_at, self.timeline.freeze)
        unended = unended_runs(self.runs, self.killed_at)
        return {
            "by_kind": dict(Counter(o.kind for o in overlaps)),
            "killed": sum(1 for o in overlaps if o.kind == "killed"),
            "live": sum(1 for o in overlaps if o.kind == "live"),
            "unended_runs": [
                {"task_id": str(run.task_id), **_run_dict(run)} for run in unended[:EVIDENCE_TASKS]
            ],
            "listed": [
                {
                    "task_id": str(o.task_id),
                    "kind": o.kind,
                    "seconds": o.seconds,
                    "earlier": _run_dict(o.earlier),
                    "later": _run_dict(o.later),
                }
                for o in overlaps[: EVIDENCE_TASKS * 2]
            ],
        }

    # ----- the freeze

    async def _freeze(self) -> dict[str, Any] | None:
        freeze = self.timeline.freeze
        if freeze is None:
            return None
        rows = await self.stack.chaos_store.pool.fetch(
            "SELECT id FROM workers WHERE pid = $1", freeze.pid
        )
        worker_id = rows[0]["id"] if rows else None
        rescued = [
            row
            for row in self.releases
            if worker_pid(row["worker_id"]) == freeze.pid
            and row["event"] in RESCUE_EVENTS
            and _seconds(row["at"]) > freeze.stopped_at
            and _seconds(row["at"]) < freeze.continued_at
        ]
        written = []
        if worker_id is not None:
            later = await self.stack.chaos_store.pool.fetch(
                SELECT_WRITTEN_BY, worker_id, [row["task_id"] for row in rescued], freeze.stopped_at
            )
            claimed_again: set[UUID] = set()
            for row in later:
                # Once resumed, the worker may claim one of them anew: what it
                # writes from then on belongs to that new attempt.
                if row["event"] == "claimed":
                    claimed_again.add(row["task_id"])
                elif row["task_id"] not in claimed_again:
                    written.append(
                        {
                            "task_id": str(row["task_id"]),
                            "event": row["event"],
                            "attempt": row["attempt"],
                        }
                    )
        child = self.stack.by_pid(freeze.pid)
        log_events: Counter[str] = Counter()
        if child is not None:
            for record in log_records(child.log_path):
                if record.get("event") and record_time(record) >= freeze.continued_at:
                    log_events[str(record["event"])] += 1
        ran_on = frozen_ran_on(self.runs, freeze)
        return {
            "pid": freeze.pid,
            "worker_id": worker_id,
            "stopped_at": freeze.stopped_at,
            "continued_at": freeze.continued_at,
            "frozen_seconds": freeze.continued_at - freeze.stopped_at,
            "probe": str(self.timeline.probe),
            "rescued": len(rescued),
            "rescued_by_event": dict(Counter(row["event"] for row in rescued)),
            "rescued_after": distribution(
                _seconds(row["at"]) - freeze.stopped_at for row in rescued
            ),
            "held_runs": ran_on,
            "ran_on_max_seconds": max(
                (r["ran_on_seconds"] for r in ran_on if r["ran_on_seconds"] is not None),
                default=None,
            ),
            "outcomes_written": written,
            "log_after_resume": {
                key: log_events[key]
                for key in ("lease_lost", "task_stopped", "fenced_out", "task_outcome")
            },
        }

    # ----- the service restarts

    def _restart(self, restart: ServiceRestart | None) -> dict[str, Any] | None:
        if restart is None:
            return None
        end = (restart.recovered_at or restart.up_at or restart.began) + RECOVERY_PAUSE_SECONDS
        starts = sorted(
            run.start
            for runs in self.runs.values()
            for run in runs
            if restart.began - 5 <= run.start <= end
        )
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        stopped = [
            (run.task_id, run.stopped)
            for runs in self.runs.values()
            for run in runs
            if run.stopped is not None and restart.began <= run.stopped <= end
        ]
        restart_reruns = []
        for task_id, stopped_at in stopped:
            after = [r.start for r in self.runs[task_id] if r.start > stopped_at]
            if after:
                restart_reruns.append(min(after) - restart.began)
        releases = Counter(
            row["event"]
            for row in self.releases
            if restart.began <= _seconds(row["at"]) <= end and self._killed_worker(row) is None
        )
        first_start = min((s for s in starts if s > (restart.up_at or restart.began)), default=None)
        return {
            "service": restart.service,
            "error": restart.error,
            "command_seconds": (restart.up_at or restart.began) - restart.began,
            "outage_seconds": (
                restart.up_at - restart.down_at
                if restart.up_at is not None and restart.down_at is not None
                else None
            ),
            "recovered_after_up_seconds": (
                restart.recovered_at - restart.up_at
                if restart.recovered_at is not None and restart.up_at is not None
                else None
            ),
            "reconnected_after_start_seconds": (
                restart.recovered_at - restart.start_at
                if restart.recovered_at is not None and restart.start_at is not None
                else None
            ),
            "first_start_after_up_seconds": (
                first_start - restart.up_at if first_start and restart.up_at else None
            ),
            "started_while_down": sum(
                1 for s in starts if (restart.down_at or restart.began) <= s <= (restart.up_at or 0)
            ),
            "longest_start_gap_seconds": max(gaps, default=None),
            "handlers_stopped": len(stopped),
            "releases_by_event": dict(releases),
            "stopped_to_rerun_from_began": distribution(restart_reruns),
        }

    # ----- evidence

    def _slots_in_use(self, at: float) -> dict[int, int]:
        ready = {
            child.pid: min(times)
            for child in self.stack.children
            if child.name.startswith("worker")
            and (times := self.stack.log_times(child, "worker_started"))
        }
        return slots_in_use(self.runs, at, ready, self.killed_at, self.timeline.freeze)

    async def _evidence(self, task_ids: list[UUID]) -> list[dict[str, Any]]:
        pool = self.stack.chaos_store.pool
        found = []
        for task_id in task_ids[:EVIDENCE_TASKS]:
            history = await pool.fetch(SELECT_HISTORY, task_id)
            released = [_seconds(row["at"]) for row in history if row["event"] in RELEASE_EVENTS]
            found.append(
                {
                    "task_id": str(task_id),
                    "history": [{**dict(row), "at": _seconds(row["at"])} for row in history],
                    # Handlers running per live worker just after each release
                    # of the task, and a second later (slots: --concurrency).
                    "slots_in_use_after_release": [
                        {
                            "at": at,
                            "then": self._slots_in_use(at + 0.05),
                            "a_second_later": self._slots_in_use(at + 1.0),
                        }
                        for at in released
                    ],
                    "runs": [_run_dict(run) for run in self.runs.get(task_id, [])],
                    "kills_of_its_workers": {
                        str(run.pid): self.killed_at[run.pid]
                        for run in self.runs.get(task_id, [])
                        if run.pid in self.killed_at
                    },
                }
            )
        return found
