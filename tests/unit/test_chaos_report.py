"""The chaos run's figures (ops/chaos/report.py) on synthetic marks: what
counts as an overlap, a lost task, a double completion, a kill->rerun time.
The long run itself (ops/chaos/run) is not part of the test suite."""

from __future__ import annotations

import os
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from ops.chaos.plugin import ChaosPayload, chaos_sleep
from ops.chaos.report import (
    Freeze,
    Run,
    TaskEnd,
    all_connected_at,
    completed_twice,
    distribution,
    find_overlaps,
    frozen_ran_on,
    interrupted_by_kills,
    kill_reruns,
    not_done,
    parse_marks,
    percentile,
    rerun_figures,
    slots_in_use,
    unended_runs,
    worker_pid,
)
from taskflow.config import load_settings
from taskflow.files import UserFiles
from taskflow.handlers import TaskContext

A, B, C = UUID(int=1), UUID(int=2), UUID(int=3)


def _write(marks: Path, task: UUID, attempt: int, pid: int, lines: str) -> None:
    (marks / f"{task}.{attempt}.{pid}").write_text(lines)


def test_marks_are_read_per_task_in_order_of_start(tmp_path: Path) -> None:
    _write(tmp_path, A, 2, 20, "start 105.5\nend 106.0\n")
    _write(tmp_path, A, 1, 10, "start 100.0\n")
    _write(tmp_path, B, 1, 10, "start 101.0\nstopped 101.25\n")
    # A start mark its process died writing: hidden, and not a run.
    (tmp_path / f".{C}.1.10").write_text("sta")
    runs = parse_marks(tmp_path)
    assert set(runs) == {A, B}
    assert [(r.attempt, r.pid, r.start, r.end) for r in runs[A]] == [
        (1, 10, 100.0, None),
        (2, 20, 105.5, 106.0),
    ]
    assert runs[B][0].stopped == 101.25
    assert runs[B][0].finished == 101.25


async def test_the_chaos_plugin_marks_parse(tmp_path: Path) -> None:
    """The plugin's own mark files, written by its handler, read back."""
    task_id = uuid4()
    settings = load_settings({"DATABASE_URL": "postgresql://x@127.0.0.1/x"})
    context = TaskContext(
        task_id=task_id,
        user_id=1,
        task_type="chaos_sleep",
        attempt=2,
        max_retries=10,
        settings=settings,
        files=UserFiles(tmp_path / "files", 1),
    )
    payload = ChaosPayload(seconds=5, marks=str(tmp_path), later_seconds=0.01)
    result = await chaos_sleep(payload, context)
    assert result["slept"] == 0.01  # a later attempt sleeps later_seconds
    [run] = parse_marks(tmp_path)[task_id]
    assert (run.attempt, run.pid) == (2, os.getpid())
    assert run.end is not None
    assert run.end >= run.start
    assert run.stopped is None


def test_a_rerun_after_the_kill_is_no_overlap_and_one_before_it_is() -> None:
    killed_at = {10: 100.0}
    runs = {
        # Killed at 100, ran again at 100.4: fine.
        A: [Run(A, 1, 10, start=99.0), Run(A, 2, 20, start=100.4, end=101.0)],
        # Ran again at 99.5, while its first process was still alive: overlap.
        B: [Run(B, 1, 10, start=98.0), Run(B, 2, 20, start=99.5, end=100.5)],
        # Its first run ended (end mark) before the second started: fine.
        C: [Run(C, 1, 30, start=90.0, end=91.0), Run(C, 2, 40, start=91.0, end=92.0)],
    }
    overlaps = find_overlaps(runs, killed_at)
    assert [(o.task_id, o.kind) for o in overlaps] == [(B, "killed")]
    assert overlaps[0].seconds == pytest.approx(0.5)


def test_two_live_runs_at_once_are_an_overlap_and_a_run_that_never_ended_too() -> None:
    runs = {
        A: [Run(A, 1, 30, start=90.0, end=95.0), Run(A, 2, 40, start=94.0, end=96.0)],
        B: [Run(B, 1, 30, start=90.0), Run(B, 2, 40, start=99.0, end=100.0)],
    }
    overlaps = find_overlaps(runs, killed_at={})
    assert sorted((str(o.task_id), o.kind) for o in overlaps) == [
        (str(A), "live"),
        (str(B), "live"),
    ]
    assert [(r.task_id, r.pid) for r in unended_runs(runs, killed_at={})] == [(B, 30)]
    # Once its process is known killed, the run has ended: at its kill.
    assert unended_runs(runs, killed_at={30: 91.0}) == []


def test_the_frozen_workers_run_overlaps_as_frozen_and_its_run_on_is_measured() -> None:
    freeze = Freeze(pid=50, stopped_at=100.0, continued_at=140.0)
    runs = {
        # Under way at the freeze; rescued and rerun at 130; stopped 8 ms after SIGCONT.
        A: [Run(A, 1, 50, start=99.0, stopped=140.008), Run(A, 2, 60, start=130.0, end=131.0)],
        # Over before the freeze: neither an overlap nor a held run.
        B: [Run(B, 1, 50, start=90.0, end=91.0)],
    }
    # Killed later, once resumed: its run across the freeze is still the freeze's.
    overlaps = find_overlaps(runs, killed_at={50: 150.0}, freeze=freeze)
    assert [(o.task_id, o.kind) for o in overlaps] == [(A, "frozen")]
    [held] = frozen_ran_on(runs, freeze)
    assert held["task_id"] == str(A)
    assert held["ended_by"] == "stopped"
    assert held["ran_on_seconds"] == pytest.approx(0.008)


