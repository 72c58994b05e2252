"""The ``chaos_sleep`` task type: sleeps, leaving start and end marks on disk.

Loaded like any user plugin, ``TASKFLOW_PLUGINS=ops.chaos.plugin:TASK_TYPES``
(the chaos stack puts the repository root on the workers' ``PYTHONPATH``).

Each run of a handler leaves one file ``<task id>.<attempt>.<pid>`` in the
payload's ``marks`` directory, with a line per moment, ``<what> <time.time()>``:
``start``, then ``end`` when the sleep finished or ``stopped`` when the worker
cancelled the handler (its lease lost, the task cancelled, shutdown). A run
whose process was killed has a start and nothing else. The wall clock is one
clock for every process on the host, so the chaos run can compare the marks
with the instants it sent its signals.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from taskflow.handlers import TaskContext, TaskType

TASK_TYPE_NAME = "chaos_sleep"


class ChaosPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: Annotated[float, Field(ge=0, le=600)]
    marks: Annotated[str, Field(min_length=1, max_length=4096)]
    # Attempts after the first sleep this long instead. The freeze probe must
    # outlast the freeze on its first attempt, but its rerun should not then
    # stand for a minute in the way of every kill (three lost workers
    # quarantine a task: max_lease_crashes).
    later_seconds: Annotated[float | None, Field(ge=0, le=600)] = None


def _mark(directory: str, ctx: TaskContext, what: str) -> None:
    path = Path(directory) / f"{ctx.task_id}.{ctx.attempt}.{os.getpid()}"
    line = f"{what} {time.time():.6f}\n"
    if what == "start":
        # A SIGKILL between creating the file and writing it would leave a run
        # with no start time: the rename makes the mark appear whole or not at all.
        partial = path.with_name(f".{path.name}")
        partial.write_text(line)
        os.replace(partial, path)
        return
    with path.open("a") as handle:
        handle.write(line)


async def chaos_sleep(payload: ChaosPayload, ctx: TaskContext) -> dict[str, Any]:
    _mark(payload.marks, ctx, "start")
    seconds = payload.seconds
    if ctx.attempt > 1 and payload.later_seconds is not None:
        seconds = payload.later_seconds
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _mark(payload.marks, ctx, "stopped")
        raise
    _mark(payload.marks, ctx, "end")
    return {"slept": seconds, "pid": os.getpid()}


TASK_TYPE = TaskType(
    TASK_TYPE_NAME,
    ChaosPayload,
    chaos_sleep,
    timeout_seconds=600,
    description="Chaos run: sleeps, leaving start and end marks in payload.marks.",
)
TASK_TYPES = [TASK_TYPE]
