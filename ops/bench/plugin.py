"""The ``bench_noop`` task type: a handler that only reports when it started.

Loaded like any user plugin, ``TASKFLOW_PLUGINS=ops.bench.plugin:TASK_TYPES``,
so the product's built-in types stay the three of the spec. The workers find
``ops`` through the repository root on their ``PYTHONPATH`` (the bench's stack
puts it there).

At handler start it sends ``<seq> <time.monotonic_ns()>\\n`` over TCP to
``$BENCH_REPORT_ADDR`` (``host:port``): the line protocol of the shared
harness's Reporter (``../shared/bench/peers.py``). CLOCK_MONOTONIC is one clock
for every process on the host, so the bench can subtract its own enqueue time
from the worker's start time. Without ``BENCH_REPORT_ADDR`` the handler is a
plain no-op. With ``sleep_ms`` it then takes that long, for a phase whose
handlers must occupy their slots (the fairness phase's "one handler's
duration").
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from taskflow.handlers import TaskContext, TaskType

log = logging.getLogger(__name__)

REPORT_ADDR_VARIABLE = "BENCH_REPORT_ADDR"
# Lines are sent at most this often, many per write: a send() per task would
# cost the worker more CPU than the rest of a no-op task's handling (py-spy
# showed 8% of a worker in the write). Only the bench's learning of a start is
# delayed; the timestamp itself is taken at handler start. The shared harness's
# Reporter ships its batches every 5 ms too.
FLUSH_INTERVAL_SECONDS = 0.005


class BenchPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: Annotated[int, Field(ge=0, le=2**62)]
    # Well inside the type's 30 s timeout.
    sleep_ms: Annotated[int, Field(ge=0, le=10_000)] = 0


class StartReporter:
    """One lazily opened connection per process, shared by all the handler's calls."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._failed = False
        self._lines: list[bytes] = []
        self._flush_scheduled = False

    async def report(self, seq: int, started_ns: int) -> None:
        if self.address is None or self._failed:
            return
        connected = self._writer is not None and not self._writer.is_closing()
        if not connected and await self._connect() is None:
            return
        self._lines.append(b"%d %d\n" % (seq, started_ns))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_INTERVAL_SECONDS, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        lines, self._lines = self._lines, []
        writer = self._writer
        if writer is None or writer.is_closing() or not lines:
            return  # the bench went away: reports are lost, tasks are not
        writer.write(b"".join(lines))

    async def _connect(self) -> asyncio.StreamWriter | None:
        # Many slots start at once; only the first one opens the connection.
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            assert self.address is not None
            host, _, port = self.address.rpartition(":")
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except (OSError, ValueError) as exc:
                # Reporting is a measurement aid: the task itself still succeeds.
                log.warning(
                    "bench report address unreachable",
                    extra={"event": "bench_report_failed", "error": str(exc)},
                )
                self._failed = True
                return None
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._writer = writer
            return writer


# Keyed by event loop: a connection (and its lock) belongs to the loop that opened it.
_reporters: dict[asyncio.AbstractEventLoop, StartReporter] = {}


def _get_reporter() -> StartReporter:
    loop = asyncio.get_running_loop()
    reporter = _reporters.get(loop)
    if reporter is None:
        for stale in [other for other in _reporters if other.is_closed()]:
            del _reporters[stale]
        reporter = StartReporter(os.environ.get(REPORT_ADDR_VARIABLE) or None)
        _reporters[loop] = reporter
    return reporter


async def bench_noop(payload: BenchPayload, ctx: TaskContext) -> None:
    started_ns = time.monotonic_ns()  # first thing: this is the "handler start"
    await _get_reporter().report(payload.seq, started_ns)
    if payload.sleep_ms:
        await asyncio.sleep(payload.sleep_ms / 1000)


TASK_TYPE = TaskType(
    "bench_noop",
    BenchPayload,
    bench_noop,
    timeout_seconds=30,
    description=(
        "Benchmark no-op: reports its start time to $BENCH_REPORT_ADDR, "
        "then sleeps sleep_ms (default 0)."
    ),
)
TASK_TYPES = [TASK_TYPE]
