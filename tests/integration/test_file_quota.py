"""The file area's quota, ``user_files_max_bytes`` (SPEC §8): an upload over
it is a 413 naming it, a handler's output over it fails its task permanently
naming it, and writers racing in several processes never pass it together.

Uploads go to the real ``taskflow api`` (uvicorn, in a subprocess) over real
sockets; the handlers run in an in-process worker that claims through
Postgres (with and without RabbitMQ) and downloads from a real HTTP server
on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from quart.datastructures import FileStorage
from quart.typing import TestClientProtocol as Client

from taskflow.api import create_app
from taskflow.config import Settings
from taskflow.enqueue import new_task_id
from taskflow.files import TEMPORARY_PREFIX
from taskflow.handlers import build_registry
from taskflow.runtime import api_services
from taskflow.store.dispatch import FairLimits
from taskflow.store.tasks import NewTask
from tests import servers
from tests.conftest import make_settings, new_user, running_scheduler, running_worker, wait_until
from tests.integration.api_helpers import token_for
from tests.integration.test_hostile_clients import (
    FORM_TAIL,
    api_server,
    file_part_head,
    leftovers,
    multipart_body,
    open_connection,
    read_response,
    upload_request_head,
    user_area,
)
from tests.servers import HTTPTestServer, body_of, sha256_of
from tests.stores import Store, claim

# Bound here so pytest finds the fixture in this module.
http_server = servers.http_server

KIB = 1024
MIB = 1024 * KIB
QUOTA_KEY = "user_files_max_bytes"
EMPTY_FILES = 20_000
FAST = {
    "scheduler_interval_ms": 50,
    "retry_backoff_base_ms": 50,
    "retry_backoff_max_ms": 200,
    "worker_poll_interval_ms": 200,
    "shutdown_grace_seconds": 1,
}


def visible(area: Path) -> list[str]:
    """The names a user sees in their area (hidden ones are TaskFlow's)."""
    return [name for name in leftovers(area) if not name.startswith(".")]


def temporary(area: Path) -> list[str]:
    return [name for name in leftovers(area) if name.startswith(TEMPORARY_PREFIX)]


async def set_files_quota(store: Store, user_id: int, quota: int) -> None:
    await store.pool.execute(
        "INSERT INTO user_limits (user_id, files_max_bytes) VALUES ($1, $2)", user_id, quota
    )


async def post_file(
    http: httpx.AsyncClient, base: str, headers: dict[str, str], name: str, size: int
) -> httpx.Response:
    body, content_type = multipart_body(name, b"q" * size)
    return await http.post(f"{base}/api/files", content=body, headers={**headers, **content_type})


def quota_refusal(status: int, content_type: str, raw: bytes) -> str:
    """Assert a 413 JSON answer naming the quota; return its message."""
    assert status == 413, raw
    assert content_type.startswith("application/json"), raw
    body = json.loads(raw)
    assert body["limit"] == QUOTA_KEY, body
    message: str = body["error"]
    assert QUOTA_KEY in message, body
    return message


def refused(response: httpx.Response) -> str:
    return quota_refusal(response.status_code, response.headers["content-type"], response.content)


# ----- uploads ------------------------------------------------------------------------


async def test_uploads_are_held_to_the_quota_and_user_limits_override_it(
    store: Store, database: str, tmp_path: Path
) -> None:
    with api_server(tmp_path, database, {QUOTA_KEY: 100 * KIB}) as (base, files, _):
        plain, plain_area = await user_area(store, files, "plain@example.com")
        raised, raised_area = await user_area(store, files, "raised@example.com")
        lowered, lowered_area = await user_area(store, files, "lowered@example.com")
        unlimited, unlimited_area = await user_area(store, files, "unlimited@example.com")
        await set_files_quota(store, int(raised_area.name), 300 * KIB)
        await set_files_quota(store, int(lowered_area.name), 10 * KIB)
        await set_files_quota(store, int(unlimited_area.name), 0)
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await post_file(http, base, plain, "a.bin", 60 * KIB)).status_code == 201
            message = refused(await post_file(http, base, plain, "b.bin", 60 * KIB))
            assert "100.0 KiB" in message, message
            assert visible(plain_area) == ["a.bin"]
            assert temporary(plain_area) == []
            # Up to the quota exactly is within it.
            assert (await post_file(http, base, plain, "c.bin", 40 * KIB)).status_code == 201
            # What a delete frees is room again.
            deleted = await http.delete(f"{base}/api/files/a.bin", headers=plain)
            assert deleted.status_code == 204
            assert (await post_file(http, base, plain, "b.bin", 60 * KIB)).status_code == 201
            assert visible(plain_area) == ["b.bin", "c.bin"]

            # user_limits.files_max_bytes raises it, lowers it, or lifts it (0).
            assert (await post_file(http, base, raised, "big.bin", 200 * KIB)).status_code == 201
            assert visible(raised_area) == ["big.bin"]
            message = refused(await post_file(http, base, lowered, "small.bin", 20 * KIB))
            assert "10.0 KiB" in message, message
            assert visible(lowered_area) == []
            assert temporary(lowered_area) == []
            huge = await post_file(http, base, unlimited, "huge.bin", 400 * KIB)
            assert huge.status_code == 201, huge.text


