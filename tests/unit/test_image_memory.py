"""The per-process memory budget for image jobs, on its own."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from taskflow.handlers.image_memory import MemoryBudget, run_holding


async def test_budget_is_first_come_first_served_and_never_deadlocks() -> None:
    budget = MemoryBudget(100)
    first = await budget.reserve(60)
    second = asyncio.create_task(budget.reserve(60))
    small = asyncio.create_task(budget.reserve(10))
    oversized = asyncio.create_task(budget.reserve(150))
    await asyncio.sleep(0.01)
    # The small one would fit, but it does not overtake the job before it.
    assert [second.done(), small.done(), oversized.done()] == [False, False, False]
    assert budget.reserved_bytes == 60
    first.release()
    first.release()  # twice is harmless
    second_reservation, small_reservation = await second, await small
    assert budget.reserved_bytes == 70
    assert not oversized.done()
    second_reservation.release()
    await asyncio.sleep(0.01)
    assert not oversized.done()
    # Released from another thread, as a finished job does.
    releaser = threading.Thread(target=small_reservation.release)
    releaser.start()
    releaser.join()
    async with asyncio.timeout(5):
        alone = await oversized  # larger than the whole budget: runs alone
    assert budget.reserved_bytes == 150
    alone.release()
    assert budget.reserved_bytes == 0


async def test_a_cancelled_wait_holds_nothing() -> None:
    budget = MemoryBudget(100)
    holder = await budget.reserve(80)
    waiting = asyncio.create_task(budget.reserve(50))
    behind = asyncio.create_task(budget.reserve(20))
    await asyncio.sleep(0.01)
    assert budget.waiting == 2
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # With the head of the queue gone, the one behind it fits.
    async with asyncio.timeout(5):
        small = await behind
    assert budget.reserved_bytes == 100
    holder.release()
    small.release()
    assert (budget.reserved_bytes, budget.waiting) == (0, 0)


async def test_a_job_cancelled_before_its_thread_starts_releases_at_once() -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    busy = threading.Event()
    blocker = asyncio.create_task(asyncio.to_thread(busy.wait))  # the only thread
    budget = MemoryBudget(100)
    ran: list[int] = []
    try:
        job = asyncio.create_task(run_holding(await budget.reserve(80), lambda: ran.append(1)))
        await asyncio.sleep(0.01)
        assert budget.reserved_bytes == 80
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        assert budget.reserved_bytes == 0, "released without waiting for a thread"
    finally:
        busy.set()
        await blocker
    await asyncio.sleep(0.01)
    assert ran == [], "the work never ran"


async def test_a_job_cancelled_while_running_releases_when_its_thread_ends() -> None:
    """The thread cannot be stopped; its memory is in use until it ends."""
    budget = MemoryBudget(100)
    started, finish = threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        finish.wait(10)

    job = asyncio.create_task(run_holding(await budget.reserve(80), work))
    await asyncio.to_thread(started.wait, 10)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert budget.reserved_bytes == 80
    finish.set()
    async with asyncio.timeout(5):
        while budget.reserved_bytes:
            await asyncio.sleep(0.01)