def test_kill_to_rerun_per_interrupted_task() -> None:
    killed_at = {10: 100.0, 20: 200.0}
    runs = {
        A: [Run(A, 1, 10, start=99.0), Run(A, 2, 20, start=100.3)],  # killed twice
        B: [Run(B, 1, 10, start=98.0, end=99.9)],  # finished before the kill
        C: [Run(C, 1, 30, start=210.0, end=211.0)],  # claimed ahead by 20, never started there
    }
    a_second_run = Run(A, 3, 30, start=201.5, end=202.0)
    runs[A].append(a_second_run)
    rescued_from = [
        (C, 20, 200.2),  # claimed ahead by 20, never started there: rescued after its kill
        (B, 99, 100.0),  # a worker that was never killed
        (B, 10, 50.0),  # rescued from 10 long before its kill (it was frozen)
    ]
    interrupted = interrupted_by_kills(runs, killed_at, rescued_from)
    assert interrupted == {(A, 10), (A, 20), (C, 20)}
    reruns = kill_reruns(interrupted, killed_at, runs)
    assert [(r.task_id, r.killed_pid, r.seconds) for r in reruns] == [
        (A, 10, pytest.approx(0.3)),
        (A, 20, pytest.approx(1.5)),
        (C, 20, pytest.approx(10.0)),
    ]
    never = kill_reruns({(B, 10), (C, 10)}, killed_at, runs)
    assert [r.rerun_at for r in never] == [None, pytest.approx(210.0)]
    figures = rerun_figures([*reruns, *never], quarantined=[B])
    assert figures["count"] == 4
    assert figures["max"] == pytest.approx(110.0)
    # B never ran again: its rescue failed it for good, which is not a rerun missed.
    assert figures["never_rerun"] == []
    assert figures["quarantined"] == [{"task_id": str(B), "killed_pid": 10}]
    assert rerun_figures(never)["never_rerun"] == [{"task_id": str(B), "killed_pid": 10}]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
    # The rank rounds up: p99 of 150 values is the 149th.
    assert percentile([float(v) for v in range(1, 151)], 0.99) == 149.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert distribution(reversed(values)) == {
        "count": 100,
        "min": 1.0,
        "p50": 50.0,
        "p99": 99.0,
        "max": 100.0,
    }
    assert distribution([]) == {
        "count": 0,
        "min": None,
        "p50": None,
        "p99": None,
        "max": None,
    }
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_lost_and_quarantined_and_completed_twice() -> None:
    missing = UUID(int=9)
    ends = {
        A: TaskEnd("done", 2),
        B: TaskEnd("failed", 3, "worker w lost: ...; quarantined after 3 attempts"),
        C: TaskEnd("retrying", 1),
        UUID(int=4): TaskEnd("failed", 1, "some other failure"),
    }
    found = not_done([A, B, C, UUID(int=4), missing], ends, max_lease_crashes=3)
    assert found["quarantined"] == [B]
    assert found["lost"] == sorted([C, UUID(int=4), missing], key=str)
    assert completed_twice({A: 1, B: 2, C: 0}) == [B]


def test_the_pid_of_a_worker_id() -> None:
    assert worker_pid("host-1:4242:a1b2c3") == 4242
    assert worker_pid("a:b") is None
    assert worker_pid(None) is None


def test_reconnection_is_the_last_process_first_connection_after_the_outage() -> None:
    since = 100.0
    # A connects twice after the outage: its first connection counts.
    connections = {"worker-a": [50.0, 101.5, 130.0], "scheduler": [10.0, 100.7]}
    assert all_connected_at(connections, since) == 101.5
    # One process not connected again yet: not recovered.
    assert all_connected_at({**connections, "worker-b": [60.0]}, since) is None


def test_slots_in_use_count_live_workers_only() -> None:
    runs = {
        A: [Run(A, 1, 10, start=99.0), Run(A, 2, 20, start=100.5, end=103.0)],
        B: [Run(B, 1, 20, start=95.0, end=100.2), Run(B, 2, 30, start=100.0, end=100.9)],
    }
    ready_at = {10: 90.0, 20: 90.0, 30: 90.0, 40: 101.0, 50: 90.0}
    freeze = Freeze(pid=50, stopped_at=99.0, continued_at=139.0)
    # 10 was killed at 100.1; 40 not ready yet; 50 frozen: none of them counts.
    assert slots_in_use(runs, 100.6, ready_at, {10: 100.1}, freeze) == {20: 1, 30: 1}
    assert slots_in_use(runs, 100.0, ready_at, {10: 100.1}, freeze) == {10: 1, 20: 1, 30: 1}