class HeldUpload:
    """An upload over a raw socket whose last bytes wait for ``finish``."""

    def __init__(self, base: str, headers: dict[str, str], name: str, size: int) -> None:
        self.base, self.headers, self.name, self.size = base, headers, name, size
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        self.reader, self.writer = await open_connection(self.base)
        head = file_part_head(self.name)
        total = len(head) + self.size + len(FORM_TAIL)
        self.writer.write(upload_request_head(self.base, self.headers, total) + head)
        self.writer.write(b"h" * self.size)
        await self.writer.drain()

    async def finish(self) -> tuple[int, dict[str, str], bytes]:
        assert self.writer is not None
        assert self.reader is not None
        self.writer.write(FORM_TAIL)
        await self.writer.drain()
        return await asyncio.wait_for(read_response(self.reader), 30)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def test_concurrent_uploads_that_fit_alone_but_not_together_admit_exactly_one(
    store: Store, database: str, tmp_path: Path
) -> None:
    """Two API processes on one file area, two uploads each, every one of
    them fitting the quota alone and no two together: their bodies are all
    received before any ends, so all four commit at once, in two processes
    and on several threads of each."""
    tunables = {QUOTA_KEY: MIB}
    with (
        api_server(tmp_path, database, tunables) as (first, files, _),
        api_server(tmp_path, database, tunables) as (second, _, _),
    ):
        headers, area = await user_area(store, files, "racer@example.com")
        # Empty files, so that counting the area takes long enough for
        # writes that skipped the lock to overlap (they then all pass).
        area.mkdir(parents=True)
        for index in range(EMPTY_FILES):
            (area / f"empty-{index}").touch()
        size = 600 * KIB
        for round_number in range(3):
            uploads = [
                HeldUpload(base, headers, f"r{round_number}-{index}.bin", size)
                for index, base in enumerate([first, second, first, second])
            ]
            try:
                await asyncio.gather(*(upload.start() for upload in uploads))

                async def all_received() -> bool:
                    # The parser holds back what could be the start of a boundary.
                    sizes = [
                        path.stat().st_size
                        for path in area.glob(f"{TEMPORARY_PREFIX}*")
                        if path.is_file()
                    ]
                    return len(sizes) == 4 and min(sizes) >= size - 4 * KIB

                await wait_until(all_received, timeout=15, what="every body received")
                answers = await asyncio.gather(*(upload.finish() for upload in uploads))
            finally:
                for upload in uploads:
                    upload.close()
            statuses = sorted(status for status, _, _ in answers)
            assert statuses == [201, 413, 413, 413], answers
            for status, fields, raw in answers:
                if status == 413:
                    quota_refusal(status, fields["content-type"], raw)
            winners = [name for name in visible(area) if name.startswith("r")]
            assert len(winners) == 1, winners
            assert temporary(area) == []
            async with httpx.AsyncClient(timeout=30) as http:
                deleted = await http.delete(f"{first}/api/files/{winners[0]}", headers=headers)
                assert deleted.status_code == 204


