"""The chaos run's figures, computed from handler marks and task history.

Pure code (no database, no processes), so tests/unit/test_chaos_report.py
checks it on synthetic marks. A *run* is one execution of a handler, read
from its mark file (ops/chaos/plugin.py): its task, attempt, process, start,
and ``end`` (the sleep finished) or ``stopped`` (its worker cancelled it), or
neither when its process was killed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

TERMINAL = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True)
class Run:
    task_id: UUID
    attempt: int
    pid: int
    start: float
    end: float | None = None
    stopped: float | None = None

    @property
    def finished(self) -> float | None:
        """When the handler stopped running, by its own mark."""
        return self.end if self.end is not None else self.stopped


@dataclass(frozen=True)
class Freeze:
    """One worker process held by SIGSTOP from ``stopped_at`` to ``continued_at``."""

    pid: int
    stopped_at: float
    continued_at: float


@dataclass(frozen=True)
class Overlap:
    """``later`` started before ``earlier`` (same task) had ended.

    ``kind``: ``frozen`` when the earlier run was under way in the frozen
    worker when it was stopped, ``killed`` when the earlier run's process was
    killed (it ended at its end mark or its kill), else ``live``: two live
    runs at once."""

    task_id: UUID
    earlier: Run
    later: Run
    kind: str
    seconds: float


@dataclass(frozen=True)
class Rerun:
    task_id: UUID
    killed_pid: int
    killed_at: float
    rerun_at: float | None  # None: never ran again

    @property
    def seconds(self) -> float | None:
        return None if self.rerun_at is None else self.rerun_at - self.killed_at


def worker_pid(worker_id: str | None) -> int | None:
    """The pid in a worker id (``host:pid:suffix``)."""
    if not worker_id:
        return None
    parts = worker_id.split(":")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


def all_connected_at(connections: Mapping[str, Iterable[float]], since: float) -> float | None:
    """When the last of the processes connected after ``since``: each one's
    first connection after it, the latest of those; None while one has none."""
    firsts = []
    for times in connections.values():
        after = [at for at in times if at > since]
        if not after:
            return None
        firsts.append(min(after))
    return max(firsts, default=since)


def parse_marks(directory: Path) -> dict[UUID, list[Run]]:
    """Every run in the marks directory, per task, in order of start."""
    runs: dict[UUID, list[Run]] = defaultdict(list)
    for path in directory.iterdir():
        if path.name.startswith("."):  # a start mark its process died writing
            continue
        task, attempt, pid = path.name.split(".")
        moments: dict[str, float] = {}
        for line in path.read_text().splitlines():
            what, _, at = line.partition(" ")
            moments.setdefault(what, float(at))
        runs[UUID(task)].append(
            Run(
                task_id=UUID(task),
                attempt=int(attempt),
                pid=int(pid),
                start=moments["start"],
                end=moments.get("end"),
                stopped=moments.get("stopped"),
            )
        )
    for task_runs in runs.values():
        task_runs.sort(key=lambda run: run.start)
    return dict(runs)


def run_ended(run: Run, killed_at: Mapping[int, float]) -> float | None:
    """When a run stopped: its own mark, else its process's kill; None if neither."""
    if run.finished is not None:
        return run.finished
    return killed_at.get(run.pid)


def find_overlaps(
    runs: Mapping[UUID, list[Run]],
    killed_at: Mapping[int, float],
    freeze: Freeze | None = None,
) -> list[Overlap]:
    """Every pair of runs of one task where the later one started before the
    earlier one ended. A run that never ended (no mark, process not killed)
    overlaps everything after it."""
    found: list[Overlap] = []
    for task_id, task_runs in runs.items():
        ordered = sorted(task_runs, key=lambda run: run.start)
        for index, earlier in enumerate(ordered):
            ended = run_ended(earlier, killed_at)
            for later in ordered[index + 1 :]:
                if ended is not None and later.start >= ended:
                    continue
                if (
                    freeze is not None
                    and earlier.pid == freeze.pid
                    and earlier.start < freeze.stopped_at
                    and (ended is None or ended > freeze.stopped_at)
                ):
                    kind = "frozen"  # held across the freeze (its process may die later)
                elif earlier.pid in killed_at:
                    kind = "killed"
                else:
                    kind = "live"
                seconds = math.inf if ended is None else ended - later.start
                found.append(Overlap(task_id, earlier, later, kind, seconds))
    return found


def slots_in_use(
    runs: Mapping[UUID, list[Run]],
    at: float,
    ready_at: Mapping[int, float],
    killed_at: Mapping[int, float],
    freeze: Freeze | None = None,
) -> dict[int, int]:
    """Per worker that was ready (``ready_at``: pid -> when), alive and not
    frozen at ``at``: how many handlers it was running then. Beside a task
    that waited, it tells a wait for a free slot from a wait with slots free."""
    live = {
        pid
        for pid, ready in ready_at.items()
        if ready <= at
        and killed_at.get(pid, math.inf) > at
        and not (
            freeze is not None
            and pid == freeze.pid
            and freeze.stopped_at <= at < freeze.continued_at
        )
    }
    in_use = dict.fromkeys(sorted(live), 0)
    for task_runs in runs.values():
        for run in task_runs:
            if run.pid in in_use and run.start <= at:
                ended = run_ended(run, killed_at)
                if ended is None or ended > at:
                    in_use[run.pid] += 1
    return in_use


