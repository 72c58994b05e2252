"""/api/files through the real app: upload, list, download, delete; the size
cap, hostile names, other users, and the error shapes (SPEC §4, §7.4, §7.5).

Multipart bodies are built by hand so a test controls every byte a client
could send, including names only RFC 5987 (``filename*=``) can carry.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from taskflow.api import create_app
from taskflow.config import Settings
from taskflow.handlers import build_registry
from taskflow.runtime import api_services
from tests.conftest import make_settings, wait_until
from tests.integration.api_helpers import json_error, token_for
from tests.stores import Store

BOUNDARY = "taskflow-test-boundary-7d3f"
MIB = 1024 * 1024

Part = tuple[str, str | None, bytes]  # field name, filename (None: a text field), content


def encode_filename(filename: str) -> str:
    """A quoted ``filename=`` for plain ASCII, else RFC 5987 ``filename*=``,
    which carries any character (NUL, CR, backslash, non-ASCII) exactly."""
    if filename.isascii() and filename.isprintable() and not set(filename) & set('"\\%'):
        return f'filename="{filename}"'
    return f"filename*=UTF-8''{quote(filename, safe='')}"


def multipart(parts: list[Part], *, boundary: str = BOUNDARY) -> tuple[bytes, dict[str, str]]:
    body = bytearray()
    for field, filename, content in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f"; {encode_filename(filename)}"
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def upload(
    client: Client,
    headers: dict[str, str],
    filename: str,
    content: bytes,
    *,
    name: str | None = None,
    query: str = "",
) -> Any:
    parts: list[Part] = []
    if name is not None:
        parts.append(("name", None, name.encode()))
    parts.append(("file", filename, content))
    body, content_type = multipart(parts)
    return await client.post(f"/api/files{query}", data=body, headers={**headers, **content_type})


def file_url(name: str) -> str:
    """The path as an ASGI server hands it to the app, percent-decoded: a
    client's ``..%2Fx`` reaches the app as ``../x``. The test client passes
    the path through as given, so the decoded name goes in as it is."""
    return "/api/files/" + name


def tree(root: Path) -> set[str]:
    """Every file and directory under ``root``, hidden ones included."""
    if not root.exists():
        return set()
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def pattern(size: int) -> bytes:
    """Bytes that differ at every offset a chunking bug could shift."""
    block = hashlib.sha256(str(size).encode()).digest() + bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
async def alice(store: Store) -> dict[str, str]:
    return await token_for(store, "alice@example.com")


@pytest.fixture
async def bob(store: Store) -> dict[str, str]:
    return await token_for(store, "bob@example.com")


async def user_id_of(store: Store, email: str) -> int:
    user_id: int = await store.pool.fetchval("SELECT id FROM users WHERE email = $1", email)
    return user_id


# ----- the round trip -----------------------------------------------------------------


async def test_upload_list_download_delete_round_trip(
    client: Client, alice: dict[str, str], settings: Settings, store: Store
) -> None:
    big = pattern(3 * MIB + 7)  # over request_max_bytes (2 MiB): the JSON limit must not apply
    small = "контент ✓".encode()
    response = await upload(client, alice, "big.bin", big)
    assert response.status_code == 201, await response.get_data()
    created = await response.get_json()
    assert created["name"] == "big.bin"
    assert created["size"] == len(big)
    assert created["created_at"].endswith("Z")
    assert response.headers["Location"] == "/api/files/big.bin"

    response = await upload(client, alice, "отчёт 2024.txt", small)
    assert response.status_code == 201, await response.get_data()
    assert response.headers["Location"] == "/api/files/" + quote("отчёт 2024.txt", safe="")

    response = await client.get("/api/files", headers=alice)
    assert response.status_code == 200
    listed = await response.get_json()
    assert [(item["name"], item["size"]) for item in listed] == [
        ("big.bin", len(big)),
        ("отчёт 2024.txt", len(small)),
    ]
    assert all(set(item) == {"name", "size", "created_at"} for item in listed)

    user_id = await user_id_of(store, "alice@example.com")
    area = settings.base_file_path / str(user_id)
    assert (area / "big.bin").read_bytes() == big
    assert sorted(os.listdir(area)) == ["big.bin", "отчёт 2024.txt"]  # no temporary leftovers

    response = await client.get("/api/files/big.bin", headers=alice)
    assert response.status_code == 200
    assert await response.get_data() == big
    assert response.headers["Content-Length"] == str(len(big))
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"big.bin\"; filename*=UTF-8''big.bin"
    )

    response = await client.get(file_url("отчёт 2024.txt"), headers=alice)
    assert response.status_code == 200
    assert await response.get_data() == small
    assert response.headers["Content-Type"].startswith("text/plain")
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment; ")
    assert "filename*=UTF-8''" + quote("отчёт 2024.txt", safe="") in disposition
    assert disposition.isascii()

    response = await client.delete("/api/files/big.bin", headers=alice)
    assert response.status_code == 204
    assert await response.get_data() == b""
    assert not (area / "big.bin").exists()
    await json_error(await client.get("/api/files/big.bin", headers=alice), 404)
    await json_error(await client.delete("/api/files/big.bin", headers=alice), 404)
    listed = await (await client.get("/api/files", headers=alice)).get_json()
    assert [item["name"] for item in listed] == ["отчёт 2024.txt"]


async def test_empty_area_lists_nothing(client: Client, alice: dict[str, str]) -> None:
    response = await client.get("/api/files", headers=alice)
    assert response.status_code == 200
    assert await response.get_json() == []


async def test_name_field_overrides_the_filename(client: Client, alice: dict[str, str]) -> None:
    # The upload's own filename need not be valid when a name is given.
    response = await upload(client, alice, "C:\\fakepath\\scan.png", b"data", name="scan.png")
    assert response.status_code == 201, await response.get_data()
    assert (await response.get_json())["name"] == "scan.png"
    # An empty name field (an untouched form input) falls back to the filename.
    response = await upload(client, alice, "fallback.txt", b"x", name="")
    assert response.status_code == 201, await response.get_data()
    assert (await response.get_json())["name"] == "fallback.txt"
    # No name at all is a 400 that says where to put one.
    body = await json_error(await upload(client, alice, "", b"x"), 400)
    assert "name" in body["error"]


async def test_a_name_field_after_the_file_is_refused(
    client: Client, alice: dict[str, str], tmp_path: Path
) -> None:
    before = tree(tmp_path)
    body, content_type = multipart([("file", "a.txt", b"abc"), ("name", None, b"b.txt")])
    response = await client.post("/api/files", data=body, headers={**alice, **content_type})
    error = await json_error(response, 400)
    assert "last part" in error["error"]
    # At most the (empty) area directory appeared: no file, no temporary file.
    assert all((tmp_path / path).is_dir() for path in tree(tmp_path) - before)
    assert await (await client.get("/api/files", headers=alice)).get_json() == []


async def test_empty_file_is_stored(client: Client, alice: dict[str, str]) -> None:
    response = await upload(client, alice, "empty.txt", b"")
    assert response.status_code == 201, await response.get_data()
    assert (await response.get_json())["size"] == 0
    response = await client.get("/api/files/empty.txt", headers=alice)
    assert await response.get_data() == b""


# ----- conflicts ----------------------------------------------------------------------


async def test_a_taken_name_is_409_unless_renaming(client: Client, alice: dict[str, str]) -> None:
    assert (await upload(client, alice, "notes.txt", b"first")).status_code == 201
    body = await json_error(await upload(client, alice, "notes.txt", b"second"), 409)
    assert "notes.txt" in body["error"]
    assert await (await client.get("/api/files/notes.txt", headers=alice)).get_data() == b"first"

    response = await upload(client, alice, "notes.txt", b"second", query="?on_conflict=rename")
    assert response.status_code == 201, await response.get_data()
    renamed = await response.get_json()
    assert renamed["name"] == "notes-2.txt"
    assert response.headers["Location"] == "/api/files/notes-2.txt"
    response = await upload(client, alice, "notes.txt", b"third", query="?on_conflict=rename")
    assert (await response.get_json())["name"] == "notes-3.txt"
    contents = {
        name: await (await client.get(f"/api/files/{name}", headers=alice)).get_data()
        for name in ("notes.txt", "notes-2.txt", "notes-3.txt")
    }
    assert contents == {"notes.txt": b"first", "notes-2.txt": b"second", "notes-3.txt": b"third"}

    body = await json_error(
        await upload(client, alice, "other.txt", b"x", query="?on_conflict=overwrite"), 400
    )
    assert "on_conflict" in body["error"]


# ----- the size cap -------------------------------------------------------------------


@pytest.fixture
async def small_cap_client(
    database: str, queue_name: str, tmp_path: Path
) -> AsyncIterator[tuple[Client, Settings]]:
    settings = make_settings(
        database, queue=queue_name, files=tmp_path / "capped", upload_max_bytes=MIB
    )
    app = create_app(settings, build_registry(settings), api_services)
    async with app.test_app() as test_app:
        yield test_app.test_client(), settings


async def test_size_cap_is_enforced_while_streaming(
    small_cap_client: tuple[Client, Settings], store: Store, tmp_path: Path
) -> None:
    client, settings = small_cap_client
    headers = await token_for(store, "capped@example.com")
    assert (await upload(client, headers, "exact.bin", pattern(MIB))).status_code == 201
    before = tree(tmp_path)
    # One byte over: within the body limit (which allows for the multipart
    # framing), so it is the streaming count that stops it.
    body = await json_error(await upload(client, headers, "over.bin", pattern(MIB + 1)), 413)
    assert str(MIB) in body["error"]
    # Far over: refused on its Content-Length before any of it is read.
    await json_error(await upload(client, headers, "huge.bin", pattern(3 * MIB)), 413)
    assert tree(tmp_path) == before  # no file, no temporary file, nowhere
    listed = await (await client.get("/api/files", headers=headers)).get_json()
    assert [item["name"] for item in listed] == ["exact.bin"]
    # JSON routes keep their own, smaller limit.
    response = await client.post(
        "/api/tasks",
        headers={**headers, "Content-Type": "application/json"},
        data=b'{"type": "send_email", "payload": {"to": "a@example.com", "body": "'
        + b"x" * settings.request_max_bytes
        + b'"}}',
    )
    await json_error(response, 413)


async def test_default_cap_accepts_a_full_size_upload(
    client: Client, alice: dict[str, str], settings: Settings
) -> None:
    content = pattern(settings.upload_max_bytes)
    response = await upload(client, alice, "full.bin", content)
    assert response.status_code == 201, await response.get_data()
    assert (await response.get_json())["size"] == settings.upload_max_bytes
    response = await client.get("/api/files/full.bin", headers=alice)
    downloaded = await response.get_data(as_text=False)
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(content).digest()
    await json_error(await upload(client, alice, "over.bin", content + b"!"), 413)


# ----- hostile names ------------------------------------------------------------------

HOSTILE_NAMES = [
    "../x",
    "../../etc/passwd",
    "..",
    ".",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "..\\x",
    ".hidden",
    ".tmp-planted",
    "x\x00y",
    "nul\x00",
    "line\nbreak",
    "carriage\rreturn",
    "tab\there",
    "bell\x07",
    "del\x7f",
    " padded ",
    "x" * 300,
    "é" * 200,  # 200 characters but 400 bytes of UTF-8
    # Unicode normalisation (NFKC) would make these paths or hidden names.
    "\uff0e\uff0e\uff0fx",  # fullwidth "../x"
    "\uff0fetc\uff0fpasswd",  # fullwidth "/etc/passwd"
    "\u2025",  # two dot leader: ".."
    "\ufe52\ufe52\u2215x",  # small full stops and a division slash
    "\uff0ehidden",  # fullwidth leading dot
    "a\uff3cb",  # fullwidth backslash
    "invoice\u202egnp.exe",  # right-to-left override: shows as "invoiceexe.png"
]


async def test_hostile_names_are_refused_everywhere(
    client: Client, alice: dict[str, str], tmp_path: Path, settings: Settings
) -> None:
    # Something real to aim at, in the area and next to it.
    assert (await upload(client, alice, "x", b"mine")).status_code == 201
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not yours")
    before = tree(tmp_path)
    for hostile in HOSTILE_NAMES:
        # As the multipart filename ...
        error = await json_error(await upload(client, alice, hostile, b"evil"), 400)
        assert "file name" in error["error"], (hostile, error)
        # ... as the name field ...
        error = await json_error(await upload(client, alice, "ok.txt", b"evil", name=hostile), 400)
        assert "file name" in error["error"], (hostile, error)
        # ... and in the URL.
        for method in (client.get, client.delete):
            response = await method(file_url(hostile), headers=alice)
            await json_error(response, 400)
    assert tree(tmp_path) == before
    assert outside.read_bytes() == b"not yours"
    assert await (await client.get("/api/files/x", headers=alice)).get_data() == b"mine"


@pytest.mark.parametrize(
    "path",
    [
        "/api/files/..%2Fx",
        "/api/files/..%2F..%2Fetc%2Fpasswd",
        "/api/files/%2e%2e",
        "/api/files/%2E%2E%2Fx",
        "/api/files/%2e%2e/x",
        "/api/files/a%5Cb",
        "/api/files/x%00y",
        "/api/files/%0A",
        "/api/files/..%2F1%2Fx",
        "/api/files//etc/passwd",
        "/api/files/%2Fetc%2Fpasswd",
        "/api/files/x/",
    ],
)
async def test_traversal_in_the_url_is_400(
    client: Client, alice: dict[str, str], tmp_path: Path, path: str
) -> None:
    before = tree(tmp_path)
    for method in (client.get, client.delete):
        await json_error(await method(unquote(path), headers=alice), 400)
    assert tree(tmp_path) == before


async def test_compatibility_characters_that_stay_plain_are_fine(
    client: Client, alice: dict[str, str]
) -> None:
    for name in ("\ufb01le.txt", "cafe\u0301.txt", "caf\u00e9.txt", "\u4e2d\u6587.png"):
        response = await upload(client, alice, name, name.encode())
        assert response.status_code == 201, (name, await response.get_data())
        response = await client.get(file_url(name), headers=alice)
        assert await response.get_data() == name.encode()


# ----- other users and no token -------------------------------------------------------


async def test_another_users_files_are_invisible(
    client: Client,
    alice: dict[str, str],
    bob: dict[str, str],
    settings: Settings,
    store: Store,
) -> None:
    assert (await upload(client, alice, "secret.txt", b"alice only")).status_code == 201
    assert await (await client.get("/api/files", headers=bob)).get_json() == []
    await json_error(await client.get("/api/files/secret.txt", headers=bob), 404)
    await json_error(await client.delete("/api/files/secret.txt", headers=bob), 404)
    alice_id = await user_id_of(store, "alice@example.com")
    # Reaching into the sibling directory by name is a bad name, not a lookup.
    await json_error(await client.get(file_url(f"../{alice_id}/secret.txt"), headers=bob), 400)
    # Bob's own file of the same name is his, and does not touch Alice's.
    response = await upload(client, bob, "secret.txt", b"bob's")
    assert response.status_code == 201
    assert await (await client.get("/api/files/secret.txt", headers=alice)).get_data() == (
        b"alice only"
    )
    assert await (await client.get("/api/files/secret.txt", headers=bob)).get_data() == b"bob's"
    assert (settings.base_file_path / str(alice_id) / "secret.txt").read_bytes() == b"alice only"


async def test_no_token_is_401_and_writes_nothing(
    client: Client, alice: dict[str, str], tmp_path: Path
) -> None:
    assert (await upload(client, alice, "kept.txt", b"kept")).status_code == 201
    before = tree(tmp_path)
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic eDp5"}):
        response = await upload(client, headers, "new.txt", b"x")
        await json_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        await json_error(await client.get("/api/files", headers=headers), 401)
        await json_error(await client.get("/api/files/kept.txt", headers=headers), 401)
        await json_error(await client.delete("/api/files/kept.txt", headers=headers), 401)
    assert tree(tmp_path) == before


# ----- malformed uploads --------------------------------------------------------------


async def test_malformed_uploads_are_400(
    client: Client, alice: dict[str, str], tmp_path: Path
) -> None:
    before = tree(tmp_path)
    # No file field at all, or the file under another field name.
    body, content_type = multipart([("name", None, b"a.txt")])
    response = await client.post("/api/files", data=body, headers={**alice, **content_type})
    assert "'file'" in (await json_error(response, 400))["error"]
    body, content_type = multipart([("upload", "a.txt", b"x")])
    response = await client.post("/api/files", data=body, headers={**alice, **content_type})
    await json_error(response, 400)
    # An empty body, a truncated one, one without a boundary.
    for data in (b"", body[: len(body) // 2]):
        response = await client.post("/api/files", data=data, headers={**alice, **content_type})
        await json_error(response, 400)
    response = await client.post(
        "/api/files", data=body, headers={**alice, "Content-Type": "multipart/form-data"}
    )
    await json_error(response, 400)
    # Not multipart at all.
    await json_error(await client.post("/api/files", json={"file": "x"}, headers=alice), 415)
    response = await client.post(
        "/api/files", data=b"raw", headers={**alice, "Content-Type": "application/octet-stream"}
    )
    await json_error(response, 415)
    # A name field that is not UTF-8, or absurdly long.
    body, content_type = multipart([("name", None, b"\xff\xfe.txt"), ("file", "a.txt", b"x")])
    response = await client.post("/api/files", data=body, headers={**alice, **content_type})
    await json_error(response, 400)
    body, content_type = multipart([("name", None, b"n" * 100_000), ("file", "a.txt", b"x")])
    response = await client.post("/api/files", data=body, headers={**alice, **content_type})
    await json_error(response, 400)
    # Too many parts.
    body, content_type = multipart([(f"f{i}", None, b"x") for i in range(40)])
    response = await client.post("/api/files", data=body, headers={**alice, **content_type})
    await json_error(response, 413)
    assert tree(tmp_path) == before


# ----- what a download looks like -----------------------------------------------------


async def test_active_content_is_never_served_inline(client: Client, alice: dict[str, str]) -> None:
    active = {
        "page.html": b"<html><script>alert(document.cookie)</script></html>",
        "image.svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        "feed.xml": b"<?xml version='1.0'?><x/>",
        "code.js": b"alert(1)",
        "no-extension": b"<script>alert(1)</script>",
        'quote"semi;colon.html': b"<b>x</b>",
    }
    for name, content in active.items():
        assert (await upload(client, alice, name, content)).status_code == 201
        response = await client.get(file_url(name), headers=alice)
        assert response.status_code == 200
        assert await response.get_data() == content
        assert response.headers["Content-Type"] == "application/octet-stream", name
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Disposition"].startswith("attachment;")
        assert "sandbox" in response.headers["Content-Security-Policy"]
    response = await client.get(file_url('quote"semi;colon.html'), headers=alice)
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"quote_semi;colon.html\"; filename*=UTF-8''quote%22semi%3Bcolon.html"
    )
    assert (await upload(client, alice, "photo.png", b"\x89PNG\r\n\x1a\n")).status_code == 201
    response = await client.get("/api/files/photo.png", headers=alice)
    assert response.headers["Content-Type"] == "image/png"


async def test_openapi_documents_the_file_routes(client: Client) -> None:
    document = await (await client.get("/api/openapi.json")).get_json()
    paths = document["paths"]
    assert set(paths["/api/files"]) >= {"post", "get"}
    assert set(paths["/api/files/{name}"]) >= {"get", "delete"}
    upload_body = paths["/api/files"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload_body
    schema = upload_body["multipart/form-data"]["schema"]
    assert schema["required"] == ["file"]
    assert schema["properties"]["file"]["format"] == "binary"


# ----- clients that stop sending ------------------------------------------------------


async def call_upload_asgi(
    app: Quart, headers: dict[str, str], first_chunk: bytes, total_bytes: int, then: Any
) -> list[dict[str, Any]]:
    """POST /api/files straight through ASGI, as a server would: the first
    chunk of a ``total_bytes`` body, then whatever ``then()`` returns as the
    next message. The test client cannot do this: it always sends it all."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/files",
        "raw_path": b"/api/files",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(total_bytes).encode()),
            *((key.lower().encode(), value.encode()) for key, value in headers.items()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
        "extensions": {},
    }
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": first_chunk, "more_body": True}
        message: dict[str, Any] = await then()
        return message

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 30)  # type: ignore[arg-type]
    return sent