async def test_an_upload_far_over_the_quota_is_refused_before_it_is_all_received(
    store: Store, database: str, tmp_path: Path
) -> None:
    with api_server(tmp_path, database, {QUOTA_KEY: 256 * KIB}) as (base, files, _):
        headers, area = await user_area(store, files, "greedy@example.com")
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await post_file(http, base, headers, "kept.bin", 200 * KIB)).status_code == 201
        declared = 20 * MIB
        reader, writer = await open_connection(base)
        head = file_part_head("greedy.bin")
        writer.write(upload_request_head(base, headers, len(head) + declared + len(FORM_TAIL)))
        writer.write(head)

        async def send_some() -> None:
            # 3 MiB of the 20: the rest is never sent, so only a refusal
            # that comes before the end can answer.
            with contextlib.suppress(ConnectionError):
                for _ in range(12):
                    writer.write(b"g" * 256 * KIB)
                    await writer.drain()

        sending = asyncio.create_task(send_some())
        try:
            status, fields, raw = await asyncio.wait_for(read_response(reader), 15)
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            writer.close()
        message = quota_refusal(status, fields["content-type"], raw)
        assert "256.0 KiB" in message, message
        assert visible(area) == ["kept.bin"]

        async def nothing_left() -> bool:
            return temporary(area) == []

        await wait_until(nothing_left, timeout=10, what="the refused upload's file removed")


# ----- handlers -----------------------------------------------------------------------


@asynccontextmanager
async def stack(settings: Settings) -> AsyncIterator[Client]:
    """The API, a scheduler and a worker, all on these settings."""
    app = create_app(settings, build_registry(settings), api_services)
    async with (
        app.test_app() as test_app,
        running_scheduler(settings),
        running_worker(settings, concurrency=3),
    ):
        yield test_app.test_client()


async def upload(client: Client, headers: dict[str, str], name: str, content: bytes) -> None:
    response = await client.post(
        "/api/files",
        headers=headers,
        files={"file": FileStorage(io.BytesIO(content), filename=name)},
    )
    assert response.status_code == 201, await response.get_data()


