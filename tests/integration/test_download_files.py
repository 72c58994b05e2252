"""download_files against a real HTTP server on loopback.

The server lives on 127.0.0.1, which the SSRF guard refuses. Tests that need to
reach it either turn ``download_allow_private`` on or trust exactly that
server's ``(ip, port)`` through :class:`AddressGuard`, so everything else
(another port, another loopback spelling, the metadata address) stays refused.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from taskflow.config import Settings
from taskflow.errors import PermanentError, TransientError
from taskflow.files import TEMPORARY_PREFIX, UserFiles
from taskflow.handlers import TaskContext
from taskflow.handlers.download_files import TASK_TYPE, download, download_files
from taskflow.handlers.download_names import guess_extension, name_parts
from taskflow.handlers.egress import AddressGuard, non_public_reason
from taskflow.models import DownloadFilesPayload
from tests import servers
from tests.servers import (
    CONTENT_KINDS,
    Certificate,
    HTTPTestServer,
    ProgressRecorder,
    body_of,
    handler_context,
    handler_settings,
    refused_port,
    sha256_of,
)

# Fixtures from tests.servers, bound here so pytest finds them in this module.
http_server = servers.http_server
https_server = servers.https_server
tls_certificate = servers.tls_certificate


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "download_allow_private": True,
        "download_connect_timeout_seconds": 2,
        "download_read_timeout_seconds": 2,
    }
    values.update(overrides)
    return handler_settings(tmp_path / "files", **values)


def context(
    settings: Settings,
    *,
    previous_result: Any = None,
    progress: ProgressRecorder | None = None,
    attempt: int = 1,
) -> TaskContext:
    return handler_context(
        settings,
        task_type="download_files",
        previous_result=previous_result,
        progress=progress,
        attempt=attempt,
    )


async def fetch(ctx: TaskContext, *urls: str) -> dict[str, Any]:
    return await download_files(DownloadFilesPayload(urls=list(urls)), ctx)


def area_names(files: UserFiles) -> list[str]:
    """Everything in the area's directory, hidden temporaries included."""
    return sorted(os.listdir(files.root)) if files.root.exists() else []


def test_task_type() -> None:
    assert TASK_TYPE.name == "download_files"
    assert TASK_TYPE.payload_model is DownloadFilesPayload


@pytest.mark.parametrize(
    ("path", "expected_name"),
    [
        ("/type/png", "png.png"),
        ("/type/pdf", "pdf.pdf"),
        ("/type/html", "html.html"),
        ("/type/text", "text.txt"),
        ("/type/jpeg", "jpeg.jpg"),
        ("/type/octet", "octet.bin"),
        ("/type/unknown", "unknown.bin"),
        ("/type/none", "none.bin"),
        ("/named/report.pdf?type=application/octet-stream", "report.pdf"),
        ("/named/archive.tar.gz", "archive.tar.gz"),
        ("/named/photo.jpeg?type=image/jpeg", "photo.jpeg"),
        ("/named/photo.php?type=image/png", "photo.png"),
        ("/named/", "127.0.0.1.bin"),
    ],
)
async def test_content_types_become_extensions(
    http_server: HTTPTestServer, tmp_path: Path, path: str, expected_name: str
) -> None:
    ctx = context(make_settings(tmp_path))
    url = http_server.url(path)
    result = await fetch(ctx, url)
    [entry] = result["files"]
    content = ctx.files.read_bytes(expected_name)
    assert entry == {
        "url": url,
        "name": expected_name,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "content_type": entry["content_type"],
    }
    kind = path.split("/")[2]
    if path.startswith("/type/"):
        declared, body = CONTENT_KINDS[kind]
        assert content == body
        assert entry["content_type"] == (declared.split(";")[0] if declared else None)


@pytest.mark.parametrize(
    "path",
    [
        "/named/..%2F..%2Fetc%2Fpasswd",
        "/named/%2Fetc%2Fpasswd",
        "/named/.hidden",
        "/named/a%00b%0Ac.txt",
        "/named/%2e%2e",
        "/named/" + "x" * 300 + ".txt",
        "/named/%E2%80%AEgnp.exe",
    ],
)
async def test_names_from_hostile_urls_stay_plain(
    http_server: HTTPTestServer, tmp_path: Path, path: str
) -> None:
    ctx = context(make_settings(tmp_path))
    result = await fetch(ctx, http_server.url(path))
    [entry] = result["files"]
    name = entry["name"]
    assert not set(name) & {"/", "\\", "\x00", "\n"}
    assert not name.startswith(".")
    assert len(name.encode()) <= 255
    assert area_names(ctx.files) == [name]
    assert ctx.files.read_bytes(name) == body_of(64)
    assert not (tmp_path / "etc").exists()


