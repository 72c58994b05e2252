"""Images built for process_image tests, and the process's peak memory.

Peak memory is the process's peak resident set: writing "5" to
/proc/self/clear_refs resets VmHWM to the current RSS, and VmHWM read later is
the highest RSS in between. A handler called directly runs in this process,
so the growth is what its jobs really took.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PIL import Image

MIB = 1024 * 1024


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_from_rows(
    width: int,
    height: int,
    rows: Callable[[], Iterable[bytes]],
    *,
    colour_type: int = 6,
    depth: int = 8,
) -> bytes:
    """A PNG whose image data is ``rows()`` (filter byte included), deflated
    row by row so no full-size buffer is ever built here."""
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for row in rows()) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


def start_peak_rss() -> int:
    """Reset the peak RSS to the current RSS; return that baseline."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_bytes("VmRSS")


def peak_rss_growth(baseline: int) -> int:
    return status_bytes("VmHWM") - baseline


async def poll(condition: Callable[[], bool], timeout_seconds: float = 30) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_seconds}s")
        await asyncio.sleep(0.01)


def noise(mode: str, width: int, height: int) -> Image.Image:
    """The worst case for every codec: nothing to compress, every colour used."""
    count = 3 if mode == "P" else len(mode)
    bands = [Image.effect_noise((width, height), 80).convert("L") for _ in range(count)]
    if mode == "P":
        return Image.merge("RGB", bands).quantize(256)
    return Image.merge(mode, bands)


def encoded(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()