async def test_a_client_that_disconnects_mid_upload_leaves_nothing(
    app: Quart, alice: dict[str, str], settings: Settings, store: Store
) -> None:
    body, _ = multipart([("file", "partial.bin", pattern(4 * MIB))])
    area = settings.base_file_path / str(await user_id_of(store, "alice@example.com"))

    async def disconnect_once_writing() -> dict[str, Any]:
        # Only once the writer has its temporary file: the disconnect must
        # interrupt a write in progress, not a request that never began one.
        async def writing() -> bool:
            return area.is_dir() and any(area.iterdir())

        await wait_until(writing, what="the upload to start writing")
        return {"type": "http.disconnect"}

    await call_upload_asgi(app, alice, body[:MIB], len(body), disconnect_once_writing)

    async def cleaned_up() -> bool:
        return not any(area.iterdir())

    await wait_until(cleaned_up, what="the partial upload to be removed")
    listed = await (await app.test_client().get("/api/files", headers=alice)).get_json()
    assert listed == []


async def test_a_client_that_stalls_gets_408_and_leaves_nothing(
    app: Quart, alice: dict[str, str], settings: Settings, store: Store
) -> None:
    app.config["BODY_TIMEOUT"] = 0.3
    body, _ = multipart([("file", "stalled.bin", pattern(2 * MIB))])
    area = settings.base_file_path / str(await user_id_of(store, "alice@example.com"))

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    sent = await call_upload_asgi(app, alice, body[:MIB], len(body), never)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 408
    assert b'"error"' in b"".join(message.get("body", b"") for message in sent[1:])
    assert not area.exists() or not any(area.iterdir())


async def test_an_upload_that_never_finishes_gets_408_and_leaves_nothing(
    database: str, queue_name: str, tmp_path: Path, store: Store
) -> None:
    """Never idle for long, so the per-chunk timeout never fires; but the
    whole upload takes longer than upload_timeout_seconds."""
    settings = make_settings(
        database, queue=queue_name, files=tmp_path / "files", upload_timeout_seconds=1
    )
    app = create_app(settings, build_registry(settings), api_services)
    async with app.test_app() as test_app:
        headers = await token_for(store, "late@example.com")
        body, _ = multipart([("file", "late.bin", pattern(4 * MIB))])
        area = settings.base_file_path / str(await user_id_of(store, "late@example.com"))
        offset = 64 * 1024

        async def trickle() -> dict[str, Any]:
            nonlocal offset
            await asyncio.sleep(0.05)
            chunk = body[offset : offset + 1024]
            offset += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": True}

        sent = await call_upload_asgi(test_app.app, headers, body[:offset], len(body), trickle)
    assert sent[0]["status"] == 408
    answer = b"".join(message.get("body", b"") for message in sent[1:])
    assert b"within 1 s" in answer
    assert offset < len(body) / 2  # refused long before the end
    assert not area.exists() or not any(area.iterdir())
