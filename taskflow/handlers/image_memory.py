"""A count of bytes that image jobs in one process may hold at once.

A job reserves its estimated peak before it decodes anything and releases it
once its pixels are gone. A job that does not fit waits, first come first
served, so a large job is not starved by a stream of small ones; a job larger
than the whole budget runs once it would run alone, so nothing waits forever.

Waiting happens on the event loop (it never blocks a thread), while a release
may come from any thread: the thread that did the work releases as soon as it
is done, even when the task that started it was cancelled long before. The
budget is not tied to one event loop, so one instance serves the process.

Reserved bytes only bound resident memory if freed memory goes back to the
system: glibc keeps what a thread frees in that thread's own arena, so jobs
that ran on different executor threads would add up in RSS although each had
released its reservation. :func:`return_freed_memory` hands it back; a job
calls it before it releases its reservation.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        return None
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def return_freed_memory() -> None:
    """Give memory freed in any thread's malloc arena back to the system."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass(eq=False)
class _Waiter:
    size_bytes: int
    future: asyncio.Future[None]
    granted: bool = False


@dataclass(eq=False)
class Reservation:
    """Bytes held by one job; :meth:`release` is idempotent and thread-safe."""

    budget: MemoryBudget
    size_bytes: int
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        self.budget._release(self)


class MemoryBudget:
    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("a memory budget needs a positive capacity")
        self.capacity_bytes = capacity_bytes
        self._lock = threading.Lock()
        self._reserved_bytes = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def reserved_bytes(self) -> int:
        with self._lock:
            return self._reserved_bytes

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    async def reserve(self, size_bytes: int) -> Reservation:
        """Wait until ``size_bytes`` fit, then hold them. Cancelling the wait
        holds nothing."""
        if size_bytes < 0:
            raise ValueError("cannot reserve a negative number of bytes")
        waiter = _Waiter(size_bytes, asyncio.get_running_loop().create_future())
        with self._lock:
            self._waiters.append(waiter)
            self._grant_waiters()
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                if waiter.granted:
                    # Granted just as the wait was cancelled: hand the bytes on.
                    self._reserved_bytes -= size_bytes
                else:
                    self._waiters.remove(waiter)
                self._grant_waiters()
            raise
        return Reservation(self, size_bytes)

    def _fits(self, size_bytes: int) -> bool:
        return self._reserved_bytes == 0 or self._reserved_bytes + size_bytes <= self.capacity_bytes

    def _release(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation._released:
                return
            reservation._released = True
            self._reserved_bytes -= reservation.size_bytes
            self._grant_waiters()

    def _grant_waiters(self) -> None:
        """Grant, in order, every waiter that now fits. Called with the lock held."""
        while self._waiters and self._fits(self._waiters[0].size_bytes):
            waiter = self._waiters.popleft()
            loop = waiter.future.get_loop()
            if loop.is_closed():
                continue  # its event loop is gone, and so is whoever waited
            waiter.granted = True
            self._reserved_bytes += waiter.size_bytes
            loop.call_soon_threadsafe(_wake, waiter.future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _NotStarted(Exception):
    """The awaiting side gave up before the thread started."""


class _Handoff:
    """Who releases a reservation: the thread, once its work is over (even
    for a cancelled task: a thread cannot be stopped, only asked to give up),
    or the awaiting side when the thread never started."""

    def __init__(self, reservation: Reservation) -> None:
        self._reservation = reservation
        self._lock = threading.Lock()
        self._started = self._closed = False

    def run(self, work: Callable[[], T]) -> T:
        with self._lock:
            if self._closed:
                raise _NotStarted
            self._started = True
        try:
            return work()
        except BaseException as exc:
            _forget_frames(exc)
            raise
        finally:
            return_freed_memory()
            self._reservation.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            started = self._started
        if not started:
            self._reservation.release()


async def run_holding(reservation: Reservation, work: Callable[[], T]) -> T:
    """Run ``work`` in a thread; ``reservation`` is released when the work is
    over, or at once if the awaiting task is cancelled before it starts."""
    handoff = _Handoff(reservation)
    try:
        return await asyncio.to_thread(handoff.run, work)
    finally:
        handoff.close()


def _forget_frames(error: BaseException | None) -> None:
    """Clear the locals of every frame an error and the errors behind it
    remember: an error that is logged or stored must not keep the job's
    images alive after their memory was released."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
