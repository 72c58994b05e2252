"""process_image copies only verified input, and verifies it without a
full-size pixel buffer; damaged files fail permanently whichever path they take."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from taskflow.errors import PermanentError
from taskflow.files import TEMPORARY_PREFIX, UserFiles
from taskflow.handlers import TaskContext
from taskflow.handlers.process_image import process_image
from taskflow.models import ProcessImagePayload
from tests.images import (
    MIB,
    encoded,
    noise,
    peak_rss_growth,
    png_chunk,
    png_from_rows,
    start_peak_rss,
)
from tests.servers import handler_context, handler_settings


@pytest.fixture
def ctx(tmp_path: Path) -> TaskContext:
    return handler_context(handler_settings(tmp_path / "files"), task_type="process_image")


async def run(ctx: TaskContext, path: str, **operations: Any) -> dict[str, Any]:
    return await process_image(ProcessImagePayload(path=path, **operations), ctx)


def temporaries(files: UserFiles) -> list[str]:
    return [name for name in os.listdir(files.root) if name.startswith(TEMPORARY_PREFIX)]


async def test_a_copy_of_a_large_jpeg_is_verified_at_an_eighth_of_its_size(
    ctx: TaskContext,
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 4000), (90, 140, 30)).save(buffer, format="JPEG", quality=90)
    original = buffer.getvalue()
    ctx.files.write_atomic("photo.jpg", original)
    baseline = start_peak_rss()
    result = await run(ctx, "photo.jpg")
    growth = peak_rss_growth(baseline)
    assert growth < 6000 * 4000 * 4 // 4, f"peak RSS grew by {growth // MIB} MiB for a copy"
    assert ctx.files.read_bytes(result["output"]) == original

    ctx.files.write_atomic("cut.jpg", original[: len(original) * 2 // 3])
    for operations in ({}, {"invert": True}):
        with pytest.raises(PermanentError, match="not a valid image"):
            await run(ctx, "cut.jpg", **operations)


def small_rows(width: int, height: int, filter_type: int = 0) -> list[bytes]:
    return [
        bytes([filter_type]) + bytes((x * 7 + y) % 256 for x in range(width)) for y in range(height)
    ]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("bad checksum", "not a valid image.*checksum"),
        ("corrupt data", "not a valid image"),
        ("bad filter", "not a valid image"),
        ("missing rows", "not a valid image"),
        ("cut short", "not a valid image"),
    ],
)
async def test_a_damaged_png_is_refused_copied_or_processed(
    ctx: TaskContext, damage: str, message: str
) -> None:
    rows = small_rows(40, 30)
    if damage == "bad filter":
        rows[17] = b"\x07" + rows[17][1:]
    if damage == "missing rows":
        rows = rows[:20]
    data = png_from_rows(40, 30, lambda: rows, colour_type=0)
    if damage in ("bad checksum", "corrupt data"):
        # The first byte of the image data, or the last of its CRC.
        at = data.index(b"IDAT") + 4 if damage == "corrupt data" else data.index(b"IEND") - 5
        data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
    if damage == "cut short":
        data = data[: len(data) - 30]
    ctx.files.write_atomic("bad.png", data)
    for operations in ({}, {"invert": True}):
        with pytest.raises(PermanentError, match=message):
            await run(ctx, "bad.png", **operations)
    assert [info.name for info in ctx.files.list()] == ["bad.png"]
    assert temporaries(ctx.files) == []


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("RGB", {"optimize": True}),
        ("RGBA", {}),
        ("P", {"transparency": 3}),
        ("1", {}),
        ("I;16", {}),
        ("LA", {}),
    ],
)
@pytest.mark.parametrize("interlace", [False, True])
async def test_valid_pngs_are_copied_byte_for_byte(
    ctx: TaskContext, mode: str, options: dict[str, Any], interlace: bool
) -> None:
    source = noise("RGB", 37, 23).convert(mode) if mode != "I;16" else None
    if source is None:
        source = Image.new("I;16", (37, 23))
        source.frombytes(os.urandom(37 * 23 * 2))
    data = encoded(source, "PNG", **options)
    if interlace:
        # Pillow does not write Adam7; re-encode the same pixels interlaced.
        data = adam7(source, data)
    ctx.files.write_atomic("ok.png", data)
    result = await run(ctx, "ok.png")
    assert ctx.files.read_bytes(result["output"]) == data
    with Image.open(io.BytesIO(data)) as check:
        check.load()  # Pillow agrees the file is whole


def adam7(image: Image.Image, data: bytes) -> bytes:
    """``data`` with its image data replaced by the Adam7-interlaced rows of
    ``image`` (8-bit modes only; others are returned unchanged)."""
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2, "P": 1}.get(image.mode)
    if channels is None:
        return data
    raw = image.tobytes()
    width, height = image.size
    rows: list[bytes] = []
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4))
    for x0, y0, dx, dy in (*passes, (1, 0, 2, 2), (0, 1, 1, 2)):
        for y in range(y0, height, dy):
            line = raw[y * width * channels : (y + 1) * width * channels]
            pixels = [line[x * channels : (x + 1) * channels] for x in range(x0, width, dx)]
            if pixels:
                rows.append(b"\x00" + b"".join(pixels))
    start = data.index(b"IHDR") - 4
    header = bytearray(data[start + 8 : start + 8 + 13])
    header[12] = 1  # interlace method: Adam7
    idat = data.index(b"IDAT") - 4
    chunks = data[start + 8 + 13 + 4 : idat]  # PLTE, tRNS, ...
    return (
        data[:8]
        + png_chunk(b"IHDR", bytes(header))
        + chunks
        + png_chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + png_chunk(b"IEND", b"")
    )


def tiff_with_strips(strips: int) -> bytes:
    """A 16x16 grey TIFF whose directory lists ``strips`` strip offsets and
    sizes: 8 bytes a strip on disk, two Python ints each once Pillow reads it."""

    def entry(tag: int, field_type: int, count: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, field_type, count, value)

    offsets_at = 8 + 2 + 9 * 12 + 4
    sizes_at = offsets_at + 4 * strips
    entries = [
        entry(256, 4, 1, 16),  # width
        entry(257, 4, 1, 16),  # height
        entry(258, 3, 1, 8),  # bits per sample
        entry(259, 3, 1, 1),  # no compression
        entry(262, 3, 1, 1),  # black is zero
        entry(273, 4, strips, offsets_at),  # strip offsets
        entry(277, 3, 1, 1),  # samples per pixel
        entry(278, 4, 1, 1),  # rows per strip
        entry(279, 4, strips, sizes_at),  # strip byte counts
    ]
    directory = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + directory + bytes(8 * strips)


async def test_a_tiff_directory_bomb_is_refused_before_pillow_reads_it(
    ctx: TaskContext,
) -> None:
    """23 MB on disk, and Pillow alone took 750 MiB just to open it."""
    ctx.files.write_atomic("strips.tif", tiff_with_strips(3_000_000))
    baseline = start_peak_rss()
    for operations in ({}, {"invert": True}):
        with pytest.raises(
            PermanentError, match="TIFF directory holds 6000007 values, over the limit"
        ):
            await run(ctx, "strips.tif", **operations)
    growth = peak_rss_growth(baseline)
    assert growth < 64 * MIB, f"peak RSS grew by {growth // MIB} MiB"
    assert [info.name for info in ctx.files.list()] == ["strips.tif"]


async def test_a_tiff_with_a_real_strip_count_still_opens(ctx: TaskContext) -> None:
    image = noise("L", 300, 4000)
    ctx.files.write_atomic("tall.tif", encoded(image, "TIFF"))  # one row a strip: 4000 strips
    result = await run(ctx, "tall.tif", invert=True)
    with Image.open(io.BytesIO(ctx.files.read_bytes(result["output"]))) as output:
        assert output.tobytes() == bytes(255 - v for v in image.tobytes())
