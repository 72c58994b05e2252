"""The three built-in task types end to end: the real API (upload, create,
poll, download) -> Postgres -> RabbitMQ -> an in-process Worker (and a
Scheduler, which promotes retries) -> the handler -> the outcome seen through
``GET /api/tasks/{id}`` and the files through ``GET /api/files/{name}``.

The outside world is real too: an aiosmtpd server and a local HTTP server
(tests.servers), both on loopback.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from quart.datastructures import FileStorage
from quart.typing import TestClientProtocol as Client

from taskflow.api import create_app
from taskflow.config import Settings
from taskflow.handlers import build_registry
from taskflow.runtime import api_services
from tests import servers
from tests.conftest import (
    auth_headers,
    make_settings,
    running_scheduler,
    running_worker,
    wait_until,
)
from tests.servers import CONTENT_KINDS, HTTPTestServer, SMTPTestServer, body_of, sha256_of

# Fixtures from tests.servers, bound here so pytest finds them in this module.
smtp_server = servers.smtp_server
http_server = servers.http_server

FAST = {
    "scheduler_interval_ms": 50,
    "retry_backoff_base_ms": 50,
    "retry_backoff_max_ms": 200,
    "worker_poll_interval_ms": 200,
    "shutdown_grace_seconds": 1,
}
FINISHED = {"done", "failed", "cancelled"}
SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_stack_settings(
    database: str, queue_name: str, tmp_path: Path, smtp_server: SMTPTestServer
) -> SettingsFactory:
    def build(**overrides: Any) -> Settings:
        return make_settings(
            database,
            queue=queue_name,
            files=tmp_path / "files",
            mail_host=smtp_server.host,
            mail_port=smtp_server.port,
            mail_from="TaskFlow <robot@taskflow.test>",
            **{**FAST, **overrides},
        )

    return build


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
    assert (await response.get_json())["name"] == name


async def download(client: Client, headers: dict[str, str], name: str) -> bytes:
    response = await client.get(f"/api/files/{name}", headers=headers)
    assert response.status_code == 200, await response.get_data()
    return await response.get_data(as_text=False)


async def listed(client: Client, headers: dict[str, str]) -> list[str]:
    response = await client.get("/api/files", headers=headers)
    assert response.status_code == 200
    return [item["name"] for item in await response.get_json()]


async def create(
    client: Client, headers: dict[str, str], task_type: str, payload: dict[str, Any], **extra: Any
) -> str:
    response = await client.post(
        "/api/tasks", headers=headers, json={"type": task_type, "payload": payload, **extra}
    )
    assert response.status_code == 201, await response.get_data()
    task_id: str = (await response.get_json())["id"]
    return task_id


async def finished(
    client: Client, headers: dict[str, str], task_id: str, *, timeout: float = 30
) -> dict[str, Any]:
    """The task as the API shows it, once it has reached a final state."""
    seen: dict[str, Any] = {}

    async def check() -> bool:
        response = await client.get(f"/api/tasks/{task_id}", headers=headers)
        assert response.status_code == 200, await response.get_data()
        seen.update(await response.get_json())
        return seen["status"] in FINISHED

    await wait_until(check, timeout=timeout, what=f"task {task_id} to finish")
    return seen


def image_bytes(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def rgb_pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    """Row by row, as (R, G, B)."""
    raw = image.convert("RGB").tobytes()
    return [(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)]


def sample_picture() -> Image.Image:
    """Eight distinct colours, including pure black, white and primaries."""
    colours = [
        (0, 0, 0),
        (255, 255, 255),
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (200, 30, 30),
        (12, 150, 240),
        (128, 128, 64),
    ]
    image = Image.new("RGB", (4, 2))
    image.putdata(colours)
    return image


# ----- send_email ---------------------------------------------------------------------


async def test_send_email_with_an_uploaded_attachment(
    make_stack_settings: SettingsFactory, smtp_server: SMTPTestServer
) -> None:
    settings = make_stack_settings()
    attachment = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    html = "<h1>Report</h1><p>Hello <b>Bob</b>, the numbers are in.</p>"
    async with stack(settings) as client:
        headers = await auth_headers(client, "mailer@example.com")
        await upload(client, headers, "report.pdf", attachment)
        task_id = await create(
            client,
            headers,
            "send_email",
            {
                "to": "bob@example.com",
                "subject": "Monthly report",
                "body": html,
                "attached_files": ["report.pdf"],
            },
        )
        task = await finished(client, headers, task_id)
    assert task["status"] == "done", task
    assert task["attempts"] == 1
    assert task["result"]["sent"] is True
    assert task["result"]["attachments"] == ["report.pdf"]

    assert len(smtp_server.messages) == 1
    received = smtp_server.messages[0]
    assert received.rcpt_tos == ["bob@example.com"]
    assert received.mail_from == "robot@taskflow.test"
    message = received.message
    assert message["To"] == "bob@example.com"
    assert message["From"] == "TaskFlow <robot@taskflow.test>"
    assert message["Subject"] == "Monthly report"
    assert message["Message-ID"] == task["result"]["message_id"]
    assert message.get_content_type() == "multipart/mixed"
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None
    assert "<b>Bob</b>" in html_part.get_content()
    text_part = message.get_body(preferencelist=("plain",))
    assert text_part is not None
    text = text_part.get_content()
    assert "Hello Bob, the numbers are in." in text
    assert "<" not in text
    attachments = list(message.iter_attachments())
    assert len(attachments) == 1
    assert attachments[0].get_filename() == "report.pdf"
    assert attachments[0].get_content_type() == "application/pdf"
    assert attachments[0].get_content() == attachment


# ----- process_image ------------------------------------------------------------------


async def test_process_image_grayscale_and_invert_on_an_uploaded_png(
    make_stack_settings: SettingsFactory,
) -> None:
    source = sample_picture()
    async with stack(make_stack_settings()) as client:
        headers = await auth_headers(client, "painter@example.com")
        await upload(client, headers, "photo.png", image_bytes(source, "PNG"))
        grey_id = await create(
            client, headers, "process_image", {"path": "photo.png", "grayscale": True}
        )
        inverted_id = await create(
            client, headers, "process_image", {"path": "photo.png", "invert": True}
        )
        grey = await finished(client, headers, grey_id)
        inverted = await finished(client, headers, inverted_id)
        assert grey["status"] == "done", grey
        assert inverted["status"] == "done", inverted
        grey_png = await download(client, headers, grey["result"]["output"])
        inverted_png = await download(client, headers, inverted["result"]["output"])
        response = await client.get(f"/api/files/{grey['result']['output']}", headers=headers)
        assert response.headers["Content-Type"] == "image/png"
        names = await listed(client, headers)

    assert sorted(names) == sorted(
        ["photo.png", grey["result"]["output"], inverted["result"]["output"]]
    )
    assert grey["result"]["output"].startswith("photo.processed")
    assert (grey["result"]["width"], grey["result"]["height"]) == (4, 2)
    assert grey["result"]["source"] == "photo.png"

    with Image.open(io.BytesIO(grey_png)) as output:
        assert output.format == "PNG"
        assert output.size == source.size
        rgb = rgb_pixels(output)
    assert all(r == g == b for r, g, b in rgb), rgb
    # ITU-R 601-2 luma, as documented: L = 0.299 R + 0.587 G + 0.114 B.
    assert [r for r, _, _ in rgb] == list(source.convert("L").tobytes())
    assert rgb[:2] == [(0, 0, 0), (255, 255, 255)]

    with Image.open(io.BytesIO(inverted_png)) as output:
        assert output.size == source.size
        pixels = rgb_pixels(output)
    expected = [(255 - r, 255 - g, 255 - b) for r, g, b in rgb_pixels(source)]
    assert pixels == expected


async def test_process_image_invert_on_an_uploaded_jpeg(
    make_stack_settings: SettingsFactory,
) -> None:
    source = Image.new("RGB", (32, 16), (40, 90, 200))
    source.paste((230, 220, 20), (16, 0, 32, 16))  # two flat halves survive JPEG well
    original = image_bytes(source, "JPEG", quality=95)
    async with stack(make_stack_settings()) as client:
        headers = await auth_headers(client, "jpeg@example.com")
        await upload(client, headers, "holiday.jpg", original)
        task_id = await create(
            client, headers, "process_image", {"path": "holiday.jpg", "invert": True}
        )
        task = await finished(client, headers, task_id)
        assert task["status"] == "done", task
        output_name = task["result"]["output"]
        processed = await download(client, headers, output_name)
    assert output_name.endswith(".jpg")
    assert task["result"]["format"] == "JPEG"
    with Image.open(io.BytesIO(original)) as decoded:
        before = rgb_pixels(decoded)
    with Image.open(io.BytesIO(processed)) as output:
        assert output.format == "JPEG"
        after = rgb_pixels(output)
    # Re-encoding is lossy, most of all at the edge between the halves (chroma
    # subsampling): on average each channel is within a step or two of 255 - v,
    # and away from the edge within a few.
    errors = [
        abs((255 - old) - new)
        for old_pixel, new_pixel in zip(before, after, strict=True)
        for old, new in zip(old_pixel, new_pixel, strict=True)
    ]
    assert sum(errors) / len(errors) <= 3, sum(errors) / len(errors)
    for x in (4, 27):  # the middle of each half, in the middle row
        index = 8 * 32 + x
        assert all(
            abs((255 - o) - n) <= 4 for o, n in zip(before[index], after[index], strict=True)
        )


# ----- download_files -----------------------------------------------------------------


async def test_download_files_retries_only_what_failed(
    make_stack_settings: SettingsFactory, http_server: HTTPTestServer
) -> None:
    settings = make_stack_settings(download_allow_private=True)
    flaky = "/flaky/e2e?failures=2"
    urls = [http_server.url("/bytes/5000"), http_server.url("/type/pdf"), http_server.url(flaky)]
    async with stack(settings) as client:
        headers = await auth_headers(client, "fetcher@example.com")
        task_id = await create(client, headers, "download_files", {"urls": urls}, max_retries=3)
        task = await finished(client, headers, task_id)
        assert task["status"] == "done", task
        saved = task["result"]["files"]
        contents = {entry["url"]: await download(client, headers, entry["name"]) for entry in saved}
        history = await (
            await client.get(f"/api/tasks/{task_id}/history", headers=headers)
        ).get_json()
        names = await listed(client, headers)

    assert task["attempts"] == 3
    assert task["retries"] == 2
    # The good URLs were fetched by the first attempt only; the flaky one thrice.
    assert http_server.hits("/bytes/5000") == 1
    assert http_server.hits("/type/pdf") == 1
    assert http_server.hits(flaky) == 3
    assert [entry["url"] for entry in saved] == urls
    expected = {
        urls[0]: body_of(5000),
        urls[1]: CONTENT_KINDS["pdf"][1],
        urls[2]: body_of(4096),
    }
    assert contents == expected
    for entry in saved:
        assert entry["sha256"] == sha256_of(expected[entry["url"]])
        assert entry["size"] == len(expected[entry["url"]])
    assert sorted(names) == sorted(entry["name"] for entry in saved)
    assert [event["to_status"] for event in history].count("retrying") == 2
    assert history[-1]["to_status"] == "done"


@pytest.mark.parametrize(
    ("url_template", "reason"),
    [
        ("http://127.0.0.1:{port}/type/png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:{port}/type/png", "loopback"),
        ("http://localhost:{port}/type/png", "loopback"),
    ],
)
async def test_ssrf_guard_refuses_private_targets(
    make_stack_settings: SettingsFactory,
    http_server: HTTPTestServer,
    url_template: str,
    reason: str,
) -> None:
    settings = make_stack_settings(download_allow_private=False)
    url = url_template.format(port=http_server.port)
    async with stack(settings) as client:
        headers = await auth_headers(client, "ssrf@example.com")
        task_id = await create(client, headers, "download_files", {"urls": [url]}, max_retries=3)
        task = await finished(client, headers, task_id)
        names = await listed(client, headers)
    assert task["status"] == "failed", task
    assert task["attempts"] == 1  # permanent: retrying cannot make an address public
    assert "refusing to connect" in task["last_error"]
    assert reason in task["last_error"]
    assert "download_allow_private" in task["last_error"]
    assert http_server.requests == []
    assert names == []


# ----- file names in payloads ---------------------------------------------------------


async def test_traversal_in_payloads_is_refused_at_creation(
    make_stack_settings: SettingsFactory, tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    outside = tmp_path / "x.png"
    outside.write_bytes(b"not an upload")
    before = sorted(tmp_path.rglob("*"))
    bad = [
        ("send_email", {"to": "a@example.com", "attached_files": ["../../etc/passwd"]}),
        ("send_email", {"to": "a@example.com", "attached_files": ["ok.txt", "/etc/passwd"]}),
        ("send_email", {"to": "a@example.com", "attached_files": ["a/b"]}),
        ("send_email", {"to": "a@example.com", "attached_files": [".hidden"]}),
        ("process_image", {"path": "../x.png", "invert": True}),
        ("process_image", {"path": "..\\x.png", "invert": True}),
        ("process_image", {"path": "/etc/passwd", "invert": True}),
        ("process_image", {"path": "..", "invert": True}),
        ("process_image", {"path": "x\x00.png", "invert": True}),
    ]
    async with stack(make_stack_settings()) as client:
        headers = await auth_headers(client, "traversal@example.com")
        for task_type, payload in bad:
            response = await client.post(
                "/api/tasks", headers=headers, json={"type": task_type, "payload": payload}
            )
            assert response.status_code == 400, (payload, await response.get_data())
            body = await response.get_json()
            fields = [item["field"] for item in body["details"]]
            assert all(
                field.startswith(("payload.attached_files", "payload.path")) for field in fields
            ), body
        tasks = await (await client.get("/api/tasks", headers=headers)).get_json()
    assert tasks == []
    assert sorted(tmp_path.rglob("*")) == before
    assert outside.read_bytes() == b"not an upload"
    assert smtp_server.messages == []


async def test_a_missing_file_fails_the_task_permanently(
    make_stack_settings: SettingsFactory, smtp_server: SMTPTestServer
) -> None:
    async with stack(make_stack_settings()) as client:
        headers = await auth_headers(client, "forgetful@example.com")
        email_id = await create(
            client,
            headers,
            "send_email",
            {"to": "a@example.com", "subject": "see attached", "attached_files": ["nope.pdf"]},
            max_retries=3,
        )
        image_id = await create(
            client, headers, "process_image", {"path": "missing.png", "invert": True}, max_retries=3
        )
        # A name that would become "../x.png" under Unicode normalisation is
        # refused at creation, by the same rule the file area applies.
        disguised = await client.post(
            "/api/tasks",
            headers=headers,
            json={"type": "process_image", "payload": {"path": "\uff0e\uff0e\uff0fx.png"}},
        )
        assert disguised.status_code == 400
        assert (await disguised.get_json())["details"][0]["field"] == "payload.path"
        email = await finished(client, headers, email_id)
        image = await finished(client, headers, image_id)
        names = await listed(client, headers)
        listing = await client.get("/api/tasks", headers=headers)
        assert len(await listing.get_json()) == 2
    for task in (email, image):
        assert task["status"] == "failed", task
        assert task["attempts"] == 1, task
    assert email["last_error"] == "attachment 'nope.pdf' not found"
    assert image["last_error"] == "image 'missing.png' not found"
    assert smtp_server.messages == []
    assert names == []


async def test_another_users_file_is_never_found(
    make_stack_settings: SettingsFactory, smtp_server: SMTPTestServer
) -> None:
    settings = make_stack_settings()
    secret_png = image_bytes(sample_picture(), "PNG")
    async with stack(settings) as client:
        alice = await auth_headers(client, "alice@example.com")
        bob = await auth_headers(client, "bob@example.com")
        await upload(client, alice, "secret.png", secret_png)
        await upload(client, alice, "secret.txt", b"alice's diary")
        image_id = await create(
            client, bob, "process_image", {"path": "secret.png", "grayscale": True}
        )
        email_id = await create(
            client,
            bob,
            "send_email",
            {"to": "bob@example.com", "subject": "loot", "attached_files": ["secret.txt"]},
        )
        image = await finished(client, bob, image_id)
        email = await finished(client, bob, email_id)
        alice_names = await listed(client, alice)
        bob_names = await listed(client, bob)
        assert await download(client, alice, "secret.png") == secret_png
    assert image["status"] == "failed", image
    assert image["attempts"] == 1
    assert image["last_error"] == "image 'secret.png' not found"
    assert email["status"] == "failed", email
    assert email["attempts"] == 1
    assert email["last_error"] == "attachment 'secret.txt' not found"
    assert smtp_server.messages == []
    assert alice_names == ["secret.png", "secret.txt"]  # no output was written next to them
    assert bob_names == []
    assert not any(path.is_file() for path in settings.base_file_path.rglob("*processed*"))
