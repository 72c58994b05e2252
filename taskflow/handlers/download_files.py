"""download_files: fetch 1..20 http(s) URLs into the owner's file area.

Safety against server-side request forgery, unless ``download_allow_private``:

- Every address a host name resolves to must be public
  (:mod:`taskflow.handlers.egress` says which are not).
- The connection goes to the address that was checked, not to the name: the
  request URL carries that IP, the ``Host`` header and TLS SNI/certificate
  check carry the original name. A DNS answer that changes between the check
  and the connect (DNS rebinding) therefore cannot redirect the request.
- Redirects are followed by hand, at most ``MAX_REDIRECTS``, and each hop is
  checked the same way; a redirect to anything but http(s) is refused.

Limits: ``download_concurrency`` URLs at once, connect and read timeouts from
the settings, and ``download_max_bytes`` per file, enforced on a too large
``Content-Length`` before reading and again while streaming, on the bytes as
they arrive and again on the decoded file. A file over the limit leaves
nothing behind.

Encoded bodies: the request asks for identity, yet a server may send gzip or
deflate anyway, or a compressed bomb. The raw body is read and decoded by
:mod:`taskflow.handlers.content_encoding` in bounded steps (one gzip or
deflate layer; stacked, ``br`` and unknown encodings fail permanently), so
memory stays small whatever the ratio. The saved file, its size and sha256
are the decoded bytes. Decoding, hashing and writing run on the event loop in
steps of about a millisecond at most, and a long body gives other tasks a turn
at least every ``LOOP_TURN_SECONDS``.

Each file is saved atomically as ``<stem><ext>``: the stem comes from the last
URL path segment (sanitised; the server's Content-Disposition is ignored), the
extension from the Content-Type, else from the URL path, else ``.bin``. Taken
names get ``-2``, ``-3``, ... Repeated URLs are fetched once.

``result = {"files": [{"url", "name", "size", "sha256", "content_type"}]}`` in
payload order. Progress is saved after every file, and an attempt skips URLs
an earlier attempt already saved (while the file is still there). 404, 403,
410 and other 4xx except 408/429, refused addresses and over-limit files are
permanent; timeouts, connection errors, 5xx, 408 and 429 are transient (with
``Retry-After`` honoured). When any URL failed permanently the task fails
permanently, naming every failure, with the saved files as partial result.

The owner's file area has a quota (``user_files_max_bytes``): a file that
would take the area past it fails its URL permanently, naming the quota, as
soon as its bytes so far cannot fit, or when it lands after others took the
room. Files saved before stay, and so do the other URLs' chances: a smaller
file may still fit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from taskflow import __version__
from taskflow.config import Settings
from taskflow.errors import (
    HandlerError,
    PermanentError,
    QuotaExceeded,
    TransientError,
    ValidationFailed,
)
from taskflow.files import UserFiles
from taskflow.handlers import TaskContext, TaskType
from taskflow.handlers.content_encoding import decoder_for
from taskflow.handlers.download_names import media_type, name_parts
from taskflow.handlers.egress import AddressGuard, literal_address, resolve
from taskflow.models import DownloadFilesPayload

log = logging.getLogger(__name__)


MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_RETRY_AFTER_SECONDS = 3600.0
USER_AGENT = f"TaskFlow/{__version__} (download_files)"
LOOP_TURN_SECONDS = 0.005

# ----- fetching --------------------------------------------------------------


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _status_error(response: httpx.Response) -> HandlerError:
    code = response.status_code
    message = f"HTTP {code} {response.reason_phrase}".rstrip()
    if code in (408, 429) or code >= 500:
        return TransientError(message, delay_seconds=_retry_after_seconds(response))
    return PermanentError(message)


def _declared_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _is_framed(response: httpx.Response) -> bool:
    """Whether the body's end was marked (a Content-Length, which the HTTP
    layer holds the server to, or chunked coding) rather than just the
    connection closing, which a connection cut short does too."""
    transfer_codings = response.headers.get("transfer-encoding", "").lower()
    return _declared_length(response) is not None or "chunked" in transfer_codings


@dataclass
class _Outcome:
    url: str
    saved: dict[str, Any] | None = None
    error: HandlerError | None = None


class _Downloader:
    def __init__(
        self,
        client: httpx.AsyncClient,
        files: UserFiles,
        settings: Settings,
        guard: AddressGuard,
    ) -> None:
        self._client = client
        self._files = files
        self._guard = guard
        self._max_bytes = settings.download_max_bytes
        self._connect_timeout = settings.download_connect_timeout_seconds
        self._slots = asyncio.Semaphore(settings.download_concurrency)

    async def fetch(self, url: str) -> _Outcome:
        """Never raises a handler error: the outcome says what happened."""
        async with self._slots:
            try:
                return _Outcome(url, saved=await self._fetch(url))
            except HandlerError as exc:
                return _Outcome(url, error=exc)
            except httpx.TimeoutException as exc:
                return _Outcome(url, error=TransientError(f"timed out ({type(exc).__name__})"))
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                return _Outcome(url, error=PermanentError(f"invalid URL: {exc}"))
            except httpx.TransportError as exc:
                return _Outcome(url, error=TransientError(f"{type(exc).__name__}: {exc}"))
            except (ValidationFailed, QuotaExceeded) as exc:
                return _Outcome(url, error=PermanentError(exc.message))

    async def _fetch(self, url: str) -> dict[str, Any]:
        original = current = httpx.URL(url)
        for hop in range(MAX_REDIRECTS + 1):
            response = await self._open(current)
            try:
                if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                    if hop == MAX_REDIRECTS:
                        raise PermanentError(f"more than {MAX_REDIRECTS} redirects")
                    current = current.join(response.headers["location"])
                    if current.scheme not in ("http", "https"):
                        raise PermanentError(f"refusing a redirect to a {current.scheme}: URL")
                    if current.userinfo:
                        raise PermanentError("refusing a redirect to a URL with credentials")
                    continue
                if not 200 <= response.status_code < 300:
                    raise _status_error(response)
                source = original if original.path.rsplit("/", 1)[-1] else current
                return await self._save(url, source, response)
            finally:
                await response.aclose()
        raise AssertionError("unreachable: the loop returns or raises")

    async def _open(self, url: httpx.URL) -> httpx.Response:
        """Send GET ``url`` to a checked address of its host; headers only."""
        if url.scheme not in ("http", "https"):
            raise PermanentError(f"only http and https URLs are allowed, not {url.scheme}:")
        host = url.raw_host.decode("ascii")  # IDNA-encoded already
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await resolve(host, port, self._connect_timeout)
        for address in addresses:
            reason = self._guard.refusal(address, port)
            if reason is not None:
                shown = host if str(address) == host else f"{host} ({address})"
                raise PermanentError(
                    f"refusing to connect to {shown}: a {reason} address "
                    "(download_allow_private is off)"
                )
        is_literal = literal_address(host) is not None
        last_error: httpx.TransportError | None = None
        for address in addresses:
            extensions: dict[str, Any] = {}
            if url.scheme == "https" and not is_literal:
                extensions["sni_hostname"] = host
            request = self._client.build_request(
                "GET",
                url.copy_with(host=str(address)),
                headers={"Host": url.netloc.decode("ascii")},
                extensions=extensions,
            )
            try:
                return await self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last_error = exc  # try the host's next address
        assert last_error is not None
        raise last_error

    async def _save(self, url: str, source: httpx.URL, response: httpx.Response) -> dict[str, Any]:
        declared = _declared_length(response)
        if declared is not None and declared > self._max_bytes:
            raise PermanentError(
                f"the file is {declared} bytes, over the limit of {self._max_bytes}"
            )
        # Refused before anything is read or created.
        decoder = decoder_for(response.headers.get_list("content-encoding"))
        content_type = response.headers.get("content-type")
        stem, extension = name_parts(source, content_type)
        name = self._files.unique_name(stem, extension)
        digest = hashlib.sha256()
        raw_size = size = 0
        loop = asyncio.get_running_loop()
        turn_at = loop.time() + LOOP_TURN_SECONDS
        writer = self._files.atomic_writer(name, on_conflict="rename")
        try:
            # The quota's scan of the area, off the event loop.
            await asyncio.to_thread(writer.check_room)
            # Raw bytes: httpx's own decoding would inflate a whole network
            # read through every declared layer before this loop saw a byte.
            async for raw in response.aiter_raw():
                raw_size += len(raw)
                if raw_size > self._max_bytes:
                    raise PermanentError(
                        f"the {decoder.body_description} is over the limit of "
                        f"{self._max_bytes} bytes"
                    )
                for piece in decoder.decode(raw):
                    size += len(piece)
                    if size > self._max_bytes:
                        raise PermanentError(
                            f"the file is over the limit of {self._max_bytes} bytes"
                            + ("" if decoder.encoding == "identity" else " once decoded")
                        )
                    digest.update(piece)
                    writer.write(piece)
                    if loop.time() >= turn_at:
                        await asyncio.sleep(0)
                        turn_at = loop.time() + LOOP_TURN_SECONDS
            decoder.finish(framed=_is_framed(response))
            saved_name = await asyncio.to_thread(writer.commit)
        finally:
            writer.discard()
        return {
            "url": url,
            "name": saved_name,
            "size": size,
            "sha256": digest.hexdigest(),
            "content_type": media_type(content_type) or None,
        }


def _earlier_downloads(previous: Any, files: UserFiles) -> dict[str, dict[str, Any]]:
    """Files an earlier attempt saved and that are still there, by URL."""
    if not isinstance(previous, dict) or not isinstance(previous.get("files"), list):
        return {}
    kept: dict[str, dict[str, Any]] = {}
    for entry in previous["files"]:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("url"), str)
            and isinstance(entry.get("name"), str)
        ):
            continue
        try:
            if files.exists(entry["name"]):
                kept[entry["url"]] = entry
        except ValidationFailed:
            continue
    return kept


def _client(settings: Settings, tls: ssl.SSLContext) -> httpx.AsyncClient:
    read_seconds = settings.download_read_timeout_seconds
    connect_seconds = settings.download_connect_timeout_seconds
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=connect_seconds, read=read_seconds, write=read_seconds, pool=connect_seconds
        ),
        # Requests go to IP addresses, so a pooled connection could be reused
        # for another host name on the same IP with the wrong TLS name.
        limits=httpx.Limits(
            max_connections=settings.download_concurrency, max_keepalive_connections=0
        ),
        follow_redirects=False,
        # No proxies or netrc from the environment: they would bypass the guard.
        trust_env=False,
        verify=tls,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


async def download(
    payload: DownloadFilesPayload, ctx: TaskContext, *, guard: AddressGuard
) -> dict[str, Any]:
    """The handler, with the address policy spelled out."""
    urls = list(dict.fromkeys(payload.urls))
    done = _earlier_downloads(ctx.previous_result, ctx.files)

    def progress() -> dict[str, Any]:
        return {"files": [done[url] for url in urls if url in done]}

    failures: list[_Outcome] = []
    pending = [url for url in urls if url not in done]
    # The system trust store (SSL_CERT_FILE / SSL_CERT_DIR work as usual);
    # loading it takes tens of milliseconds, too long to hold the event loop.
    tls = await asyncio.to_thread(ssl.create_default_context)
    async with _client(ctx.settings, tls) as client:
        downloader = _Downloader(client, ctx.files, ctx.settings, guard)
        tasks = [asyncio.create_task(downloader.fetch(url)) for url in pending]
        try:
            for next_outcome in asyncio.as_completed(tasks):
                outcome = await next_outcome
                if outcome.saved is None:
                    failures.append(outcome)
                    continue
                done[outcome.url] = outcome.saved
                if ctx.save_progress is not None:
                    await ctx.save_progress(progress())
        finally:
            for task in tasks:
                task.cancel()
            # Collects the cancelled ones; a first real error already propagates.
            await asyncio.gather(*tasks, return_exceptions=True)

    if not failures:
        return progress()
    failures.sort(key=lambda outcome: urls.index(outcome.url))
    partial = progress()
    partial["failed"] = [
        {"url": outcome.url, "error": outcome.error.message if outcome.error else "unknown"}
        for outcome in failures
    ]
    summary = "; ".join(f"{entry['url']}: {entry['error']}" for entry in partial["failed"])
    message = f"{len(failures)} of {len(urls)} downloads failed: {summary}"
    if any(isinstance(outcome.error, PermanentError) for outcome in failures):
        raise PermanentError(message, partial_result=partial)
    delays = [
        outcome.error.delay_seconds
        for outcome in failures
        if isinstance(outcome.error, TransientError) and outcome.error.delay_seconds is not None
    ]
    raise TransientError(message, partial_result=partial, delay_seconds=max(delays, default=None))


async def download_files(payload: DownloadFilesPayload, ctx: TaskContext) -> dict[str, Any]:
    return await download(payload, ctx, guard=AddressGuard.from_settings(ctx.settings))


TASK_TYPE = TaskType(
    name="download_files",
    payload_model=DownloadFilesPayload,
    handler=download_files,
    description="Download up to 20 http(s) URLs into the owner's files.",
)
