"""The bench's progress lines (ops/bench/progress.py): a line per interval
while a phase runs, none for a phase shorter than one, and a phase's
cancellation (Ctrl-C, SIGTERM) still reaches the phase."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from ops.bench.progress import Progress

LINE = re.compile(r"^  backlog fill: (?P<count>[\d,]+) / 1,000,000 tasks, [\d,]+/s$")


def test_the_line_names_the_phase_its_count_and_rate() -> None:
    progress = Progress("backlog fill", 1_000_000, lambda: 0)
    assert progress.line(400_000, 12_300.4) == "  backlog fill: 400,000 / 1,000,000 tasks, 12,300/s"


async def test_a_long_phase_prints_a_line_per_interval(capsys: pytest.CaptureFixture[str]) -> None:
    inserted = 0
    lines: list[str] = []
    async with Progress("backlog fill", 1_000_000, lambda: inserted, interval_seconds=0.05):
        deadline = time.monotonic() + 10
        while len(lines) < 3 and time.monotonic() < deadline:
            inserted += 1000
            await asyncio.sleep(0.01)
            lines += capsys.readouterr().out.splitlines()
    assert len(lines) >= 3, lines
    counts = []
    for line in lines:
        match = LINE.match(line)
        assert match is not None, line
        counts.append(int(match["count"].replace(",", "")))
    assert counts == sorted(counts)
    assert 0 < counts[-1] <= inserted


async def test_a_short_phase_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    inserted = 0
    async with Progress("backlog fill", 1_000_000, lambda: inserted, interval_seconds=5):
        inserted += 1000
        await asyncio.sleep(0.05)
    assert capsys.readouterr().out == ""


async def test_cancelling_the_phase_stops_the_lines_and_propagates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def phase() -> None:
        async with Progress("backlog fill", 1_000_000, lambda: 0, interval_seconds=0.01):
            await asyncio.sleep(60)

    task = asyncio.create_task(phase())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.all_tasks() == {asyncio.current_task()}
    capsys.readouterr()
    await asyncio.sleep(0.05)
    assert capsys.readouterr().out == ""
