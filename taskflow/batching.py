"""Group commit for asyncio: many callers, one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Batcher(Generic[T, R]):
    """Collects items and runs them in one call: while a call is in flight new
    items wait, so batches grow exactly as fast as the other side is slow, and
    a lone item waits for nothing but one turn of the event loop.

    Each ``submit`` returns a future that ends with the call that carried its
    item: with the item's result (``flush`` returns one per item, in order, or
    None for none), or failed with that call's exception. ``run`` is the loop
    that makes the calls; its owner starts it and cancels it once nothing is
    pending.
    """

    flush: Callable[[list[T]], Awaitable[Sequence[R] | None]]
    pending: list[tuple[T, asyncio.Future[R | None]]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def submit(self, item: T) -> asyncio.Future[R | None]:
        future: asyncio.Future[R | None] = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        self.wake.set()
        return future

    def fail_pending(self, exc: BaseException) -> None:
        """End every waiting submit with ``exc``: its owner stopped ``run``."""
        batch, self.pending = self.pending, []
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)

    async def run(self) -> None:
        while True:  # ends by cancellation
            await self.wake.wait()
            # One turn of the loop lets callers that became ready in the same
            # moment join this batch; it costs no wait when nothing else is ready.
            await asyncio.sleep(0)
            self.wake.clear()
            batch, self.pending = self.pending, []
            if not batch:
                continue
            try:
                results = await self.flush([item for item, _ in batch])
            except Exception as exc:  # handed to each waiter, which decides
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for index, (_, future) in enumerate(batch):
                    if not future.done():
                        future.set_result(None if results is None else results[index])
