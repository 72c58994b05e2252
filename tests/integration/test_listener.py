"""The Listener: one session LISTENing on a process's channels, whose owner
may stop hearing one of them for a while (the dispatcher does while no
worker is alive) and start again, across reconnects."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from taskflow.store.pool import Listener, connect
from tests.conftest import wait_until


async def test_a_channel_not_listened_to_stays_unheard_across_reconnects(database: str) -> None:
    heard: list[str] = []
    name = f"listener-{uuid.uuid4().hex[:8]}"
    listener = Listener(database, ["chan_a", "chan_b"], name=name)
    listener.on_notify(lambda channel, _payload: heard.append(channel))
    stop = asyncio.Event()
    running = asyncio.create_task(listener.run(stop))
    sender = await connect(database)

    async def hears(channel: str) -> bool:
        return channel in heard

    async def ring_both_and_see_b() -> None:
        heard.clear()
        await sender.execute("NOTIFY chan_a; NOTIFY chan_b")
        await wait_until(lambda: hears("chan_b"), what="chan_b heard")
        # Both were sent in one transaction: chan_a, if heard, came first.
        assert "chan_a" not in heard

    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        await listener.set_listening("chan_a", False)
        await ring_both_and_see_b()

        # A new session (the old one's backend is gone) starts as it was told.
        await sender.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            name,
        )
        await wait_until(lambda: hears("reconnected"), what="the listener reconnecting")
        await asyncio.wait_for(listener.connected.wait(), 10)
        await ring_both_and_see_b()

        await listener.set_listening("chan_a", True)
        heard.clear()
        await sender.execute("NOTIFY chan_a")
        await wait_until(lambda: hears("chan_a"), what="chan_a heard again")
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await sender.close()


async def test_only_its_own_channels_can_be_turned_off(database: str) -> None:
    listener = Listener(database, ["chan_a"], name="unused")
    with pytest.raises(ValueError, match="chan_z"):
        await listener.set_listening("chan_z", False)
