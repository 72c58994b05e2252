"""The upload's total deadline is a cancellation from outside the body reader:
it must end the upload however the chunks arrive (SPEC §7.6: a client that
never stalls but never finishes gets a 408)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from taskflow.api.uploads import _body_chunks


class _EndlessBody:
    """A client that always has the next chunk ready: every read completes at
    once, so a cancellation keeps arriving just as a chunk does."""

    def __init__(self) -> None:
        self.chunks = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        self.chunks += 1
        await asyncio.sleep(0)
        return b"x" * 16


async def _read_until_the_deadline(body: _EndlessBody, deadline: float) -> None:
    any_body: Any = body
    async with asyncio.timeout(deadline):
        async for _ in _body_chunks(any_body, max_bytes=1 << 40, idle_timeout_seconds=30):
            pass


async def test_the_total_deadline_ends_a_body_that_never_pauses() -> None:
    body = _EndlessBody()
    started = time.monotonic()
    reader = asyncio.ensure_future(_read_until_the_deadline(body, 0.05))
    # Not asyncio.timeout here: the question is whether a cancellation gets
    # through, so the test waits without sending one.
    done, _ = await asyncio.wait([reader], timeout=5)
    if not done:
        # Several tries: the lost deadline's reader swallows cancellations too.
        while not reader.done():
            reader.cancel()
            await asyncio.sleep(0.01)
    assert done, f"the deadline was lost: still reading after {body.chunks} chunks"
    with pytest.raises(TimeoutError):
        reader.result()
    assert time.monotonic() - started < 5