async def test_same_name_twice_gets_a_number(http_server: HTTPTestServer, tmp_path: Path) -> None:
    ctx = context(make_settings(tmp_path))
    first = http_server.url("/named/same.pdf?type=application/pdf&n=1")
    second = http_server.url("/named/same.pdf?type=application/pdf&n=2")
    result = await fetch(ctx, first, second)
    assert sorted(entry["name"] for entry in result["files"]) == ["same-2.pdf", "same.pdf"]
    assert [entry["url"] for entry in result["files"]] == [first, second]


async def test_repeated_url_is_fetched_once(http_server: HTTPTestServer, tmp_path: Path) -> None:
    ctx = context(make_settings(tmp_path))
    url = http_server.url("/bytes/10")
    result = await fetch(ctx, url, url)
    assert len(result["files"]) == 1
    assert http_server.hits("/bytes/10") == 1


async def test_many_files_concurrently_with_correct_hashes(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    ctx = context(make_settings(tmp_path, download_concurrency=3))
    sizes = [0, 1, 1000, 65_536, 300_000, 1_048_576]
    urls = [http_server.url(f"/bytes/{size}") for size in sizes]
    result = await fetch(ctx, *urls)
    assert [entry["url"] for entry in result["files"]] == urls
    for size, entry in zip(sizes, result["files"], strict=True):
        assert entry["size"] == size
        assert entry["sha256"] == sha256_of(body_of(size))
        assert ctx.files.read_bytes(entry["name"]) == body_of(size)


# ----- SSRF ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "2130706433",  # 127.0.0.1 as one decimal number
        "0x7f.0.0.1",
        "127.1",
        "0.0.0.0",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::]",
    ],
)
async def test_loopback_in_any_spelling_is_refused_before_any_request(
    http_server: HTTPTestServer, tmp_path: Path, host: str
) -> None:
    ctx = context(make_settings(tmp_path, download_allow_private=False))
    url = f"http://{host}:{http_server.port}/bytes/10"
    with pytest.raises(PermanentError, match="refusing to connect") as caught:
        await fetch(ctx, url)
    assert http_server.requests == []
    assert caught.value.partial_result["files"] == []
    assert area_names(ctx.files) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[fd00::1]/",
        "http://[ff02::1]/",
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 for 169.254.169.254
        "http://[2002:7f00:1::]/",  # 6to4 for 127.0.0.1
    ],
)
async def test_private_and_special_ranges_are_refused(tmp_path: Path, url: str) -> None:
    ctx = context(make_settings(tmp_path, download_allow_private=False))
    with pytest.raises(PermanentError, match="refusing to connect"):
        await fetch(ctx, url)


def test_address_classification() -> None:
    def reason(text: str) -> str | None:
        return non_public_reason(ipaddress.ip_address(text))

    assert reason("8.8.8.8") is None
    assert reason("2606:4700:4700::1111") is None
    assert reason("127.0.0.1") == "loopback"
    assert reason("0.0.0.0") == "unspecified"
    assert reason("169.254.169.254") == "link-local"
    assert reason("::ffff:169.254.169.254") is not None
    assert reason("::ffff:8.8.8.8") is None
    assert reason("239.1.1.1") == "multicast"


