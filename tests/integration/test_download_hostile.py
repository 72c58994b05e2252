"""download_files against servers that send encoded bodies nobody asked for.

The client asks for ``Accept-Encoding: identity``; these servers answer with
gzip, deflate, stacked or unknown encodings anyway, with bombs, endless
streams that decode to nothing, truncated and corrupt data. Each body is built
here and served byte for byte by :meth:`HTTPTestServer.serve_raw`.

Peak memory is read from ``/proc/self/status`` (``VmHWM``) after resetting it
through ``/proc/self/clear_refs``; the HTTP server runs in this process too,
so the measurement covers both ends.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import os
import random
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskflow.config import Settings
from taskflow.errors import HandlerError, PermanentError, TransientError
from taskflow.files import UserFiles
from taskflow.handlers import TaskContext
from taskflow.handlers.content_encoding import DECODE_STEP_BYTES
from taskflow.handlers.download_files import download_files
from taskflow.models import DownloadFilesPayload
from tests import servers
from tests.servers import (
    Framing,
    HTTPTestServer,
    body_of,
    handler_context,
    handler_settings,
    sha256_of,
)

http_server = servers.http_server

MIB = 1024 * 1024
# Big enough that inflating it shows plainly in RSS, small enough that a
# regression costs this process about a gigabyte rather than the machine.
BOMB_BYTES = 512 * MIB
PEAK_RSS_GROWTH_LIMIT_KIB = 100 * 1024
# No file name, mtime 0, "maximum compression", unknown OS.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
EMPTY_GZIP_MEMBER = gzip.compress(b"", mtime=0)
# An empty stored block, as a sync flush writes it: decodes to nothing.
EMPTY_STORED_BLOCK = b"\x00\x00\x00\xff\xff"
CONTENT = body_of(300_000)
# Raw deflate of this many zeros ends inside a full decoding step (found by
# trying lengths near one step; depends on zlib's output, as any such case).
HELD_OUTPUT_SIZE = DECODE_STEP_BYTES + 21
NOISE = random.Random(7).randbytes(200_000)


# ----- building bodies -------------------------------------------------------


def gzip_of_zeros(size: int) -> Iterator[bytes]:
    """One gzip member of ``size`` zero bytes, in pieces, without holding them.

    A full flush leaves the compressor with no history, so the compressed form
    of one MiB of zeros is self-contained and byte-aligned: repeating it is a
    valid deflate stream, and only one MiB is ever compressed.
    """
    zero_mib = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = compressor.compress(zero_mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(size, MIB)
    yield GZIP_HEADER
    for _ in range(whole):
        yield segment
    last = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    yield last.compress(bytes(rest)) + last.flush()
    crc = 0
    for _ in range(whole):
        crc = zlib.crc32(zero_mib, crc)
    crc = zlib.crc32(bytes(rest), crc)
    yield struct.pack("<II", crc, size & 0xFFFFFFFF)


def gzip_all(pieces: Iterable[bytes]) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    compressed = [compressor.compress(piece) for piece in pieces]
    return b"".join([*compressed, compressor.flush()])


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@functools.cache
def stacked_bomb() -> bytes:
    return gzip_all(gzip_of_zeros(BOMB_BYTES))


@functools.cache
def single_bomb() -> bytes:
    return b"".join(gzip_of_zeros(BOMB_BYTES))


def repeated(prefix: bytes, unit: bytes, total_bytes: int) -> Callable[[], Iterator[bytes]]:
    """A body factory: ``prefix``, then ``unit`` over and over, about
    ``total_bytes`` in all (finite, so a client that never stops still ends)."""
    piece = unit * (64 * 1024 // len(unit))

    def pieces() -> Iterator[bytes]:
        yield prefix
        for _ in range(total_bytes // len(piece)):
            yield piece

    return pieces


# ----- measuring and calling -------------------------------------------------


def status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, f"no {field} in /proc/self/status"
    return int(match.group(1))


def reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS and return that RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "download_allow_private": True,
        "download_connect_timeout_seconds": 2,
        "download_read_timeout_seconds": 2,
    }
    values.update(overrides)
    return handler_settings(tmp_path / "files", **values)


def context(settings: Settings) -> TaskContext:
    return handler_context(settings, task_type="download_files")


async def fetch(ctx: TaskContext, *urls: str) -> dict[str, Any]:
    # A functional deadline: every case here ends in well under a second.
    async with asyncio.timeout(60):
        return await download_files(DownloadFilesPayload(urls=list(urls)), ctx)


def area_names(files: UserFiles) -> list[str]:
    """Everything in the area's directory, hidden temporaries included."""
    return sorted(os.listdir(files.root)) if files.root.exists() else []


def encoded(encoding: str) -> tuple[tuple[str, str], ...]:
    return (("Content-Type", "application/octet-stream"), ("Content-Encoding", encoding))


