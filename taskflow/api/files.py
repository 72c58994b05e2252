"""/api/files: the caller's own file area: upload, list, download, delete.

Every name goes through :class:`taskflow.files.UserFiles`, which accepts only
plain file names inside ``<base_file_path>/<user_id>/``: a bad name is a 400, a
name that is not there (or is another user's) a 404.

Uploads stream. ``request.files`` would spool the whole body before the view
runs, so the multipart body is parsed here part by part as it arrives
(werkzeug's sans-IO decoder) and the file part goes to disk through
``UserFiles.save_upload`` in a thread, a chunk at a time. Because the name
decides where the bytes go, the optional ``name`` field must come before the
``file`` part, and nothing may follow it (S3's browser uploads, which stream
too, have the same rule).

Downloads are always attachments with a passive Content-Type, so an uploaded
.html or .svg never renders in the API's origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import queue
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from typing import IO, Any, cast
from urllib.parse import quote

from flask.sansio.blueprints import BlueprintSetupState
from quart import Blueprint, Quart, Response, request
from quart.wrappers.request import Body
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout, UnsupportedMediaType
from werkzeug.routing import PathConverter
from werkzeug.sansio.multipart import Data, Epilogue, Event, Field, File, MultipartDecoder, NeedData

from taskflow.api import ApiConfig, config
from taskflow.api.responses import json_response
from taskflow.api.security import current_user_id, require_user
from taskflow.errors import PayloadTooLarge, ValidationFailed
from taskflow.files import CHUNK_BYTES, ConflictPolicy, FileInfo, UserFiles

blueprint = Blueprint("files", __name__)

FILES_PATH = "/api/files"
# Room for the multipart framing around the file: boundaries, part headers and
# the name field. The file itself is held to upload_max_bytes exactly.
UPLOAD_OVERHEAD_BYTES = 64 * 1024
FIELD_MAX_BYTES = 4096  # a text field; a name is at most 255 bytes of UTF-8
MAX_FORM_PARTS = 16
# The decoder is fed slices of this size, so one huge network read (or a test
# client's whole body at once) never becomes one huge buffer copy.
DECODER_SLICE_BYTES = 64 * 1024
# What the decoder may buffer at once: part headers and a partial boundary,
# never file data, which it hands out as it goes.
DECODER_BUFFER_BYTES = 4 * DECODER_SLICE_BYTES
MAX_BOUNDARY_CHARS = 70  # RFC 2046
CONFLICT_POLICIES: dict[str, ConflictPolicy] = {"error": "error", "rename": "rename"}

# Types a browser shows passively or hands to a viewer; anything else (HTML,
# SVG, XML, JavaScript, unknown) is served as application/octet-stream.
PASSIVE_TYPES = frozenset(
    {
        "application/gzip",
        "application/json",
        "application/pdf",
        "application/zip",
        "audio/mpeg",
        "audio/ogg",
        "audio/wav",
        "image/bmp",
        "image/gif",
        "image/jpeg",
        "image/png",
        "image/tiff",
        "image/webp",
        "text/csv",
        "text/plain",
        "video/mp4",
        "video/webm",
    }
)


# ----- routing and the body limit -----------------------------------------------------


class AnyFileNameConverter(PathConverter):
    """Everything after ``/api/files/``, including "/", a leading "/" and
    line breaks (which the ``path`` converter will not match), so that every
    hostile name reaches UserFiles and gets its 400 instead of a routing 404."""

    regex = "(?s:.+)"
    part_isolating = False


# Runs before the routes below are added: they use the converter.
@blueprint.record_once
def _register_converter(setup: BlueprintSetupState) -> None:
    setup.app.url_map.converters["filename"] = AnyFileNameConverter


@blueprint.record_once
def _allow_large_uploads(setup: BlueprintSetupState) -> None:
    """Give POST /api/files a body limit of upload_max_bytes (plus framing).

    Quart fixes a request's body limit when it builds the request, before
    routing, from MAX_CONTENT_LENGTH: request_max_bytes (2 MiB), right for
    JSON but not for a 25 MiB upload. Raising it later in the view is too late:
    a body already past 2 MiB has been refused and dropped. So the app's request
    class picks the limit from the method and path it is built with.
    """
    app = cast(Quart, setup.app)
    api_config: ApiConfig = app.extensions["taskflow"]
    upload_limit = api_config.settings.upload_max_bytes + UPLOAD_OVERHEAD_BYTES
    base = app.request_class

    class UploadLimitRequest(base):  # type: ignore[valid-type,misc]
        def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
            if method == "POST" and path == FILES_PATH:
                kwargs["max_content_length"] = max(
                    upload_limit, kwargs.get("max_content_length") or 0
                )
            super().__init__(method, scheme, path, *args, **kwargs)

    app.request_class = UploadLimitRequest


# ----- helpers ------------------------------------------------------------------------


def _user_files() -> UserFiles:
    return UserFiles(config().settings.base_file_path, current_user_id())


def _conflict_policy() -> ConflictPolicy:
    raw = request.args.get("on_conflict", "error")
    policy = CONFLICT_POLICIES.get(raw)
    if policy is None:
        raise ValidationFailed(
            "on_conflict must be 'error' or 'rename'",
            details=[{"field": "on_conflict", "message": "must be 'error' or 'rename'"}],
        )
    return policy


def _multipart_boundary() -> bytes:
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType()
    boundary = request.mimetype_params.get("boundary", "")
    if not 1 <= len(boundary) <= MAX_BOUNDARY_CHARS or not boundary.isascii():
        raise ValidationFailed("multipart/form-data needs a boundary of 1 to 70 ASCII characters")
    return boundary.encode("ascii")


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name in RFC 5987
    form; neither can break out of the header (quotes, CR/LF are replaced or
    percent-encoded)."""
    fallback = "".join(
        char if char.isascii() and char.isprintable() and char not in '"\\%' else "_"
        for char in name
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def passive_content_type(name: str) -> str:
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is None and guessed in PASSIVE_TYPES:
        return guessed
    return "application/octet-stream"


# ----- reading the multipart body -----------------------------------------------------


async def _next_or_none(source: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(source)
    except StopAsyncIteration:
        return None


async def _body_chunks(
    body: Body, *, max_bytes: int, idle_timeout_seconds: float | None
) -> AsyncGenerator[bytes, None]:
    """The raw body as it arrives, at most ``max_bytes`` of it.

    Counts every byte itself: Quart's own limit checks what is buffered, so a
    body without Content-Length that is read as it arrives would slip past it.
    The timeout is per chunk, not for the whole body: a 25 MiB upload on a slow
    link is fine, a client that stalls is not (and an abandoned request must
    not hold a thread forever).
    """
    too_large = f"the request body is larger than {max_bytes} bytes"
    received = 0
    while True:
        try:
            chunk = await asyncio.wait_for(_next_or_none(body), idle_timeout_seconds)
        except TimeoutError:
            raise RequestTimeout() from None
        except RequestEntityTooLarge:
            # Quart refuses a declared Content-Length over the limit up front.
            raise PayloadTooLarge(too_large) from None
        if chunk is None:
            return
        received += len(chunk)
        if received > max_bytes:
            raise PayloadTooLarge(too_large)
        yield chunk


async def _form_events(
    body: Body, boundary: bytes, *, max_body_bytes: int, idle_timeout_seconds: float | None
) -> AsyncGenerator[Event, None]:
    """Multipart events up to and including the Epilogue."""
    decoder = MultipartDecoder(
        boundary, max_form_memory_size=DECODER_BUFFER_BYTES, max_parts=MAX_FORM_PARTS
    )
    chunks = _body_chunks(body, max_bytes=max_body_bytes, idle_timeout_seconds=idle_timeout_seconds)
    try:
        async with aclosing(chunks):
            async for data in chunks:
                for start in range(0, len(data), DECODER_SLICE_BYTES):
                    decoder.receive_data(data[start : start + DECODER_SLICE_BYTES])
                    while not isinstance(event := decoder.next_event(), NeedData):
                        yield event
        decoder.receive_data(None)
        while not isinstance(event := decoder.next_event(), Epilogue):
            yield event
        yield event
    except RequestEntityTooLarge:  # the decoder's limits
        raise PayloadTooLarge(
            f"the form has more than {MAX_FORM_PARTS} parts, or part headers or trailing "
            f"data over {DECODER_BUFFER_BYTES} bytes"
        ) from None
    except ValueError as exc:  # incl. UnicodeDecodeError in a part header
        raise ValidationFailed(f"malformed multipart/form-data body: {exc}") from None


def _field_text(field: Field, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationFailed(f"form field {field.name!r} is not valid UTF-8") from None


async def _read_until_file(events: AsyncIterator[Event]) -> tuple[str | None, File]:
    """Read the text fields before the file part; return the ``name`` field
    (None if absent or empty) and the file part's header."""
    name: str | None = None
    field: Field | None = None
    value = bytearray()
    async for event in events:
        if isinstance(event, Field):
            field, value = event, bytearray()
        elif isinstance(event, Data) and field is not None:
            value += event.data
            if len(value) > FIELD_MAX_BYTES:
                raise ValidationFailed(
                    f"form field {field.name!r} is longer than {FIELD_MAX_BYTES} bytes"
                )
            if not event.more_data:
                if field.name == "name":
                    if name is not None:
                        raise ValidationFailed("the form has more than one 'name' field")
                    name = _field_text(field, bytes(value)) or None
                field = None
        elif isinstance(event, File):
            if event.name != "file":
                raise ValidationFailed(
                    f"unexpected file field {event.name!r}: send the file as the 'file' field"
                )
            return name, event
    raise ValidationFailed("the form has no 'file' field")


async def _file_data(events: AsyncIterator[Event]) -> AsyncGenerator[bytes, None]:
    """The file part's bytes; then checks that nothing but the end follows."""
    async for event in events:
        if isinstance(event, Data):
            if event.data:
                yield event.data
            if not event.more_data:
                break
    async for event in events:
        if isinstance(event, Field | File):
            raise ValidationFailed(
                "the 'file' part must be the last part of the form "
                f"(found {event.name!r} after it; send 'name' before 'file')"
            )


class UploadAbandoned(Exception):
    """Tells the writing thread to drop its partial file: the request failed
    or was cancelled while the file part was still arriving."""


async def _save_streaming(
    files: UserFiles,
    name: str,
    data: AsyncIterator[bytes],
    *,
    max_bytes: int,
    on_conflict: ConflictPolicy,
) -> FileInfo:
    """Feed ``UserFiles.save_upload``, running in a thread, from the event loop.

    Only this task touches the body and the parser; the thread only takes
    chunks from a queue and writes them. The queue needs no bound: Quart keeps
    whatever the client sent in memory until it is read anyway, and the body
    is capped.
    """
    chunks: queue.SimpleQueue[bytes | UploadAbandoned | None] = queue.SimpleQueue()

    def take() -> Iterator[bytes]:
        while (item := chunks.get()) is not None:
            if isinstance(item, UploadAbandoned):
                raise item
            yield item

    saving = asyncio.ensure_future(
        asyncio.to_thread(
            files.save_upload, name, take(), max_bytes=max_bytes, on_conflict=on_conflict
        )
    )
    try:
        async for chunk in data:
            if saving.done():
                break  # refused (a taken name, too large): no use reading on
            chunks.put(chunk)
        chunks.put(None)
    except BaseException:
        chunks.put(UploadAbandoned())
        # Wait for the partial file to go before the error answer does; the
        # writer's own outcome no longer matters.
        with contextlib.suppress(Exception):
            await saving
        raise
    return await saving


# ----- routes -------------------------------------------------------------------------


@blueprint.post(FILES_PATH)
@require_user
async def upload_file() -> Response:
    settings = config().settings
    on_conflict = _conflict_policy()
    boundary = _multipart_boundary()
    files = _user_files()
    events = _form_events(
        request.body,
        boundary,
        max_body_bytes=settings.upload_max_bytes + UPLOAD_OVERHEAD_BYTES,
        idle_timeout_seconds=request.body_timeout,
    )
    async with aclosing(events):
        name, upload = await _read_until_file(events)
        name = name or upload.filename
        if not name:
            raise ValidationFailed(
                "the upload has no file name: give one in the 'name' field or as the "
                "file part's filename"
            )
        async with aclosing(_file_data(events)) as data:
            info = await _save_streaming(
                files, name, data, max_bytes=settings.upload_max_bytes, on_conflict=on_conflict
            )
    location = f"{FILES_PATH}/{quote(info.name, safe='')}"
    return json_response(info.as_json(), 201, {"Location": location})


@blueprint.get(FILES_PATH)
@require_user
async def list_files() -> Response:
    listed = await asyncio.to_thread(_user_files().list)
    return json_response([info.as_json() for info in listed])


def _open_with_size(files: UserFiles, name: str) -> tuple[IO[bytes], int]:
    handle = files.open_read(name)
    return handle, os.fstat(handle.fileno()).st_size


async def _stream(handle: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()


@blueprint.get(f"{FILES_PATH}/<filename:name>")
@require_user
async def download_file(name: str) -> Response:
    handle, size = await asyncio.to_thread(_open_with_size, _user_files(), name)
    response = Response(
        _stream(handle),
        status=200,
        headers={
            "Content-Length": str(size),
            "Content-Disposition": content_disposition(name),
            "X-Content-Type-Options": "nosniff",
            # Defence in depth for a client that renders it anyway.
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
        content_type=passive_content_type(name),
    )
    # A large file on a slow link may take longer than RESPONSE_TIMEOUT.
    response.timeout = None
    return response


@blueprint.delete(f"{FILES_PATH}/<filename:name>")
@require_user
async def delete_file(name: str) -> Response:
    await asyncio.to_thread(_user_files().delete, name)
    return Response(status=204)
