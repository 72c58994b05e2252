"""Clients that try to hold the API's resources (SPEC §7.6): slow uploads,
request headers that never finish, huge list pages, and the metrics ports.

The HTTP tests run the real ``taskflow api`` (uvicorn, httptools, uvloop) in a
subprocess and talk to it over real sockets, since what they test lives in the
server and its threads, which an in-process test client does not use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskflow.enqueue import new_task_id
from taskflow.store.tasks import NewTask
from tests.conftest import wait_until
from tests.integration.api_helpers import token_for
from tests.processes import Component, component_env, free_port, wait_for_http
from tests.stores import Store

BOUNDARY = "hostile-client-boundary"
MIB = 1024 * 1024


@contextlib.contextmanager
def api_server(
    tmp_path: Path, database: str, tunables: dict[str, Any] | None = None
) -> Iterator[tuple[str, Path, int]]:
    """A real ``taskflow api``; yields its base URL, its file area and its pid."""
    port = free_port()
    env = component_env(tmp_path, database, queue=None, tunables=tunables)
    api = Component(
        "api", ["api", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "logs"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", 30)
        yield base, tmp_path / "files", api.pid
    finally:
        api.terminate()


async def user_area(store: Store, files: Path, email: str) -> tuple[dict[str, str], Path]:
    headers = await token_for(store, email)
    user_id = await store.pool.fetchval("SELECT id FROM users WHERE email = $1", email)
    return headers, files / str(user_id)


def file_part_head(filename: str) -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


FORM_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def upload_request_head(base: str, headers: dict[str, str], content_length: int) -> bytes:
    host = base.removeprefix("http://")
    lines = [
        "POST /api/files HTTP/1.1",
        f"Host: {host}",
        f"Authorization: {headers['Authorization']}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"Content-Length: {content_length}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_connection(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        if line:
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(fields.get("content-length", "0")))
    return int(status_line.split()[1]), fields, body


class SlowUpload:
    """An upload over a raw socket whose file bytes trickle in."""

    def __init__(self, base: str, headers: dict[str, str], filename: str, size: int) -> None:
        self.base, self.headers, self.filename, self.size = base, headers, filename, size
        self.sent = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        self.reader, self.writer = await open_connection(self.base)
        head = file_part_head(self.filename)
        total = len(head) + self.size + len(FORM_TAIL)
        self.writer.write(upload_request_head(self.base, self.headers, total) + head)
        await self.writer.drain()

    async def dribble(self, *, chunk_bytes: int, every_seconds: float) -> None:
        """Send file bytes slowly, stopping one chunk short of the end."""
        assert self.writer is not None
        while self.sent + chunk_bytes < self.size:
            self.writer.write(b"s" * chunk_bytes)
            await self.writer.drain()
            self.sent += chunk_bytes
            await asyncio.sleep(every_seconds)

    async def finish(self) -> tuple[int, dict[str, str], bytes]:
        assert self.writer is not None
        assert self.reader is not None
        self.writer.write(b"s" * (self.size - self.sent) + FORM_TAIL)
        await self.writer.drain()
        return await read_response(self.reader)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def multipart_body(filename: str, content: bytes) -> tuple[bytes, dict[str, str]]:
    body = file_part_head(filename) + content + FORM_TAIL
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def leftovers(area: Path) -> list[str]:
    return sorted(path.name for path in area.iterdir()) if area.is_dir() else []


# ----- slow uploads ---------------------------------------------------------------------


async def test_slow_uploads_do_not_lock_other_requests_out(
    store: Store, database: str, tmp_path: Path
) -> None:
    """Twelve uploads trickling at ~1 KB/s each: twice the threads Python's
    default executor has on this machine. Everything else still answers,
    including the requests that need file I/O themselves."""
    with api_server(tmp_path, database) as (base, files, _):
        alice, area = await user_area(store, files, "slow@example.com")
        bob, bob_area = await user_area(store, files, "other@example.com")
        slow = [SlowUpload(base, alice, f"slow-{n}.bin", 64 * 1024) for n in range(12)]
        await asyncio.gather(*(upload.start() for upload in slow))
        dribbling = [
            asyncio.create_task(upload.dribble(chunk_bytes=64, every_seconds=0.05))
            for upload in slow
        ]
        try:
            await asyncio.sleep(1.5)  # every upload is in its file part by now
            answered: list[str] = []
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:

                async def answers() -> None:
                    assert (await http.get("/healthz")).status_code == 200
                    answered.append("health")
                    task = {"type": "test_noop", "payload": {"n": 1}}
                    created = await http.post("/api/tasks", json=task, headers=bob)
                    assert created.status_code == 201, created.text
                    answered.append("task create")
                    body, content_type = multipart_body("small.txt", b"small file")
                    uploaded = await http.post(
                        "/api/files", content=body, headers={**bob, **content_type}
                    )
                    assert uploaded.status_code == 201, uploaded.text
                    answered.append("small upload")
                    listed = await http.get("/api/files", headers=bob)
                    assert listed.status_code == 200
                    assert [item["name"] for item in listed.json()] == ["small.txt"]
                    answered.append("file list")
                    downloaded = await http.get("/api/files/small.txt", headers=bob)
                    assert downloaded.content == b"small file"

                try:
                    await asyncio.wait_for(answers(), 10)
                except TimeoutError:
                    raise AssertionError(
                        f"stalled behind the slow uploads (> 10 s); answered: {answered}"
                    ) from None
            # The slow uploads themselves still work, however slowly they came.
            for upload in dribbling:
                upload.cancel()
            status, _, body = await asyncio.wait_for(slow[0].finish(), 10)
            assert status == 201, body
            assert json.loads(body)["size"] == 64 * 1024
        finally:
            for upload in dribbling:
                upload.cancel()
            for upload in slow:
                upload.close()

        async def only_finished_files_left() -> bool:
            return leftovers(area) == ["slow-0.bin"]

        await wait_until(only_finished_files_left, timeout=10, what="abandoned uploads removed")
        assert leftovers(bob_area) == ["small.txt"]


async def test_an_upload_past_its_deadline_is_408_and_leaves_nothing(
    store: Store, database: str, tmp_path: Path
) -> None:
    """Steady bytes, never idle long enough for the per-chunk timeout, but the
    whole upload takes longer than upload_timeout_seconds. A client that goes
    on sending after its answer is hung up on."""
    tunables = {"upload_timeout_seconds": 2, "http_header_timeout_seconds": 2}
    with api_server(tmp_path, database, tunables) as (base, files, _):
        headers, area = await user_area(store, files, "deadline@example.com")
        upload = SlowUpload(base, headers, "late.bin", 1024 * 1024)
        await upload.start()
        dribbling = asyncio.create_task(upload.dribble(chunk_bytes=100, every_seconds=0.05))
        try:
            assert upload.reader is not None
            started = time.monotonic()
            status, fields, body = await asyncio.wait_for(read_response(upload.reader), 15)
            elapsed = time.monotonic() - started
            assert await asyncio.wait_for(upload.reader.read(), 15) == b""
            hung_up = time.monotonic() - started - elapsed
        finally:
            dribbling.cancel()
            upload.close()
        assert status == 408, body
        assert fields["content-type"].startswith("application/json")
        assert "within 2 s" in json.loads(body)["error"]
        assert 1.5 < elapsed < 10
        assert 1.5 < hung_up < 10
        assert leftovers(area) == []


# ----- slow request headers -------------------------------------------------------------


async def test_clients_that_dribble_headers_are_dropped(
    store: Store, database: str, tmp_path: Path
) -> None:
    timeout = 2.0
    tunables = {"http_header_timeout_seconds": timeout}
    with api_server(tmp_path, database, tunables) as (base, _, _):
        headers = await token_for(store, "headers@example.com")
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"

        async def slowloris() -> float:
            """Seconds until the server hangs up on a one-byte-a-second client."""
            reader, writer = await open_connection(base)
            started = time.monotonic()
            try:
                for byte in request:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(), 1.0)
                    if reader.at_eof():
                        return time.monotonic() - started
                raise AssertionError("the server waited for all of a slow request's headers")
            except ConnectionError:
                return time.monotonic() - started
            finally:
                writer.close()

        async def silent() -> float:
            """A client that connects and sends nothing at all."""
            reader, writer = await open_connection(base)
            started = time.monotonic()
            try:
                await asyncio.wait_for(reader.read(), 15)
                return time.monotonic() - started
            finally:
                writer.close()

        async def keep_alive_then_dribble() -> float:
            """One good request, then the next one's headers a byte a second."""
            reader, writer = await open_connection(base)
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, _ = await read_response(reader)
                assert status == 200
                writer.write(b"G")
                started = time.monotonic()
                for byte in b"ET /healthz HTTP/1.1\r\n":
                    await asyncio.sleep(0.5)
                    if reader.at_eof():
                        break
                    writer.write(bytes([byte]))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(), 0.01)
                await asyncio.wait_for(reader.read(), 15)
                return time.monotonic() - started
            finally:
                writer.close()

        async def slow_body_after_quick_headers() -> int:
            """Headers on time, then a body that takes longer than the header
            timeout: the timeout is not the request's."""
            reader, writer = await open_connection(base)
            body = json.dumps({"type": "test_noop", "payload": {"n": 7}}).encode()
            try:
                writer.write(
                    b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Authorization: {headers['Authorization']}\r\n".encode()
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                for start in range(0, len(body), 4):
                    writer.write(body[start : start + 4])
                    await writer.drain()
                    await asyncio.sleep(3 * timeout / (len(body) / 4))
                status, _, answer = await read_response(reader)
                assert status == 201, answer
                return status
            finally:
                writer.close()

        async def normal_requests() -> int:
            served = 0
            async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                deadline = time.monotonic() + 2 * timeout
                while time.monotonic() < deadline:
                    assert (await http.get("/healthz")).status_code == 200
                    served += 1
                    await asyncio.sleep(0.1)
            return served

        results = await asyncio.wait_for(
            asyncio.gather(
                *(slowloris() for _ in range(20)),
                silent(),
                keep_alive_then_dribble(),
                slow_body_after_quick_headers(),
                normal_requests(),
            ),
            40,
        )
        *dropped, silent_seconds, keep_alive_seconds, slow_body_status, served = results
        assert all(timeout - 0.5 < seconds < timeout + 3 for seconds in dropped), dropped
        assert timeout - 0.5 < silent_seconds < timeout + 3
        assert keep_alive_seconds < timeout + 3
        assert slow_body_status == 201
        assert served >= 10


async def test_oversized_request_headers_are_refused(
    store: Store, database: str, tmp_path: Path
) -> None:
    """A header line of a MiB, sent as fast as the socket takes it: refused
    with a 431 once past the limit, not buffered whole."""
    with api_server(tmp_path, database) as (base, _, _):
        reader, writer = await open_connection(base)

        async def send_all() -> None:
            with contextlib.suppress(ConnectionError):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
                for _ in range(64):
                    writer.write(b"a" * 16 * 1024)
                    await writer.drain()
                writer.write(b"\r\n\r\n")
                await writer.drain()

        sending = asyncio.create_task(send_all())
        try:
            status, fields, body = await asyncio.wait_for(read_response(reader), 15)
            assert await asyncio.wait_for(reader.read(), 15) == b""  # and hung up
        finally:
            sending.cancel()
            writer.close()
        assert status == 431, body
        assert fields["content-type"] == "application/json"
        assert "larger than" in json.loads(body)["error"]
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200


# ----- metrics ports --------------------------------------------------------------------


def listening_address(port: int) -> str | None:
    """The local address a TCP socket listens on at this port, from /proc."""
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                address, port_hex = fields[1].split(":")
                if int(port_hex, 16) == port and fields[3] == "0A":  # LISTEN
                    if width == 8:
                        raw = bytes.fromhex(address)[::-1]
                        return ".".join(str(octet) for octet in raw)
                    return address
    return None


@pytest.mark.parametrize("component", ["scheduler", "worker"])
async def test_metrics_listen_on_loopback_unless_told_otherwise(
    component: str, database: str, tmp_path: Path
) -> None:
    env = component_env(tmp_path, database, queue=None)
    for extra, expected in (([], "127.0.0.1"), (["--metrics-host", "0.0.0.0"], "0.0.0.0")):
        port = free_port()
        args = [component, "--metrics-port", str(port), *extra]
        if component == "worker":
            args.append("--no-broker")
        process = Component(f"{component}-{port}", args, env, tmp_path / "logs")
        try:
            await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{port}/metrics", 30)
            assert listening_address(port) == expected
        finally:
            process.terminate()


# ----- huge list pages ------------------------------------------------------------------


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def test_a_list_page_stops_at_its_byte_limit(
    store: Store, database: str, tmp_path: Path
) -> None:
    """50 tasks of ~900 KB, listed with limit=1000 by an API whose pages stop
    at 4 MiB: pages of a few tasks, Links to the rest, and the API process
    never holds much more than a page at a time."""
    page_bytes = 4 * MIB
    tunables = {"list_response_max_bytes": page_bytes}
    with api_server(tmp_path, database, tunables) as (base, _, pid):
        email = "lists@example.com"
        headers = await token_for(store, email)
        user_id = await store.pool.fetchval("SELECT id FROM users WHERE email = $1", email)
        created = set()
        for batch in range(10):  # straight into the database: the API sees them first listed
            tasks = [
                NewTask(
                    new_task_id(),
                    "send_email",
                    {"to": "a@example.com", "body": f"{batch}-{n}-" + "x" * 900_000},
                    0,
                    3,
                    None,
                )
                for n in range(5)
            ]
            created |= {str(row["id"]) for row in await store.insert_tasks(user_id, tasks)}

        Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
        before = memory_kib(pid, "VmRSS")
        seen: list[str] = []
        pages: list[tuple[int, int]] = []  # (tasks, bytes) of each page
        url: str | None = "/api/tasks?limit=1000"
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            while url is not None:
                response = await http.get(url)
                assert response.status_code == 200
                page = response.json()
                seen.extend(task["id"] for task in page)
                pages.append((len(page), len(response.content)))
                link = response.headers.get("Link")
                url = link[1 : link.index(">")] if link else None
        growth_mib = (memory_kib(pid, "VmHWM") - before) / 1024
    # The whole list is ~45 MiB of JSON, which the API used to fetch, decode
    # and serialise at once.
    assert growth_mib < 40, f"the API's peak RSS grew by {growth_mib:.0f} MiB"
    assert sorted(seen) == sorted(created)  # every task once, none twice
    assert len(pages) >= 10, pages
    for tasks, size in pages:
        assert tasks >= 1
        assert tasks == 1 or size <= page_bytes, pages