# ----- bombs -----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(encoded("gzip, gzip"), id="one-header"),
        pytest.param((*encoded("gzip"), ("Content-Encoding", "gzip")), id="two-headers"),
    ],
)
async def test_stacked_gzip_bomb_fails_permanently_without_inflating(
    http_server: HTTPTestServer, tmp_path: Path, headers: tuple[tuple[str, str], ...]
) -> None:
    bomb = stacked_bomb()
    assert len(bomb) < 64 * 1024, "a few KiB that inflate to BOMB_BYTES"
    url = http_server.serve_raw("bomb", bomb, headers=headers)
    ctx = context(make_settings(tmp_path, download_max_bytes=10 * MIB))

    rss_before_kib = reset_peak_rss()
    with pytest.raises(PermanentError) as caught:
        await fetch(ctx, url)
    growth_kib = status_kib("VmHWM") - rss_before_kib

    assert growth_kib < PEAK_RSS_GROWTH_LIMIT_KIB, f"peak RSS grew by {growth_kib} KiB"
    assert "Content-Encoding 'gzip, gzip'" in caught.value.message
    assert "asked for identity" in caught.value.message
    assert area_names(ctx.files) == []


async def test_single_gzip_layer_over_the_cap_leaves_nothing(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    bomb = single_bomb()
    limit = 8 * MIB
    assert len(bomb) < limit, "the compressed body itself is under the cap"
    url = http_server.serve_raw("bomb", bomb, headers=encoded("gzip"))
    ctx = context(make_settings(tmp_path, download_max_bytes=limit))

    rss_before_kib = reset_peak_rss()
    with pytest.raises(PermanentError, match=f"over the limit of {limit} bytes"):
        await fetch(ctx, url)
    growth_kib = status_kib("VmHWM") - rss_before_kib

    assert growth_kib < PEAK_RSS_GROWTH_LIMIT_KIB, f"peak RSS grew by {growth_kib} KiB"
    assert area_names(ctx.files) == []


async def test_decoded_size_exactly_at_the_cap_is_saved(
    http_server: HTTPTestServer, tmp_path: Path
) -> None:
    url = http_server.serve_raw("at-cap", gzip.compress(CONTENT), headers=encoded("gzip"))
    ctx = context(make_settings(tmp_path, download_max_bytes=len(CONTENT) - 1))
    with pytest.raises(PermanentError, match="over the limit"):
        await fetch(ctx, url)
    assert area_names(ctx.files) == []

    ctx = context(make_settings(tmp_path, download_max_bytes=len(CONTENT)))
    [entry] = (await fetch(ctx, url))["files"]
    assert entry["size"] == len(CONTENT)
    assert ctx.files.read_bytes(entry["name"]) == CONTENT


# ----- what is decoded -------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "body", "content", "framing"),
    [
        pytest.param("gzip", gzip.compress(CONTENT), CONTENT, "length", id="gzip"),
        pytest.param("gzip", gzip.compress(NOISE), NOISE, "chunked", id="gzip-noise-chunked"),
        pytest.param(
            "gzip",
            b"".join(gzip_of_zeros(3 * MIB + 5)),
            bytes(3 * MIB + 5),
            "length",
            id="gzip-zeros-many-steps",
        ),
        pytest.param(
            "deflate",
            zlib.compress(body_of(3 * MIB), 9),
            body_of(3 * MIB),
            "close",
            id="deflate-many-steps",
        ),
        pytest.param("x-gzip", gzip.compress(CONTENT), CONTENT, "close", id="x-gzip-close"),
        pytest.param("GZip", gzip.compress(CONTENT), CONTENT, "length", id="gzip-capitals"),
        pytest.param(
            "gzip",
            gzip.compress(CONTENT[:1000]) + gzip.compress(b"") + gzip.compress(CONTENT[1000:]),
            CONTENT,
            "length",
            id="gzip-members",
        ),
        pytest.param("deflate", zlib.compress(CONTENT), CONTENT, "length", id="deflate-zlib"),
        pytest.param("deflate", zlib.compress(NOISE), NOISE, "close", id="deflate-noise"),
        pytest.param("deflate", raw_deflate(CONTENT), CONTENT, "chunked", id="deflate-raw"),
        pytest.param("deflate", raw_deflate(b"x"), b"x", "length", id="deflate-raw-tiny"),
        # zlib takes the last input byte while filling a whole step and still
        # holds output: one more call with no input must drain it.
        pytest.param(
            "deflate",
            raw_deflate(bytes(HELD_OUTPUT_SIZE)),
            bytes(HELD_OUTPUT_SIZE),
            "length",
            id="deflate-output-held-in-zlib",
        ),
        pytest.param("identity", CONTENT, CONTENT, "length", id="identity"),
        pytest.param("gzip", b"", b"", "length", id="empty-body"),
    ],
)
async def test_a_single_layer_is_decoded_and_hashed_as_saved(
    http_server: HTTPTestServer,
    tmp_path: Path,
    encoding: str,
    body: bytes,
    content: bytes,
    framing: Framing,
) -> None:
    url = http_server.serve_raw("file.txt", body, headers=encoded(encoding), framing=framing)
    ctx = context(make_settings(tmp_path))
    [entry] = (await fetch(ctx, url))["files"]
    assert ctx.files.read_bytes(entry["name"]) == content
    assert entry["size"] == len(content)
    assert entry["sha256"] == sha256_of(content)
    assert area_names(ctx.files) == [entry["name"]]


