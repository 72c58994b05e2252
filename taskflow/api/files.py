"""/api/files: the caller's own file area: upload, list, download, delete.

Every name goes through :class:`taskflow.files.UserFiles`, which accepts only
plain file names inside ``<base_file_path>/<user_id>/``: a bad name is a 400, a
name that is not there (or is another user's) a 404.

Uploads stream (``taskflow.api.uploads``), held to the caller's quota
(``user_files_max_bytes``, or their own in ``user_limits``): over it, a 413
naming it. All disk I/O runs on the app's own
file I/O threads, a short call at a time (one chunk, one listing): never on
the event loop, and never on the default executor, where a slow disk would
queue up everything else that uses it.

Downloads are always attachments with a passive Content-Type, so an uploaded
.html or .svg never renders in the API's origin.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import IO, Any, TypeVar, cast, get_args
from urllib.parse import quote

from flask.sansio.blueprints import BlueprintSetupState
from quart import Blueprint, Quart, Response, current_app, request
from werkzeug.exceptions import UnsupportedMediaType
from werkzeug.routing import PathConverter

from taskflow.api import ApiConfig, config, services
from taskflow.api.responses import json_response
from taskflow.api.route_docs import Body, PathParameter, documented
from taskflow.api.schemas import (
    FILE_INFO_JSON,
    FileInfo,
    UploadConflictPolicy,
    UploadForm,
    UploadQuery,
)
from taskflow.api.security import current_user_id, require_user
from taskflow.api.uploads import UPLOAD_OVERHEAD_BYTES, receive_upload
from taskflow.errors import ValidationFailed
from taskflow.files import CHUNK_BYTES, MAX_NAME_BYTES, ConflictPolicy, UserFiles

T = TypeVar("T")

blueprint = Blueprint("files", __name__)

FILES_PATH = "/api/files"
MAX_BOUNDARY_CHARS = 70  # RFC 2046
FILE_IO_EXTENSION = "taskflow.file_io"
# Every call on them is short, so a few threads serve many uploads and
# downloads at once; a slow disk makes file requests wait, nothing else.
FILE_IO_THREADS = 8
CONFLICT_POLICIES: dict[str, ConflictPolicy] = {
    policy: policy for policy in get_args(UploadConflictPolicy)
}
FILE_NAME = PathParameter(
    "name",
    {"type": "string", "maxLength": MAX_NAME_BYTES},
    {400: "not a plain file name", 404: "no such file"},
)

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


@blueprint.while_app_serving
async def _file_io_threads() -> AsyncGenerator[None, None]:
    executor = ThreadPoolExecutor(FILE_IO_THREADS, thread_name_prefix="taskflow-file-io")
    current_app.extensions[FILE_IO_EXTENSION] = executor
    try:
        yield
    finally:
        del current_app.extensions[FILE_IO_EXTENSION]
        # Lets the calls already submitted (an abandoned upload's discard) end.
        await asyncio.to_thread(executor.shutdown)


# ----- helpers ------------------------------------------------------------------------


def _user_files() -> UserFiles:
    return UserFiles(config().settings.base_file_path, current_user_id())


async def _user_files_to_write() -> UserFiles:
    """The caller's area with its quota, for writing into."""
    settings = config().settings
    user_id = current_user_id()
    quota = await services().accounts.select_files_quota(user_id, settings.user_files_max_bytes)
    return UserFiles(settings.base_file_path, user_id, quota_bytes=quota)


def _file_io() -> Executor:
    executor: Executor = current_app.extensions[FILE_IO_EXTENSION]
    return executor


async def _in_file_thread(call: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_file_io(), call, *args)


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


# ----- routes -------------------------------------------------------------------------


@blueprint.post(FILES_PATH)
@documented(
    request=Body("multipart/form-data", UploadForm),
    query=UploadQuery,
    response=FileInfo,
    status=201,
    description="stored; Location is its download URL",
    errors={
        400: "bad file name, malformed form or missing 'file' field",
        409: "the name is taken (see on_conflict)",
        413: "the file is larger than upload_max_bytes, or over the quota (limit names it)",
        415: "not multipart/form-data",
    },
)
@require_user
async def upload_file() -> Response:
    """Upload a file to your file area."""
    settings = config().settings
    on_conflict = _conflict_policy()
    boundary = _multipart_boundary()
    info = await receive_upload(
        request.body,
        boundary,
        await _user_files_to_write(),
        file_io=_file_io(),
        max_file_bytes=settings.upload_max_bytes,
        on_conflict=on_conflict,
        idle_timeout_seconds=request.body_timeout,
        total_timeout_seconds=settings.upload_timeout_seconds,
    )
    location = f"{FILES_PATH}/{quote(info.name, safe='')}"
    return json_response(FILE_INFO_JSON.of_object(info), 201, {"Location": location})


@blueprint.get(FILES_PATH)
@documented(response=list[FileInfo])
@require_user
async def list_files() -> Response:
    """List your files, by name."""
    listed = await _in_file_thread(_user_files().list)
    return json_response(FILE_INFO_JSON.of_objects(listed))


def _open_with_size(files: UserFiles, name: str) -> tuple[IO[bytes], int]:
    handle = files.open_read(name)
    return handle, os.fstat(handle.fileno()).st_size


async def _stream(handle: IO[bytes], file_io: Executor) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    try:
        while chunk := await loop.run_in_executor(file_io, handle.read, CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()


@blueprint.get(f"{FILES_PATH}/<filename:name>")
@documented(
    response=Body("application/octet-stream", {"type": "string", "format": "binary"}),
    description="the file's bytes",
    path={"name": FILE_NAME},
)
@require_user
async def download_file(name: str) -> Response:
    """Download a file (always as an attachment)."""
    handle, size = await _in_file_thread(_open_with_size, _user_files(), name)
    response = Response(
        _stream(handle, _file_io()),
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
@documented(response=None, status=204, path={"name": FILE_NAME})
@require_user
async def delete_file(name: str) -> Response:
    """Delete a file."""
    await _in_file_thread(_user_files().delete, name)
    return Response(status=204)
