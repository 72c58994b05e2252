"""A hostile send_email payload can fail or finish its own task, never more
(SPEC §7.6): a real worker, scheduler and SMTP server, a body that once froze
a worker's event loop for 22 s, and quick tasks beside it on the same worker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from taskflow.enqueue import Enqueuer
from taskflow.files import UserFiles
from taskflow.handlers import build_registry
from taskflow.handlers.send_email import _close_quietly
from taskflow.models import TaskCreate
from tests import servers
from tests.conftest import make_settings, new_user, running_scheduler, running_worker, wait_until
from tests.servers import SMTPTestServer
from tests.stores import Store

# Fixtures from tests.servers, bound here so pytest finds them in this module.
smtp_server = servers.smtp_server

FAST = {
    "scheduler_interval_ms": 50,
    # Short enough that a loop frozen for a few seconds loses the lease.
    "lease_seconds": 2,
    "retry_backoff_base_ms": 100,
    "retry_backoff_max_ms": 1000,
    "shutdown_grace_seconds": 1,
    "worker_poll_interval_ms": 200,
}
# About 1 MB, within the payload model's limit: quadratic to render before.
HOSTILE_BODY = " <i>" * 250_000
ATTACHMENT_BYTES = 1_000_000  # twenty of them: the attachment cap, about


async def create(
    queue: Enqueuer, user_id: int, task_type: str, payload: dict[str, Any]
) -> uuid.UUID:
    row, _ = await queue.create(user_id, TaskCreate(type=task_type, payload=payload))
    task_id: uuid.UUID = row["id"]
    return task_id


async def test_a_hostile_email_does_not_stall_its_worker_or_run_twice(
    store: Store, database: str, tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    settings = make_settings(
        database,
        queue=None,
        files=tmp_path / "files",
        mail_host=smtp_server.host,
        mail_port=smtp_server.port,
        mail_from="TaskFlow <robot@taskflow.test>",
        **FAST,
    )
    mailer = await new_user(store, "mailer@example.com")
    other = await new_user(store, "other@example.com")
    files = UserFiles(settings.base_file_path, mailer)
    names = [f"part{i:02}.bin" for i in range(20)]
    for name in names:
        files.write_atomic(name, bytes([len(name)]) * ATTACHMENT_BYTES)
    queue = Enqueuer(store, build_registry(settings))

    async def status(task_id: uuid.UUID) -> str:
        value: str = await store.pool.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
        return value

    async with running_scheduler(settings), running_worker(settings, concurrency=3):
        email_id = await create(
            queue,
            mailer,
            "send_email",
            {
                "to": "bob@example.com",
                "subject": "é" * 998,
                "body": HOSTILE_BODY,
                "attached_files": names,
            },
        )

        async def email_started() -> bool:
            return await status(email_id) != "queued"

        await wait_until(email_started, timeout=10, what="the email to be claimed")
        quick_ids = [await create(queue, other, "test_noop", {"n": n}) for n in range(6)]

        async def quick_done() -> bool:
            count = await store.pool.fetchval(
                "SELECT count(*) FROM tasks WHERE id = ANY($1) AND status = 'done'", quick_ids
            )
            return bool(count == len(quick_ids))

        # The email's attempt takes a few seconds of CPU: the quick tasks run
        # beside it, on the worker's two other slots.
        await wait_until(quick_done, timeout=10, what="the quick tasks beside the email")

        async def email_finished() -> bool:
            return await status(email_id) in ("done", "failed")

        await wait_until(email_finished, timeout=60, what="the email to finish")

    email = await store.pool.fetchrow(
        "SELECT status, attempts, finished_at FROM tasks WHERE id = $1", email_id
    )
    assert (email["status"], email["attempts"]) == ("done", 1)
    events = [
        row["event"]
        for row in await store.pool.fetch(
            "SELECT event FROM task_history WHERE task_id = $1 ORDER BY id", email_id
        )
    ]
    assert events.count("claimed") == 1, events
    assert "lease_expired" not in events, events
    assert len(smtp_server.messages) == 1
    [received] = smtp_server.messages
    assert len(list(received.message.iter_attachments())) == 20
    quick_finished = await store.pool.fetchval(
        "SELECT max(finished_at) FROM tasks WHERE id = ANY($1)", quick_ids
    )
    assert quick_finished <= email["finished_at"] + timedelta(seconds=1)


async def test_an_attempt_stopped_while_the_server_stalls_closes_its_connection() -> None:
    """A server that never answers QUIT, and the attempt stopped meanwhile (its
    timeout, a lost lease, shutdown): the socket is closed at once, not left
    open until the garbage collector finds it."""
    closed = asyncio.Event()

    async def stalling_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 stalling.test ESMTP\r\n")
        while line := await reader.readline():
            if line.upper().startswith((b"EHLO", b"HELO")):
                writer.write(b"250 stalling.test\r\n")
            # QUIT (and anything else) is never answered.
        closed.set()
        writer.close()

    server = await asyncio.start_server(stalling_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
        await client.connect()
        await client.ehlo()
        closing = asyncio.create_task(_close_quietly(client))
        await asyncio.sleep(0.2)  # QUIT is sent and waits for its reply
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert not client.is_connected
        await asyncio.wait_for(closed.wait(), 5)  # the server saw the connection end
    finally:
        server.close()
        await server.wait_closed()