@pytest.mark.parametrize(
    "encoding",
    ["br", "compress", "x-compress", "zstd", "x-taskflow-unknown", "gzip, br", "deflate, gzip"],
)
async def test_unsupported_encodings_fail_permanently_naming_them(
    http_server: HTTPTestServer, tmp_path: Path, encoding: str
) -> None:
    url = http_server.serve_raw("odd", b"\x8b\x00 whatever this is", headers=encoded(encoding))
    ctx = context(make_settings(tmp_path))
    with pytest.raises(PermanentError, match=re.escape(f"Content-Encoding {encoding!r}")):
        await fetch(ctx, url)
    assert area_names(ctx.files) == []


# ----- endless, truncated and corrupt streams --------------------------------


@pytest.mark.parametrize(
    ("encoding", "prefix", "unit"),
    [
        pytest.param("gzip", b"", EMPTY_GZIP_MEMBER, id="empty-gzip-members"),
        pytest.param("deflate", b"\x78\x9c", EMPTY_STORED_BLOCK, id="deflate-padding"),
        pytest.param("gzip", GZIP_HEADER, EMPTY_STORED_BLOCK, id="gzip-padding"),
    ],
)
async def test_a_long_stream_that_decodes_to_little_stops_at_the_raw_cap(
    http_server: HTTPTestServer, tmp_path: Path, encoding: str, prefix: bytes, unit: bytes
) -> None:
    limit = 1 * MIB
    url = http_server.serve_raw(
        "endless", repeated(prefix, unit, 256 * MIB), headers=encoded(encoding), framing="close"
    )
    ctx = context(make_settings(tmp_path, download_max_bytes=limit))
    with pytest.raises(PermanentError, match=f"over the limit of {limit} bytes"):
        await fetch(ctx, url)
    assert area_names(ctx.files) == []


TRUNCATED_GZIP = gzip.compress(CONTENT)[:-12]


@pytest.mark.parametrize(
    ("encoding", "body", "framing", "error"),
    [
        # The framing says the body is complete: the server sends it this way.
        pytest.param("gzip", TRUNCATED_GZIP, "length", PermanentError, id="gzip-length"),
        pytest.param("gzip", TRUNCATED_GZIP, "chunked", PermanentError, id="gzip-chunked"),
        pytest.param("deflate", b"\x78", "length", PermanentError, id="deflate-one-byte"),
        # Only a closed connection marks the end: a dropped one looks the same.
        pytest.param("gzip", TRUNCATED_GZIP, "close", TransientError, id="gzip-close"),
        pytest.param(
            "deflate", zlib.compress(NOISE)[:5000], "close", TransientError, id="deflate-close"
        ),
    ],
)
async def test_a_truncated_stream_is_not_saved(
    http_server: HTTPTestServer,
    tmp_path: Path,
    encoding: str,
    body: bytes,
    framing: Framing,
    error: type[HandlerError],
) -> None:
    url = http_server.serve_raw("cut", body, headers=encoded(encoding), framing=framing)
    ctx = context(make_settings(tmp_path))
    with pytest.raises(HandlerError, match="truncated") as caught:
        await fetch(ctx, url)
    assert type(caught.value) is error
    assert area_names(ctx.files) == []


def _flipped(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        pytest.param("gzip", b"plain text, not gzip", "corrupt", id="not-gzip"),
        pytest.param("deflate", b"\xff\xff\xff\xff", "corrupt", id="not-deflate"),
        pytest.param(
            "gzip", _flipped(gzip.compress(NOISE), 50_000), "corrupt", id="gzip-flipped-byte"
        ),
        pytest.param(
            "gzip", gzip.compress(CONTENT)[:-8] + b"\0" * 8, "corrupt", id="gzip-bad-checksum"
        ),
        pytest.param(
            "gzip", gzip.compress(CONTENT) + b"trailing garbage", "corrupt", id="gzip-garbage"
        ),
        pytest.param("gzip", gzip.compress(CONTENT) + b"\0" * 16, "corrupt", id="gzip-zeros"),
        pytest.param("deflate", zlib.compress(CONTENT) + b"x", "data after", id="deflate-garbage"),
    ],
)
async def test_corrupt_streams_and_trailing_data_fail_permanently(
    http_server: HTTPTestServer, tmp_path: Path, encoding: str, body: bytes, message: str
) -> None:
    url = http_server.serve_raw("bad", body, headers=encoded(encoding))
    ctx = context(make_settings(tmp_path))
    with pytest.raises(PermanentError, match=message):
        await fetch(ctx, url)
    assert area_names(ctx.files) == []
