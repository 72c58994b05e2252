"""Waiting on events with a timeout, safely.

``asyncio.wait_for(event.wait(), t)`` on Python 3.11 can swallow a cancellation
that arrives as the event fires, leaving a loop that never ends at shutdown.
These helpers use ``asyncio.timeout``, which does not, and return a bool
instead of raising, so loops read naturally.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; True if it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def wait_any(*events: asyncio.Event, timeout: float | None) -> bool:
    """Wait until any of ``events`` is set or ``timeout`` passes (None: forever)."""
    if any(event.is_set() for event in events):
        return True
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return any(event.is_set() for event in events)
