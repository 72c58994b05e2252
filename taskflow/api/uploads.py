"""Receiving an upload: the multipart body, parsed as it arrives, into a file.

``request.files`` would spool the whole body before the view runs, so the
body is parsed here part by part (werkzeug's sans-IO decoder) and the file
part goes to disk a chunk at a time. Because the name decides where the bytes
go, the optional ``name`` field must come before the ``file`` part, and
nothing may follow it (S3's browser uploads, which stream too, have the same
rule).

A client sends as slowly as it likes, so nothing here waits for it while
holding a thread: the event loop receives each chunk, and only then hands it
to one short write on the file I/O threads (as it does the opening, and the
final flush, fsync and rename). Ten thousand trickling uploads hold no thread
between their chunks. Each upload has two deadlines: per chunk (Quart's
``BODY_TIMEOUT``, a client that stalls) and in total
(``upload_timeout_seconds``, a client that never stalls but never finishes);
past either it gets a 408, and its partial file is removed before the answer
goes out.

The file area's quota (``UserFiles.quota_bytes``) is checked by the file as
it grows: once the bytes received so far cannot fit the room the area has
left, the upload ends there with a 413 naming the quota, however much more
the client meant to send; and, under the area's lock, when the file lands.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import aclosing
from typing import Any, TypeVar

from quart.wrappers.request import Body
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout
from werkzeug.sansio.multipart import (
    NEED_DATA,
    Data,
    Epilogue,
    Event,
    Field,
    File,
    MultipartDecoder,
    NeedData,
)

from taskflow.errors import PayloadTooLarge, ValidationFailed
from taskflow.files import CHUNK_BYTES, AtomicWriter, ConflictPolicy, FileInfo, UserFiles

T = TypeVar("T")

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
    The timeout is per chunk: a 25 MiB upload on a slow link is fine, a
    client that stalls is not.
    """
    too_large = f"the request body is larger than {max_bytes} bytes"
    received = 0
    while True:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
        # cancellation that arrives as a chunk does, and the upload's total
        # deadline (a cancellation from outside) would then never fire.
        idle = asyncio.timeout(idle_timeout_seconds)
        try:
            async with idle:
                chunk = await _next_or_none(body)
        except TimeoutError:
            if not idle.expired():
                raise
            raise RequestTimeout(
                f"no part of the body arrived for {idle_timeout_seconds:g} s"
            ) from None
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
    """Multipart events up to and including the Epilogue, and a ``NeedData``
    each time what the client sent so far has been handed out."""
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
                yield NEED_DATA
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
    """The file part's bytes, and ``b""`` where the rest is yet to come from
    the client; then checks that nothing but the end follows."""
    async for event in events:
        if isinstance(event, Data):
            if event.data:
                yield event.data
            if not event.more_data:
                break
        elif isinstance(event, NeedData):
            yield b""
    async for event in events:
        if isinstance(event, Field | File):
            raise ValidationFailed(
                "the 'file' part must be the last part of the form "
                f"(found {event.name!r} after it; send 'name' before 'file')"
            )


class _UploadFile:
    """The file an upload goes to. Each call on it is short and runs on the
    file I/O threads; once submitted it runs even if the request is
    cancelled meanwhile, never alongside another call on the same file, and
    not at all after a discard (which may overtake it)."""

    def __init__(self, file_io: Executor) -> None:
        self._file_io = file_io
        self._lock = threading.Lock()
        self._writer: AtomicWriter | None = None
        self._discarded = False
        # One write at a time runs while the next chunk is being received.
        self._writing: asyncio.Future[None] | None = None

    def _submit(self, call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        running = asyncio.get_running_loop().run_in_executor(self._file_io, call, *args)
        # Its error is raised where it is awaited; if it never is (the request
        # failed meanwhile), it must not be reported as lost.
        running.add_done_callback(lambda done: done.cancelled() or done.exception())
        return running

    async def open(self, files: UserFiles, name: str, **options: Any) -> None:
        await asyncio.shield(self._submit(self._open, files, name, options))

    async def write(self, data: bytes) -> None:
        """Start writing ``data`` once the previous write is done."""
        await self.flush()
        self._writing = self._submit(self._write, data)

    async def flush(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await asyncio.shield(writing)

    async def commit(self, files: UserFiles) -> FileInfo:
        await self.flush()
        return await asyncio.shield(self._submit(self._commit, files))

    async def discard(self) -> None:
        self._writing = None
        await asyncio.shield(self._submit(self._discard))

    # ----- in a thread

    def _open(self, files: UserFiles, name: str, options: dict[str, Any]) -> None:
        with self._lock:
            if not self._discarded:
                self._writer = files.begin_upload(name, **options)

    def _opened(self) -> AtomicWriter:
        if self._writer is None or self._discarded:
            raise RuntimeError("this upload's file is not open")
        return self._writer

    def _write(self, data: bytes) -> None:
        with self._lock:
            self._opened().write(data)

    def _commit(self, files: UserFiles) -> FileInfo:
        with self._lock:
            return files.stat(self._opened().commit())

    def _discard(self) -> None:
        with self._lock:
            self._discarded = True
            if self._writer is not None:
                self._writer.discard()


async def _write_all(upload: _UploadFile, data: AsyncIterator[bytes]) -> None:
    """Write what arrives, in writes of up to CHUNK_BYTES: what the client has
    sent so far goes out at once (a slow upload keeps nothing in memory), a
    fast one's pieces are gathered (fewer trips to a thread)."""
    pending = bytearray()
    async for chunk in data:
        pending += chunk
        if len(pending) >= CHUNK_BYTES or (pending and not chunk):
            await upload.write(bytes(pending))
            pending.clear()
    if pending:
        await upload.write(bytes(pending))
    await upload.flush()


async def receive_upload(
    body: Body,
    boundary: bytes,
    files: UserFiles,
    *,
    file_io: Executor,
    max_file_bytes: int,
    on_conflict: ConflictPolicy,
    idle_timeout_seconds: float | None,
    total_timeout_seconds: float,
) -> FileInfo:
    """Read a multipart upload and store its file part; return what was stored."""
    events = _form_events(
        body,
        boundary,
        max_body_bytes=max_file_bytes + UPLOAD_OVERHEAD_BYTES,
        idle_timeout_seconds=idle_timeout_seconds,
    )
    deadline = asyncio.timeout(total_timeout_seconds)
    try:
        async with deadline, aclosing(events):
            name, part = await _read_until_file(events)
            name = name or part.filename
            if not name:
                raise ValidationFailed(
                    "the upload has no file name: give one in the 'name' field or as the "
                    "file part's filename"
                )
            upload = _UploadFile(file_io)
            try:
                await upload.open(files, name, max_bytes=max_file_bytes, on_conflict=on_conflict)
                async with aclosing(_file_data(events)) as data:
                    await _write_all(upload, data)
            except BaseException:
                # Gone before the error answer goes out (cancelled, too).
                await upload.discard()
                raise
    except TimeoutError:
        if not deadline.expired():
            raise
        raise RequestTimeout(
            f"the upload did not finish within {total_timeout_seconds:g} s"
        ) from None
    # Past the deadline's reach: the body is all here, and a commit cut
    # short could leave the file in place after a 408.
    return await upload.commit(files)
