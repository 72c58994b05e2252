"""Message bodies and the worker's slot bookkeeping, without services."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from taskflow.broker import Broker, decode_ids, encode_ids
from taskflow.config import MAX_IDS_PER_MESSAGE
from taskflow.handlers import build_registry
from taskflow.store.dispatch import DispatchStore
from taskflow.store.engine import EngineStore
from taskflow.store.pool import Listener
from taskflow.worker.process import LISTEN_CHANNELS, Worker
from taskflow.worker.slots import CLAIM_AHEAD_SLOTS_FACTOR, Slots
from tests.conftest import make_settings


def test_ids_round_trip_one_per_line() -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    body = encode_ids(ids)
    assert body.count(b"\n") == 4
    assert decode_ids(body) == ids
    # The one-id form is a plain UUID, as a message from an older publisher is.
    assert decode_ids(str(ids[0]).encode()) == ids[:1]
    assert decode_ids(f"{ids[0]}\r\n{ids[1]}\n".encode()) == ids[:2]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\n\n",
        b"not a uuid",
        f"{uuid.uuid4()}\nnot a uuid".encode(),  # one bad line spoils the message
        "\u00e9".encode(),
        b"\xff\xfe",
        "\n".join(str(uuid.uuid4()) for _ in range(MAX_IDS_PER_MESSAGE + 1)).encode(),
    ],
)
def test_anything_but_a_list_of_ids_is_refused_whole(body: bytes) -> None:
    assert decode_ids(body) is None


def test_ids_per_message_is_bounded() -> None:
    for bad in (0, MAX_IDS_PER_MESSAGE + 1):
        with pytest.raises(ValueError, match="ids_per_message"):
            Broker("amqp://guest:guest@127.0.0.1/", "q", ids_per_message=bad)


def test_claim_ahead_follows_handler_times() -> None:
    slots: Slots[object] = Slots(8, claim_ahead_seconds=0.010)
    assert slots.claim_capacity() == 8  # nothing known about the handlers yet
    slots.observe_handler_time(0.00005)  # instant handlers: the cap
    assert slots.claim_capacity() == 8 + CLAIM_AHEAD_SLOTS_FACTOR * 8
    slots.handler_seconds = 0.005  # 8 slots x 10 ms / 5 ms
    assert slots.claim_capacity() == 8 + 16
    slots.handler_seconds = 2.0  # long handlers: only free slots
    assert slots.claim_capacity() == 8
    off: Slots[object] = Slots(8, claim_ahead_seconds=0)
    off.observe_handler_time(0.00005)
    assert off.claim_capacity() == 8


def test_slots_count_running_waiting_and_claiming() -> None:
    slots: Slots[str] = Slots(2, claim_ahead_seconds=0)
    slots.claiming = 1
    slots.ready.extend(["a", "b", "c"])
    assert slots.free == 2 - 3 - 1
    assert slots.take_startable() == "a"
    assert slots.take_startable() == "b"
    assert slots.take_startable() is None  # both slots run
    slots.release()
    assert slots.take_startable() == "c"
    assert slots.running == 2
    assert not slots.ready


def _claimed_row(task_id: uuid.UUID) -> dict[str, Any]:
    return {
        "id": task_id,
        "claim_token": 1,
        "type": "test_noop",
        "attempts": 1,
        "run_at": datetime.now(UTC),
        "payload": {"n": 1},
        "max_retries": 0,
        "user_id": 1,
        "result": None,
        "last_attempt": True,
        "files_max_bytes": None,
    }


async def test_a_task_claimed_ahead_waits_and_a_cancel_keeps_it_from_starting(
    tmp_path: Path,
) -> None:
    settings = make_settings("postgresql://unused/db", queue=None, files=tmp_path)
    # Nothing here reaches Postgres: the pool is never asked for a connection.
    worker = Worker(
        settings,
        build_registry(settings),
        EngineStore(None),  # type: ignore[arg-type]
        DispatchStore(None),  # type: ignore[arg-type]
        broker=None,
        listener=Listener("postgresql://unused/db", LISTEN_CHANNELS, name="unused"),
        worker_id="unit",
        concurrency=1,
    )
    worker.slots.running = 1  # the only slot is busy
    waiting, cancelled = uuid.uuid4(), uuid.uuid4()
    worker._start(_claimed_row(waiting))  # type: ignore[arg-type]
    worker._start(_claimed_row(cancelled))  # type: ignore[arg-type]
    assert worker.running[waiting].job is None
    assert worker.slots.free == -2  # claimed ahead counts against the slots
    worker._on_notify("taskflow_cancel", str(cancelled))
    assert worker.running[cancelled].stop_reason == "cancelled"

    worker.slots.running = 0  # the slot frees: the next waiting task starts
    worker._start_ready()
    assert worker.running[waiting].job is not None
    assert worker.slots.running == 1
    assert cancelled in worker.running  # still behind the running one
    worker.intake.accepting = False  # shutting down: the cancelled one must never start
    job = worker.running[waiting].job
    assert job is not None
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    await asyncio.sleep(0)
    assert waiting not in worker.running  # its slot came back via the done callback
    assert worker.slots.running == 0
    assert worker.running[cancelled].job is None
