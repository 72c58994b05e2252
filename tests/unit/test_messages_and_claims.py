"""Message bodies and the worker's claim-ahead bookkeeping, without services."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from taskflow.broker import MAX_IDS_PER_MESSAGE, Broker, decode_ids, encode_ids
from taskflow.handlers import build_registry
from taskflow.worker import CLAIM_AHEAD_SLOTS_FACTOR, Worker
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


def _worker(tmp_path: Path, concurrency: int, **tunables: Any) -> Worker:
    settings = make_settings("unused", queue=None, files=tmp_path, **tunables)
    return Worker(settings, build_registry(settings), concurrency=concurrency)


def test_claim_ahead_follows_handler_times(tmp_path: Path) -> None:
    worker = _worker(tmp_path, 8, worker_claim_ahead_ms=10)
    assert worker.claim_capacity == 8  # nothing known about the handlers yet
    worker._observe_handler_time(0.00005)  # instant handlers: the cap
    assert worker.claim_capacity == 8 + CLAIM_AHEAD_SLOTS_FACTOR * 8
    worker._handler_seconds = 0.005  # 8 slots x 10 ms / 5 ms
    assert worker.claim_capacity == 8 + 16
    worker._handler_seconds = 2.0  # long handlers: only free slots
    assert worker.claim_capacity == 8
    off = _worker(tmp_path, 8, worker_claim_ahead_ms=0)
    off._observe_handler_time(0.00005)
    assert off.claim_capacity == 8


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
    }


async def test_a_task_claimed_ahead_waits_and_a_cancel_keeps_it_from_starting(
    tmp_path: Path,
) -> None:
    worker = _worker(tmp_path, 1)
    worker._handlers_running = 1  # the only slot is busy
    waiting, cancelled = uuid.uuid4(), uuid.uuid4()
    worker._start(_claimed_row(waiting))  # type: ignore[arg-type]
    worker._start(_claimed_row(cancelled))  # type: ignore[arg-type]
    assert worker.running[waiting].job is None
    assert worker.free_slots == -2  # claimed ahead counts against the slots
    worker._on_notify("taskflow_cancel", str(cancelled))
    assert worker.running[cancelled].stop_reason == "cancelled"

    worker._handlers_running = 0  # the slot frees: the next waiting task starts
    worker._start_ready()
    assert worker.running[waiting].job is not None
    assert worker._handlers_running == 1
    assert cancelled in worker.running  # still behind the running one
    worker._accepting = False  # shutting down: the cancelled one must never start
    job = worker.running[waiting].job
    assert job is not None
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    await asyncio.sleep(0)
    assert waiting not in worker.running  # its slot came back via the done callback
    assert worker._handlers_running == 0
    assert worker.running[cancelled].job is None
