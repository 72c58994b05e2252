"""Task types the tests register through TASKFLOW_PLUGINS (``tests.plugins:TASK_TYPES``),
the way a user adds their own: slow, failing, no-op, and ones that leave marks
on disk so a test can tell exactly which process ran what, and when."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskflow.errors import PermanentError, TransientError
from taskflow.handlers import TaskContext, TaskType


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoopPayload(Strict):
    n: int = 0


class SleepPayload(Strict):
    seconds: float = Field(ge=0, le=600)
    marks: str | None = None  # a directory: one file per execution, start and end lines


class FailPayload(Strict):
    kind: str = Field(pattern="^(transient|permanent|error)$")
    times: int = Field(ge=0, le=1000, default=1000)  # fail this many attempts, then succeed
    delay_seconds: float | None = None


class ProgressPayload(Strict):
    steps: int = Field(ge=1, le=100)
    fail_at: int | None = None  # raise a transient error after saving this many steps


def _mark(directory: str | None, ctx: TaskContext, line: str) -> None:
    if directory is None:
        return
    path = Path(directory) / f"{ctx.task_id}.{ctx.attempt}.{os.getpid()}"
    text = f"{line} {time.time():.6f}\n"
    if line == "start":
        # Chaos tests SIGKILL workers at any instant; a kill between creating
        # the file and writing it would leave a run with no start time. The
        # rename makes the mark appear whole or not at all.
        partial = path.with_name(f".{path.name}")
        partial.write_text(text)
        os.replace(partial, path)
        return
    with path.open("a") as handle:
        handle.write(text)


async def noop(payload: NoopPayload, ctx: TaskContext) -> dict[str, Any]:
    return {"n": payload.n, "attempt": ctx.attempt}


async def sleep(payload: SleepPayload, ctx: TaskContext) -> dict[str, Any]:
    _mark(payload.marks, ctx, "start")
    try:
        await asyncio.sleep(payload.seconds)
    except asyncio.CancelledError:
        _mark(payload.marks, ctx, "cancelled")
        raise
    _mark(payload.marks, ctx, "end")
    return {"slept": payload.seconds, "pid": os.getpid()}


async def fail(payload: FailPayload, ctx: TaskContext) -> dict[str, Any]:
    if ctx.attempt > payload.times:
        return {"succeeded_on_attempt": ctx.attempt}
    if payload.kind == "permanent":
        raise PermanentError(f"permanent failure on attempt {ctx.attempt}")
    if payload.kind == "transient":
        raise TransientError(
            f"transient failure on attempt {ctx.attempt}", delay_seconds=payload.delay_seconds
        )
    raise RuntimeError(f"handler bug on attempt {ctx.attempt}")


async def gather(payload: NoopPayload, ctx: TaskContext) -> dict[str, Any]:
    """What a step of a graph saw of the steps before it (ctx.dependencies)."""
    return {"n": payload.n, "seen": {str(key): value for key, value in ctx.dependencies.items()}}


async def progress(payload: ProgressPayload, ctx: TaskContext) -> dict[str, Any]:
    done = list((ctx.previous_result or {}).get("steps", []))
    for step in range(len(done), payload.steps):
        if payload.fail_at is not None and step == payload.fail_at and ctx.attempt == 1:
            raise TransientError("interrupted", delay_seconds=0, partial_result={"steps": done})
        done.append({"step": step, "attempt": ctx.attempt})
        await ctx.save_progress({"steps": done})
    return {"steps": done}


TASK_TYPES = [
    TaskType("test_noop", NoopPayload, noop),
    TaskType("test_sleep", SleepPayload, sleep, timeout_seconds=600),
    TaskType("test_fail", FailPayload, fail),
    TaskType("test_progress", ProgressPayload, progress),
    TaskType("test_gather", NoopPayload, gather),
]