async def run_task(
    client: Client, headers: dict[str, str], task_type: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """Create a task with retries left and return it once finished."""
    response = await client.post(
        "/api/tasks",
        headers=headers,
        json={"type": task_type, "payload": payload, "max_retries": 3},
    )
    assert response.status_code == 201, await response.get_data()
    task_id = (await response.get_json())["id"]
    seen: dict[str, Any] = {}

    async def done() -> bool:
        answer = await client.get(f"/api/tasks/{task_id}", headers=headers)
        seen.update(await answer.get_json())
        return seen["status"] in ("done", "failed", "cancelled")

    await wait_until(done, timeout=30, what=f"task {task_id} to finish")
    return seen


async def test_download_files_past_the_quota_fails_permanently_keeping_what_fit(
    store: Store, database: str, queue_name: str, tmp_path: Path, http_server: HTTPTestServer
) -> None:
    """Through RabbitMQ: the claim by id carries the quota (the default here).
    40 KiB are there; 8 KiB and 8 KiB more fit the 64 KiB, 30 000 bytes never
    do, whatever order the three finish in."""
    settings = make_settings(
        database, queue=queue_name, files=tmp_path / "files", **FAST, **{QUOTA_KEY: 64 * KIB}
    )
    headers = await token_for(store, "downloader@example.com")
    area = tmp_path / "files" / str(await new_user_id(store, "downloader@example.com"))
    urls = [
        http_server.url("/bytes/8192"),
        http_server.url("/bytes/30000"),
        http_server.url("/bytes/8193"),
    ]
    async with stack(settings) as client:
        await upload(client, headers, "already.bin", b"a" * 40 * KIB)
        task = await run_task(client, headers, "download_files", {"urls": urls})
    assert task["status"] == "failed", task
    assert task["attempts"] == 1, task  # permanent: no retry, though 3 were left
    assert QUOTA_KEY in task["last_error"], task
    assert urls[1] in task["last_error"], task
    saved = {entry["url"]: entry for entry in task["result"]["files"]}
    assert set(saved) == {urls[0], urls[2]}, task["result"]
    assert [entry["url"] for entry in task["result"]["failed"]] == [urls[1]]
    assert QUOTA_KEY in task["result"]["failed"][0]["error"]
    for url, size in ((urls[0], 8192), (urls[2], 8193)):
        kept = area / saved[url]["name"]
        assert kept.read_bytes() == body_of(size)
        assert saved[url]["sha256"] == sha256_of(body_of(size))
    assert sorted(visible(area)) == sorted(["already.bin", *(e["name"] for e in saved.values())])
    assert temporary(area) == []


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress: its size is about 3 bytes a pixel."""
    noise = random.Random(7).randbytes(width * height * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), noise).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_process_image_output_past_the_quota_fails_permanently(
    store: Store, database: str, tmp_path: Path
) -> None:
    """Without RabbitMQ: the worker claims from the fair pick, and the claim
    carries the user's own quota (user_limits), far below the default."""
    settings = make_settings(database, queue=None, files=tmp_path / "files", **FAST)
    headers = await token_for(store, "painter@example.com")
    user_id = await new_user_id(store, "painter@example.com")
    area = tmp_path / "files" / str(user_id)
    source = noise_png(64, 64)
    await set_files_quota(store, user_id, len(source) + len(source) // 2)
    async with stack(settings) as client:
        await upload(client, headers, "photo.png", source)
        # An unchanged copy: the output is exactly as large as the input.
        task = await run_task(client, headers, "process_image", {"path": "photo.png"})
    assert task["status"] == "failed", task
    assert task["attempts"] == 1, task
    assert QUOTA_KEY in task["last_error"], task
    assert visible(area) == ["photo.png"]
    assert temporary(area) == []


async def new_user_id(store: Store, email: str) -> int:
    user_id: int = await store.pool.fetchval("SELECT id FROM users WHERE email = $1", email)
    return user_id


# ----- the claim carries the quota ----------------------------------------------------


async def test_every_claim_path_returns_the_users_files_quota(store: Store) -> None:
    """By id (a RabbitMQ message), from the fair pick, and a stale pick taken
    over: the same columns, files_max_bytes among them (NULL: the default)."""
    limited = await new_user(store, "limited@example.com")
    default = await new_user(store, "default@example.com")
    await set_files_quota(store, limited, 12345)

    async def queued(user_id: int) -> Any:
        rows = await store.insert_tasks(
            user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None)]
        )
        return rows[0]["id"]

    by_id = await claim(store, [await queued(limited), await queued(default)], "w", 30)
    limited_task, default_task = await queued(limited), await queued(default)
    from_pick = await store.claim_fair("w", 30, 10, start_now=10, limits=FairLimits())
    await queued(limited)
    await queued(default)
    assert len(await store.dispatch(10, FairLimits())) == 2
    stale = await store.claim_stale_dispatched(10, "w", 30, older_than_seconds=0)

    for rows in (by_id, from_pick, stale):
        assert len(rows) == 2, rows
        assert {row["user_id"]: row["files_max_bytes"] for row in rows} == {
            limited: 12345,
            default: None,
        }
    assert set(by_id[0].keys()) == set(from_pick[0].keys()) == set(stale[0].keys())
    assert {row["id"] for row in from_pick} == {limited_task, default_task}
