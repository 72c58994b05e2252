"""What the bench measures with: handler starts reported by the
workers, CPU time per process group from ``/proc``, and percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# ----- handler starts, reported by the workers


class StartBlock:
    """The handler starts of one phase's tasks, seqs ``lo .. lo + size - 1``.

    An ``array`` rather than a dict: a million-task backlog costs 8 MB, not 100.
    """

    def __init__(self, lo: int, size: int) -> None:
        self.lo = lo
        self.size = size
        self.starts = array("q", bytes(8 * size))  # 0 = not started yet
        self.count = 0
        self.duplicates = 0
        self.first_ns = 0
        self.last_ns = 0
        self.first = asyncio.Event()
        self.done = asyncio.Event()

    def record(self, index: int, started_ns: int) -> None:
        if self.starts[index]:
            self.duplicates += 1
            return
        self.starts[index] = started_ns
        self.count += 1
        if self.count == 1:
            self.first_ns = self.last_ns = started_ns
            self.first.set()
        else:
            self.first_ns = min(self.first_ns, started_ns)
            self.last_ns = max(self.last_ns, started_ns)
        if self.count == self.size:
            self.done.set()

    @property
    def span_seconds(self) -> float:
        return (self.last_ns - self.first_ns) / 1e9


class StartCollector:
    """A TCP server for the plugin's ``<seq> <start_ns>`` lines."""

    def __init__(self) -> None:
        self.block: StartBlock | None = None
        self.stray = 0
        self._server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    def expect(self, lo: int, size: int) -> StartBlock:
        self.block = StartBlock(lo, size)
        return self.block

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rest = b""
        try:
            while chunk := await reader.read(1 << 16):
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    self._line(line)
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _line(self, line: bytes) -> None:
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            return  # "R <pid>" (the harness's barrier) or noise
        seq, started_ns = int(parts[0]), int(parts[1])
        block = self.block
        if block is not None and 0 <= seq - block.lo < block.size:
            block.record(seq - block.lo, started_ns)
        else:
            self.stray += 1


# ----- CPU split from /proc

_RABBITMQ_COMMANDS = {"beam.smp", "erl_child_setup", "epmd", "inet_gethost", "inet_gethos"}


@dataclass(frozen=True, slots=True)
class ProcessTicks:
    group: str
    parent: int
    used: int  # user + system ticks of the process itself
    reaped: int  # of its children that exited and were waited for (cutime + cstime)


@dataclass
class CpuSnapshot:
    """CPU ticks of every live process, with the group it belongs to."""

    processes: dict[int, ProcessTicks]
    busy: int
    total: int


def _postgres_group(pid: int, backends: set[int]) -> str:
    if pid in backends:
        return "postgres_bench"
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "postgres_other"
    return "postgres_autovacuum" if b"autovacuum worker" in title else "postgres_other"


def cpu_snapshot(groups: dict[str, set[int]], postgres_backends: set[int]) -> CpuSnapshot:
    """Groups: the named ones (and their children); the Postgres backends
    serving the bench database; autovacuum workers; the rest of Postgres (WAL
    writer, checkpointer, other databases); RabbitMQ; this process; the rest."""
    processes: dict[int, ProcessTicks] = {}
    me = os.getpid()
    by_pid = {pid: name for name, pids in groups.items() for pid in pids}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue  # exited meanwhile
        pid = int(entry)
        command = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode(errors="replace")
        fields = raw[raw.rindex(b")") + 2 :].split()
        parent = int(fields[1])
        group = by_pid.get(pid) or by_pid.get(parent)
        if group is None:
            if command == "postgres":
                group = _postgres_group(pid, postgres_backends)
            elif command in _RABBITMQ_COMMANDS:
                group = "rabbitmq"
            else:
                group = "bench" if pid == me else "other"
        processes[pid] = ProcessTicks(
            group,
            parent,
            used=int(fields[11]) + int(fields[12]),
            reaped=int(fields[13]) + int(fields[14]),
        )
    with open("/proc/stat") as stat:
        counters = [int(x) for x in stat.readline().split()[1:]]
    busy = sum(counters) - counters[3] - counters[4]  # minus idle and iowait
    return CpuSnapshot(processes, busy, sum(counters))


CPU_GROUPS = (
    "workers",
    "api_scheduler",
    "postgres_bench",
    "postgres_autovacuum",
    "postgres_other",
    "rabbitmq",
    "bench",
)


def cpu_per_task(before: CpuSnapshot, after: CpuSnapshot, tasks: int) -> dict[str, float]:
    """CPU used between two snapshots, per task, by group.

    Live processes count their own ticks. A process that exits inside the
    window (an autovacuum worker, a recycled pool connection) is found in its
    parent's reaped-children ticks: the parent's increase, minus what those
    children had already used at the first snapshot. Postgres children that
    exited are counted as autovacuum: over a drain, those are nearly all of them.
    """
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    used: Counter[str] = Counter()
    for pid, now in after.processes.items():
        old = before.processes.get(pid)
        same = old is not None and old.group == now.group
        used[now.group] += now.used - (old.used if old is not None and same else 0)
        if old is None:
            continue
        gone = [
            ticks
            for child, ticks in before.processes.items()
            if ticks.parent == pid and child not in after.processes
        ]
        exited = now.reaped - old.reaped - sum(t.used for t in gone)
        if exited > 0:
            group = gone[0].group if gone else now.group
            if group.startswith("postgres"):
                group = "postgres_autovacuum"
            used[group] += exited
    split = {
        f"{name}_us": round(used[name] * tick_us / max(tasks, 1), 1)
        for name in (*CPU_GROUPS, "other")
    }
    total = after.total - before.total
    split["machine_busy_pct"] = (
        round(100.0 * (after.busy - before.busy) / total, 1) if total else 0.0
    )
    return split


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest rank, as the shared harness reports them."""
    if not sorted_values:
        return math.nan
    rank = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]
