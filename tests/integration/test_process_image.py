"""process_image on real images generated here; pixels are checked, not mocks."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from taskflow.errors import PermanentError
from taskflow.files import TEMPORARY_PREFIX, UserFiles
from taskflow.handlers import TaskContext
from taskflow.handlers.process_image import TASK_TYPE, process_image
from taskflow.models import ProcessImagePayload
from tests.servers import ProgressRecorder, handler_context, handler_settings


@pytest.fixture
def ctx(tmp_path: Path) -> TaskContext:
    return handler_context(handler_settings(tmp_path / "files"), task_type="process_image")


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata(
        [(x * 4 % 256, y * 5 % 256, (x + y) * 2 % 256) for y in range(height) for x in range(width)]
    )
    return image


def store(
    files: UserFiles, name: str, image: Image.Image, image_format: str, **options: Any
) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    files.write_atomic(name, buffer.getvalue())
    return buffer.getvalue()


def load(files: UserFiles, name: str) -> Image.Image:
    image = Image.open(io.BytesIO(files.read_bytes(name)))
    image.load()
    return image


async def run(ctx: TaskContext, path: str, **operations: Any) -> dict[str, Any]:
    return await process_image(ProcessImagePayload(path=path, **operations), ctx)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def grey(image: Image.Image, x: int, y: int) -> int:
    value = image.getpixel((x, y))
    assert isinstance(value, int)
    return value


def pixels(image: Image.Image) -> list[Any]:
    """Every pixel, row by row (getdata() is deprecated in Pillow 13)."""
    return [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]


def temporaries(files: UserFiles) -> list[str]:
    return [name for name in os.listdir(files.root) if name.startswith(TEMPORARY_PREFIX)]


def test_task_type() -> None:
    assert TASK_TYPE.name == "process_image"
    assert TASK_TYPE.payload_model is ProcessImagePayload


async def test_grayscale_gives_equal_channels(ctx: TaskContext) -> None:
    store(ctx.files, "in.png", gradient(), "PNG")
    result = await run(ctx, "in.png", grayscale=True)
    output = load(ctx.files, result["output"]).convert("RGB")
    values = pixels(output)
    assert all(r == g == b for r, g, b in values)
    assert len(set(values)) > 10, "still an image, not a flat colour"


async def test_invert_gives_255_minus_v(ctx: TaskContext) -> None:
    source = gradient()
    store(ctx.files, "in.png", source, "PNG")
    result = await run(ctx, "in.png", invert=True)
    output = load(ctx.files, result["output"])
    for before, after in zip(pixels(source), pixels(output), strict=True):
        assert after == tuple(255 - v for v in before)


async def test_blur_softens_an_edge_only_near_it(ctx: TaskContext) -> None:
    edge = Image.new("L", (40, 20), 0)
    edge.paste(255, (20, 0, 40, 20))
    store(ctx.files, "edge.png", edge, "PNG")
    result = await run(ctx, "edge.png", blur=2)
    output = load(ctx.files, result["output"])
    assert 0 < grey(output, 19, 10) < 255
    assert 0 < grey(output, 20, 10) < 255
    assert grey(output, 0, 10) == 0
    assert grey(output, 39, 10) == 255


async def test_sharpen_steepens_an_edge(ctx: TaskContext) -> None:
    step = Image.new("L", (40, 20), 100)
    step.paste(150, (20, 0, 40, 20))
    store(ctx.files, "step.png", step, "PNG")
    result = await run(ctx, "step.png", sharpen=1)
    output = load(ctx.files, result["output"])
    assert grey(output, 19, 10) < 100
    assert grey(output, 20, 10) > 150


async def test_gamma_above_one_brightens_mid_tones(ctx: TaskContext) -> None:
    tones = Image.new("L", (3, 1))
    tones.putdata([0, 128, 255])
    store(ctx.files, "tones.png", tones, "PNG")
    brighter = load(ctx.files, (await run(ctx, "tones.png", gamma=2.2))["output"])
    darker = load(ctx.files, (await run(ctx, "tones.png", gamma=0.5))["output"])
    assert pixels(brighter) == [0, round(255 * (128 / 255) ** (1 / 2.2)), 255]
    assert grey(brighter, 1, 0) > 128 > grey(darker, 1, 0)
    assert grey(darker, 1, 0) == round(255 * (128 / 255) ** 2)


async def test_operations_apply_in_the_documented_order(ctx: TaskContext) -> None:
    tones = Image.new("L", (1, 1), 64)
    store(ctx.files, "one.png", tones, "PNG")
    result = await run(ctx, "one.png", invert=True, gamma=2)
    # invert first (64 -> 191), then gamma 2 on 191.
    assert load(ctx.files, result["output"]).getpixel((0, 0)) == round(255 * (191 / 255) ** 0.5)


async def test_percentages_at_minus_100(ctx: TaskContext) -> None:
    store(ctx.files, "in.png", gradient(), "PNG")
    black = load(ctx.files, (await run(ctx, "in.png", brightness=-100))["output"])
    assert set(pixels(black)) == {(0, 0, 0)}
    flat = load(ctx.files, (await run(ctx, "in.png", contrast=-100))["output"])
    assert len(set(pixels(flat))) == 1
    grey = load(ctx.files, (await run(ctx, "in.png", saturation=-100))["output"])
    assert all(r == g == b for r, g, b in pixels(grey))


async def test_brightness_plus_100_doubles(ctx: TaskContext) -> None:
    store(ctx.files, "dim.png", Image.new("RGB", (4, 4), (50, 60, 70)), "PNG")
    result = await run(ctx, "dim.png", brightness=100)
    assert load(ctx.files, result["output"]).getpixel((0, 0)) == (100, 120, 140)


@pytest.mark.parametrize(
    "operations",
    [
        {},
        {"contrast": 0, "brightness": 0, "saturation": 0},
        {"grayscale": False, "invert": False, "gamma": 1},
    ],
)
async def test_nothing_to_do_leaves_pixels_identical(
    ctx: TaskContext, operations: dict[str, Any]
) -> None:
    source = gradient()
    original = store(ctx.files, "photo.png", source, "PNG")
    first = await run(ctx, "photo.png", **operations)
    second = await run(ctx, "photo.png", **operations)
    assert first["output"] == "photo.processed.png"
    assert second["output"] == "photo.processed-2.png"
    assert ctx.files.read_bytes(first["output"]) == original
    assert pixels(load(ctx.files, first["output"])) == pixels(source)
    assert {key: first[key] for key in ("width", "height", "format")} == {
        "width": 64,
        "height": 48,
        "format": "PNG",
    }
    assert ctx.files.read_bytes("photo.png") == original, "the input is never touched"


async def test_jpeg_in_jpeg_out(ctx: TaskContext) -> None:
    store(ctx.files, "photo.jpeg", gradient(), "JPEG", quality=90)
    result = await run(ctx, "photo.jpeg", blur=1, contrast=20)
    assert result["output"] == "photo.processed.jpeg"
    assert result["format"] == "JPEG"
    assert load(ctx.files, result["output"]).format == "JPEG"


async def test_misnamed_image_gets_the_extension_of_its_format(ctx: TaskContext) -> None:
    store(ctx.files, "actually-jpeg.png", gradient(), "JPEG")
    result = await run(ctx, "actually-jpeg.png", invert=True)
    assert result["output"] == "actually-jpeg.processed.jpg"
    assert load(ctx.files, result["output"]).format == "JPEG"


async def test_png_alpha_is_kept(ctx: TaskContext) -> None:
    source = Image.new("RGBA", (16, 16))
    source.putdata(
        [(x * 16, y * 16, 100, (x * 16 + y) % 256) for y in range(16) for x in range(16)]
    )
    store(ctx.files, "alpha.png", source, "PNG")
    result = await run(ctx, "alpha.png", invert=True)
    output = load(ctx.files, result["output"])
    assert output.mode == "RGBA"
    for before, after in zip(pixels(source), pixels(output), strict=True):
        assert after[3] == before[3]
        assert after[:3] == tuple(255 - v for v in before[:3])


async def test_grey_with_alpha_and_blur_keeps_alpha(ctx: TaskContext) -> None:
    source = Image.new("LA", (20, 20), (200, 0))
    source.paste((10, 255), (5, 5, 15, 15))
    store(ctx.files, "la.png", source, "PNG")
    output = load(ctx.files, (await run(ctx, "la.png", blur=1, grayscale=True))["output"])
    assert output.mode == "LA"
    assert pixels(output.getchannel("A")) == pixels(source.getchannel("A"))


async def test_gif_stays_gif(ctx: TaskContext) -> None:
    store(ctx.files, "anim.gif", gradient().convert("P"), "GIF")
    result = await run(ctx, "anim.gif", grayscale=True)
    assert result["format"] == "GIF"
    assert load(ctx.files, result["output"]).format == "GIF"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some text, not an image\n", "not an image"),
        (b"", "not an image"),
        (png_claiming(100_000, 100_000), "too large|decompression bomb"),
        (png_claiming(10_000, 7_000), "too large|decompression bomb"),
    ],
)
async def test_non_images_and_bombs_are_permanent(
    ctx: TaskContext, content: bytes, message: str
) -> None:
    ctx.files.write_atomic("bad.png", content)
    with pytest.raises(PermanentError, match=message):
        await run(ctx, "bad.png", invert=True)
    assert [info.name for info in ctx.files.list()] == ["bad.png"]
    assert temporaries(ctx.files) == []


async def test_truncated_png_is_permanent(ctx: TaskContext) -> None:
    noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    ctx.files.write_atomic("cut.png", buffer.getvalue()[: len(buffer.getvalue()) // 2])
    for operations in ({"invert": True}, {}):
        with pytest.raises(PermanentError, match="not a valid image"):
            await run(ctx, "cut.png", **operations)
    assert [info.name for info in ctx.files.list()] == ["cut.png"]


async def test_unsupported_format_is_permanent(ctx: TaskContext) -> None:
    store(ctx.files, "old.ppm", gradient(), "PPM")
    with pytest.raises(PermanentError, match="supported format"):
        await run(ctx, "old.ppm", invert=True)


async def test_missing_source_is_permanent(ctx: TaskContext) -> None:
    with pytest.raises(PermanentError, match="not found"):
        await run(ctx, "nowhere.png", invert=True)


@pytest.mark.parametrize(
    "path", ["../outside.png", "/etc/passwd", "a/b.png", ".hidden.png", "x\x00.png"]
)
async def test_hostile_paths_are_refused(ctx: TaskContext, tmp_path: Path, path: str) -> None:
    with pytest.raises(ValidationError):
        ProcessImagePayload(path=path)
    store(UserFiles(tmp_path / "files", 2), "outside.png", gradient(), "PNG")
    payload = ProcessImagePayload.model_construct(path=path, invert=True)
    with pytest.raises(PermanentError, match="cannot be used"):
        await process_image(payload, ctx)


async def test_symlink_out_of_the_area_is_refused(ctx: TaskContext, tmp_path: Path) -> None:
    gradient().save(tmp_path / "elsewhere.png")
    (ctx.files.ensure_root() / "link.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(PermanentError, match="symbolic link"):
        await run(ctx, "link.png", invert=True)


def test_payload_validation() -> None:
    for fields in (
        {"path": "a.png", "blur": 0},
        {"path": "a.png", "gamma": -1},
        {"path": "a.png", "contrast": 101},
        {"path": "a.png", "saturation": -100.5},
        {"path": "a.png", "grayscale": "yes"},
        {"path": "a.png", "rotate": 90},
    ):
        with pytest.raises(ValidationError):
            ProcessImagePayload.model_validate(fields)


async def test_a_retry_reuses_an_output_already_written(tmp_path: Path) -> None:
    settings = handler_settings(tmp_path / "files")
    progress = ProgressRecorder()
    first = handler_context(settings, task_type="process_image", progress=progress)
    store(first.files, "p.png", gradient(), "PNG")
    result = await run(first, "p.png", invert=True)
    assert progress.saved == [result]

    retry = handler_context(
        settings, task_type="process_image", attempt=2, previous_result=progress.last
    )
    assert await run(retry, "p.png", invert=True) == result
    assert [info.name for info in retry.files.list()] == ["p.png", "p.processed.png"]
    changed = await run(retry, "p.png", invert=True, blur=1)
    assert changed["output"] == "p.processed-2.png"


async def test_work_runs_off_the_event_loop(ctx: TaskContext) -> None:
    store(ctx.files, "big.png", gradient(1500, 1500), "PNG")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        await run(ctx, "big.png", blur=8, sharpen=2)
    finally:
        ticker.cancel()
    assert ticks >= 3, "the loop kept running while the image was processed"


async def test_bomb_is_refused_even_when_pillow_only_warns(ctx: TaskContext) -> None:
    """In production Pillow's DecompressionBombWarning is just a warning; the
    handler's own pixel limit must refuse the image anyway."""
    ctx.files.write_atomic("bomb.png", png_claiming(10_000, 7_000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(PermanentError, match="decompression bomb"):
            await run(ctx, "bomb.png", invert=True)


async def test_sixteen_bit_grey_is_scaled_not_clipped(ctx: TaskContext) -> None:
    deep = Image.new("I;16", (3, 1))
    for x, value in enumerate((0, 32768, 65535)):
        deep.putpixel((x, 0), value)
    store(ctx.files, "deep.png", deep, "PNG")
    output = load(ctx.files, (await run(ctx, "deep.png", invert=True))["output"])
    assert [grey(output, x, 0) for x in range(3)] == [255, 127, 0]