async def test_redirects_to_private_targets_are_refused_on_every_hop(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    """The first server is trusted; whatever it redirects to is checked anew."""
    settings = make_settings(tmp_path, download_allow_private=False)
    guard = AddressGuard(trusted=frozenset({(http_server.host, http_server.port)}))
    with HTTPTestServer() as internal:
        targets = [
            "http://169.254.169.254/latest/meta-data/",
            internal.url("/bytes/10"),
            internal.url("/bytes/10", host="localhost"),
            internal.url("/bytes/10", host="[::1]"),
            internal.url("/bytes/10", host="2130706433"),
        ]
        for target in targets:
            ctx = context(settings)
            redirect = http_server.url(f"/redirect?to={target}")
            with pytest.raises(PermanentError, match="refusing to connect"):
                await download(DownloadFilesPayload(urls=[redirect]), ctx, guard=guard)
            assert http_server.hits(f"/redirect?to={target}") == 1
        assert internal.requests == []
        # The same trusted server is still reachable directly: the guard, not
        # a broken setup, is what stopped the redirects.
        ctx = context(settings)
        direct = http_server.url("/bytes/10")
        result = await download(DownloadFilesPayload(urls=[direct]), ctx, guard=guard)
        assert result["files"][0]["size"] == 10


async def test_redirect_to_another_scheme_is_refused(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    ctx = context(make_settings(tmp_path))
    for target in ("file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:70/"):
        with pytest.raises(PermanentError, match="redirect"):
            await fetch(ctx, http_server.url(f"/redirect?to={target}"))
    assert area_names(ctx.files) == []


async def test_redirects_are_followed_up_to_five(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    ctx = context(make_settings(tmp_path))
    result = await fetch(ctx, http_server.url("/redirect-chain/5"))
    assert result["files"][0]["size"] == 32
    with pytest.raises(PermanentError, match="more than 5 redirects"):
        await fetch(ctx, http_server.url("/redirect-chain/6"))


async def test_redirect_keeps_the_original_name_and_url(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    ctx = context(make_settings(tmp_path))
    target = http_server.url("/bytes/20?type=application/pdf")
    url = http_server.url(f"/redirect?status=301&to={target}")
    [entry] = (await fetch(ctx, url))["files"]
    assert entry["url"] == url
    assert entry["name"] == "redirect.pdf"


async def test_connection_goes_to_the_checked_ip_with_the_original_host(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    ctx = context(make_settings(tmp_path))
    await fetch(ctx, http_server.url("/bytes/5", host="localhost"))
    [request] = http_server.requests
    assert request.headers["Host"] == f"localhost:{http_server.port}"
    assert request.headers["User-Agent"].startswith("TaskFlow/")


# ----- limits and failures ---------------------------------------------------


async def test_slow_body_times_out_as_transient(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    ctx = context(make_settings(tmp_path, download_read_timeout_seconds=0.3))
    with pytest.raises(TransientError, match="timed out"):
        await fetch(ctx, http_server.url("/slow?delay=5&size=10000"))
    assert area_names(ctx.files) == []


@pytest.mark.parametrize("announce", ["1", "0"])
async def test_oversized_body_is_refused_and_leaves_nothing(
    http_server: HTTPTestServer, tmp_path: Path, announce: str
) -> None:
    ctx = context(make_settings(tmp_path, download_max_bytes=100_000))
    with pytest.raises(PermanentError, match="limit"):
        await fetch(ctx, http_server.url(f"/oversized/300000?announce={announce}"))
    assert area_names(ctx.files) == []
    # Exactly at the limit is fine.
    result = await fetch(ctx, http_server.url(f"/oversized/100000?announce={announce}"))
    assert result["files"][0]["size"] == 100_000
    assert not any(name.startswith(TEMPORARY_PREFIX) for name in area_names(ctx.files))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451])
async def test_client_errors_are_permanent(
    http_server: HTTPTestServer, tmp_path: Path, status: int
) -> None:
    ctx = context(make_settings(tmp_path))
    with pytest.raises(PermanentError, match=f"HTTP {status}"):
        await fetch(ctx, http_server.url(f"/status/{status}"))


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_server_errors_are_transient(
    http_server: HTTPTestServer, tmp_path: Path, status: int
) -> None:
    ctx = context(make_settings(tmp_path))
    with pytest.raises(TransientError, match=f"HTTP {status}") as caught:
        await fetch(ctx, http_server.url(f"/status/{status}"))
    assert caught.value.delay_seconds is None


async def test_retry_after_sets_the_delay(http_server: HTTPTestServer, tmp_path: Path) -> None:
    ctx = context(make_settings(tmp_path))
    with pytest.raises(TransientError) as caught:
        await fetch(ctx, http_server.url("/status/429?retry_after=7"))
    assert caught.value.delay_seconds == 7


async def test_connection_refused_is_transient(tmp_path: Path) -> None:
    ctx = context(make_settings(tmp_path))
    with pytest.raises(TransientError):
        await fetch(ctx, f"http://127.0.0.1:{refused_port()}/x")


async def test_unresolvable_host_is_permanent(tmp_path: Path) -> None:
    ctx = context(make_settings(tmp_path))
    with pytest.raises(PermanentError, match="cannot resolve"):
        await fetch(ctx, "http://no-such-host.invalid/x")


async def test_fail_twice_then_succeed_resumes_without_refetching(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    steady = http_server.url("/bytes/5000")
    flaky = http_server.url("/flaky/resume?failures=2&size=7000")
    payload = DownloadFilesPayload(urls=[steady, flaky])
    previous: Any = None
    for attempt in (1, 2):
        progress = ProgressRecorder()
        ctx = context(settings, previous_result=previous, progress=progress, attempt=attempt)
        with pytest.raises(TransientError, match="HTTP 503") as caught:
            await download_files(payload, ctx)
        partial = caught.value.partial_result
        assert [entry["url"] for entry in partial["files"]] == [steady]
        assert partial["failed"][0]["url"] == flaky
        if attempt == 1:
            assert progress.saved == [{"files": partial["files"]}]
        else:
            assert progress.saved == [], "nothing new was saved"
        previous = partial

    progress = ProgressRecorder()
    ctx = context(settings, previous_result=previous, progress=progress, attempt=3)
    result = await download_files(payload, ctx)

    assert http_server.hits("/bytes/5000") == 1, "the saved URL was not requested again"
    assert http_server.hits("/flaky/resume?failures=2&size=7000") == 3
    assert [entry["url"] for entry in result["files"]] == [steady, flaky]
    by_url = {entry["url"]: entry for entry in result["files"]}
    assert by_url[steady]["sha256"] == sha256_of(body_of(5000))
    assert by_url[flaky]["sha256"] == sha256_of(body_of(7000))
    assert ctx.files.read_bytes(by_url[flaky]["name"]) == body_of(7000)
    assert progress.last == result
    assert sorted(area_names(ctx.files)) == sorted(entry["name"] for entry in result["files"])


async def test_a_deleted_file_is_fetched_again_on_retry(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    url = http_server.url("/bytes/10")
    first = await fetch(context(settings), url)
    context(settings).files.delete(first["files"][0]["name"])
    second = await fetch(context(settings, previous_result=first, attempt=2), url)
    assert http_server.hits("/bytes/10") == 2
    assert second["files"][0]["sha256"] == first["files"][0]["sha256"]


async def test_mixed_outcome_fails_permanently_naming_the_failures(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    ctx = context(make_settings(tmp_path))
    good = http_server.url("/type/pdf")
    missing = http_server.url("/status/404")
    busy = http_server.url("/status/503")
    with pytest.raises(PermanentError) as caught:
        await fetch(ctx, good, missing, busy)
    message = caught.value.message
    assert "2 of 3 downloads failed" in message
    assert f"{missing}: HTTP 404" in message
    assert f"{busy}: HTTP 503" in message
    partial = caught.value.partial_result
    assert [entry["url"] for entry in partial["files"]] == [good]
    assert [entry["url"] for entry in partial["failed"]] == [missing, busy]
    assert ctx.files.exists("pdf.pdf")


# ----- TLS -------------------------------------------------------------------


async def test_https_verifies_the_certificate_for_the_original_name(
    https_server: HTTPTestServer,
    tls_certificate: Certificate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request goes to 127.0.0.1 but TLS (SNI and the certificate check)
    uses the URL's host name."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_certificate.cert_path))
    ctx = context(make_settings(tmp_path))
    by_name = https_server.url("/type/png", host="localhost")
    by_ip = https_server.url("/type/pdf")
    result = await fetch(ctx, by_name, by_ip)
    assert [entry["name"] for entry in result["files"]] == ["png.png", "pdf.pdf"]
    assert https_server.requests[0].headers["Host"] in (
        f"localhost:{https_server.port}",
        f"127.0.0.1:{https_server.port}",
    )


async def test_https_with_an_untrusted_certificate_fails(
    https_server: HTTPTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    ctx = context(make_settings(tmp_path))
    with pytest.raises(TransientError, match="ConnectError"):
        await fetch(ctx, https_server.url("/type/png", host="localhost"))
    assert area_names(ctx.files) == []


# ----- small pieces ----------------------------------------------------------


def test_guess_extension() -> None:
    assert guess_extension("image/png") == ".png"
    assert guess_extension("IMAGE/JPEG; foo=bar") == ".jpg"
    assert guess_extension("text/html; charset=utf-8") == ".html"
    assert guess_extension("application/pdf") == ".pdf"
    assert guess_extension("application/octet-stream") == ""
    assert guess_extension("application/x-taskflow-unknown") == ""
    assert guess_extension("nonsense") == ""
    assert guess_extension(None) == ""


def test_name_parts() -> None:
    assert name_parts(httpx.URL("https://example.com/a/b/report.PDF"), None) == ("report", ".pdf")
    assert name_parts(httpx.URL("https://example.com/"), "text/html") == ("example.com", ".html")
    assert name_parts(httpx.URL("https://example.com/x.jpeg"), "image/jpeg") == ("x", ".jpeg")


def test_payload_rejects_non_http_urls() -> None:
    for urls in (
        [],
        ["ftp://example.com/x"],
        ["file:///etc/passwd"],
        ["http://user:pw@example.com/"],
        ["javascript:alert(1)"],
        ["http://example.com/" + "x" * 3000],
        ["http://example.com/ x"],
        ["http://example.com/"] * 21,
    ):
        with pytest.raises(ValidationError):
            DownloadFilesPayload(urls=urls)