def unended_runs(runs: Mapping[UUID, list[Run]], killed_at: Mapping[int, float]) -> list[Run]:
    """Runs with no end or stop mark whose process was never killed."""
    return [
        run for task_runs in runs.values() for run in task_runs if run_ended(run, killed_at) is None
    ]


def interrupted_by_kills(
    runs: Mapping[UUID, list[Run]],
    killed_at: Mapping[int, float],
    rescued_from: Iterable[tuple[UUID, int, float]] = (),
) -> set[tuple[UUID, int]]:
    """(task, killed pid) for each task a kill interrupted: its handler was
    running there (a start and no end or stop mark), or the history shows the
    task rescued from that worker after the kill (``rescued_from``: task,
    pid, rescue time; claimed ahead and not yet started, or finished but its
    outcome not yet written). A rescue before the kill (the worker was
    frozen, say) was not the kill's doing."""
    interrupted = {
        (run.task_id, run.pid)
        for task_runs in runs.values()
        for run in task_runs
        if run.pid in killed_at and run.finished is None
    }
    interrupted.update(
        (task, pid) for task, pid, at in rescued_from if pid in killed_at and at >= killed_at[pid]
    )
    return interrupted


def kill_reruns(
    interrupted: Iterable[tuple[UUID, int]],
    killed_at: Mapping[int, float],
    runs: Mapping[UUID, list[Run]],
) -> list[Rerun]:
    """Kill time -> the next start of the task after the kill, per interrupted task."""
    reruns = []
    for task_id, pid in sorted(interrupted, key=lambda item: (killed_at[item[1]], str(item[0]))):
        killed = killed_at[pid]
        after = [
            run.start for run in runs.get(task_id, []) if run.start > killed and run.pid != pid
        ]
        reruns.append(Rerun(task_id, pid, killed, min(after) if after else None))
    return reruns


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of all at or below it."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "min": None, "p50": None, "p99": None, "max": None}
    return {
        "count": len(ordered),
        "min": ordered[0],
        "p50": percentile(ordered, 0.50),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
    }


def completed_twice(completions: Mapping[UUID, int]) -> list[UUID]:
    """Tasks whose history holds more than one 'completed' event."""
    return sorted((task for task, count in completions.items() if count > 1), key=str)


@dataclass(frozen=True)
class TaskEnd:
    status: str
    lease_crashes: int
    last_error: str | None = None


def not_done(
    created: Iterable[UUID], ends: Mapping[UUID, TaskEnd], max_lease_crashes: int
) -> dict[str, list[UUID]]:
    """Created tasks that are not done, by why: ``quarantined`` (failed after
    ``max_lease_crashes`` attempts ended with a lost worker: the rescue
    rule's design, listed apart) and ``lost`` (anything else: missing from
    the database, never finished, failed or cancelled otherwise)."""
    quarantined: list[UUID] = []
    lost: list[UUID] = []
    for task_id in sorted(set(created), key=str):
        end = ends.get(task_id)
        if end is not None and end.status == "done":
            continue
        if end is not None and end.status == "failed" and end.lease_crashes >= max_lease_crashes:
            quarantined.append(task_id)
        else:
            lost.append(task_id)
    return {"quarantined": quarantined, "lost": lost}


def frozen_ran_on(runs: Mapping[UUID, list[Run]], freeze: Freeze) -> list[dict[str, Any]]:
    """The frozen worker's runs that were under way when it was stopped: how
    long each handler ran on after SIGCONT (its end or stop mark - SIGCONT),
    None when it left no mark at all."""
    held = []
    for task_runs in runs.values():
        for run in task_runs:
            if run.pid != freeze.pid or run.start >= freeze.stopped_at:
                continue
            if run.finished is not None and run.finished <= freeze.stopped_at:
                continue  # it was over before the freeze
            ran_on = None if run.finished is None else max(0.0, run.finished - freeze.continued_at)
            ended_by = "end" if run.end is not None else "stopped" if run.stopped else None
            held.append(
                {
                    "task_id": str(run.task_id),
                    "attempt": run.attempt,
                    "ended_by": ended_by,
                    "ran_on_seconds": ran_on,
                }
            )
    return held


def rerun_figures(reruns: list[Rerun], quarantined: Iterable[UUID] = ()) -> dict[str, Any]:
    """The kill->rerun distribution, and the interrupted tasks that never ran
    again: ``never_rerun`` (a failure), apart from those the rescue itself
    failed for good (``quarantined``: they are not to run again)."""
    seconds = [r.seconds for r in reruns if r.seconds is not None]
    held_back = set(quarantined)
    missing = [r for r in reruns if r.seconds is None]
    return {
        **distribution(seconds),
        "never_rerun": [
            {"task_id": str(r.task_id), "killed_pid": r.killed_pid}
            for r in missing
            if r.task_id not in held_back
        ],
        "quarantined": [
            {"task_id": str(r.task_id), "killed_pid": r.killed_pid}
            for r in missing
            if r.task_id in held_back
        ],
    }
