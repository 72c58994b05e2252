"""What a downloaded file is called: a safe stem from the URL, an extension
from the Content-Type (else from the URL, else ``.bin``)."""

from __future__ import annotations

import mimetypes

import httpx

from taskflow.files import safe_stem, split_name

_GENERIC_TYPES = frozenset(
    {
        "application/octet-stream",
        "binary/octet-stream",
        "application/binary",
        "application/unknown",
        "application/x-download",
        "application/force-download",
    }
)
# mimetypes answers differ between machines (/etc/mime.types) and some of its
# first choices are odd (".jpe"); the common types get a fixed answer.
_PREFERRED_EXTENSIONS = {
    "application/gzip": ".gz",
    "application/json": ".json",
    "application/pdf": ".pdf",
    "application/xml": ".xml",
    "application/zip": ".zip",
    "audio/mpeg": ".mp3",
    "image/gif": ".gif",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/svg+xml": ".svg",
    "image/webp": ".webp",
    "text/csv": ".csv",
    "text/html": ".html",
    "text/plain": ".txt",
    "text/xml": ".xml",
    "video/mp4": ".mp4",
}


def media_type(content_type: str | None) -> str:
    """``"Text/HTML; charset=utf-8"`` -> ``"text/html"``; ``""`` when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def guess_extension(content_type: str | None) -> str:
    """The usual extension for a Content-Type, e.g. ``".png"``; ``""`` when the
    type is missing, generic (octet-stream) or unknown."""
    kind = media_type(content_type)
    if "/" not in kind or kind in _GENERIC_TYPES:
        return ""
    extension = _PREFERRED_EXTENSIONS.get(kind) or mimetypes.guess_extension(kind, strict=False)
    if not extension:
        return ""
    _, checked = split_name("x" + extension)
    return checked


def name_parts(url: httpx.URL, content_type: str | None) -> tuple[str, str]:
    """A safe ``(stem, extension)`` for what ``url`` served."""
    segment = url.path.rsplit("/", 1)[-1]
    raw_stem, url_extension = split_name(segment)
    stem = safe_stem(raw_stem, default=safe_stem(url.host, default="download"))
    extension = guess_extension(content_type)
    kind = media_type(content_type)
    if url_extension and kind and mimetypes.guess_type("x" + url_extension)[0] == kind:
        extension = url_extension  # ".jpeg" stays ".jpeg" rather than becoming ".jpg"
    return stem, extension or url_extension.lower() or ".bin"
