"""process_image against images built to exhaust memory, measured, not
assumed (see ``tests.images`` for how peak RSS is read)."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from taskflow.errors import PermanentError
from taskflow.files import TEMPORARY_PREFIX, UserFiles
from taskflow.handlers import TaskContext
from taskflow.handlers.process_image import (
    IMAGE_MEMORY,
    MAX_TASK_IMAGE_BYTES,
    PROCESS_IMAGE_BYTES,
    estimate_job_bytes,
    process_image,
)
from taskflow.models import ProcessImagePayload
from tests.images import (
    MIB,
    encoded,
    noise,
    peak_rss_growth,
    png_from_rows,
    poll,
    start_peak_rss,
)
from tests.servers import handler_context, handler_settings

SIDE = 8000
FLAT_RGBA = (10, 20, 30, 200)
# What Pillow holds for the flat image once decoded: 4 bytes a pixel, 244 MiB.
DECODED_BYTES = SIDE * SIDE * 4
# Room for strips, codec state and the interpreter's own allocations.
SLACK_BYTES = 64 * MIB


@pytest.fixture
def ctx(tmp_path: Path) -> TaskContext:
    return handler_context(handler_settings(tmp_path / "files"), task_type="process_image")


@pytest.fixture(scope="module")
def flat_png() -> bytes:
    """8000x8000 RGBA of one colour: a few hundred KB on disk, 244 MiB decoded."""
    row = b"\x00" + bytes(FLAT_RGBA) * SIDE
    data = png_from_rows(SIDE, SIDE, lambda: (row for _ in range(SIDE)))
    assert len(data) < 1 * MIB
    return data


async def run(ctx: TaskContext, path: str, **operations: Any) -> dict[str, Any]:
    return await process_image(ProcessImagePayload(path=path, **operations), ctx)


def temporaries(files: UserFiles) -> list[str]:
    return [name for name in os.listdir(files.root) if name.startswith(TEMPORARY_PREFIX)]


def luminance(rgb: tuple[int, int, int]) -> int:
    value = Image.new("RGB", (1, 1), rgb).convert("L").getpixel((0, 0))
    assert isinstance(value, int)
    return value


# ----- one huge image ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operations", "mode", "extrema"),
    [
        ({"blur": 2}, "RGBA", tuple((v, v) for v in FLAT_RGBA)),
        (
            {"grayscale": True},
            "LA",
            ((luminance(FLAT_RGBA[:3]),) * 2, (FLAT_RGBA[3],) * 2),
        ),
    ],
)
async def test_a_flat_8000px_png_is_processed_in_bounded_memory(
    ctx: TaskContext,
    flat_png: bytes,
    operations: dict[str, Any],
    mode: str,
    extrema: tuple[tuple[int, int], ...],
) -> None:
    """The bound: the decoded RGBA image, at most half as much again for a
    second buffer (grey plus a detached alpha: 1 + 1 bytes a pixel), and
    SLACK_BYTES. The pipeline used to hold four to five full-size buffers."""
    ctx.files.write_atomic("flat.png", flat_png)
    estimate = estimate_job_bytes(ctx.files, ProcessImagePayload(path="flat.png", **operations))
    baseline = start_peak_rss()
    result = await run(ctx, "flat.png", **operations)
    growth = peak_rss_growth(baseline)

    bound = DECODED_BYTES * 3 // 2 + SLACK_BYTES
    assert growth <= bound, f"peak RSS grew by {growth // MIB} MiB, bound {bound // MIB} MiB"
    assert growth <= estimate <= MAX_TASK_IMAGE_BYTES, (growth // MIB, estimate // MIB)
    assert IMAGE_MEMORY.reserved_bytes == 0
    assert (result["width"], result["height"]) == (SIDE, SIDE)
    with Image.open(io.BytesIO(ctx.files.read_bytes(result["output"]))) as output:
        assert output.mode == mode
        assert output.getextrema() == extrema


async def test_a_job_over_the_per_task_limit_is_refused_before_decoding(
    ctx: TaskContext, flat_png: bytes
) -> None:
    """A blur this wide cannot run in strips: it needs the image three times
    over (result and Pillow's transposed copy), well over the 512 MiB limit."""
    ctx.files.write_atomic("flat.png", flat_png)
    baseline = start_peak_rss()
    with pytest.raises(PermanentError, match=r"per-task image memory limit of 512 MiB"):
        await run(ctx, "flat.png", blur=1000)
    assert peak_rss_growth(baseline) < 32 * MIB, "nothing was decoded"
    assert [info.name for info in ctx.files.list()] == ["flat.png"]
    assert temporaries(ctx.files) == []
    assert IMAGE_MEMORY.reserved_bytes == 0


async def test_a_copy_of_a_huge_png_is_verified_without_decoding_it(
    ctx: TaskContext, flat_png: bytes
) -> None:
    ctx.files.write_atomic("flat.png", flat_png)
    baseline = start_peak_rss()
    result = await run(ctx, "flat.png", contrast=0)
    growth = peak_rss_growth(baseline)
    assert growth < 32 * MIB, f"peak RSS grew by {growth // MIB} MiB for a copy"
    assert ctx.files.read_bytes(result["output"]) == flat_png


# ----- many large images at once -------------------------------------------------------


async def test_concurrent_large_jobs_share_the_process_budget(
    ctx: TaskContext, flat_png: bytes
) -> None:
    """Four jobs that each fit alone, not all together: they queue for
    memory, peak RSS stays within the process budget, and all finish."""
    ctx.files.write_atomic("flat.png", flat_png)
    jobs = 4
    estimate = estimate_job_bytes(ctx.files, ProcessImagePayload(path="flat.png", blur=2))
    assert estimate * jobs > PROCESS_IMAGE_BYTES >= estimate * 2
    peak_reserved = 0
    most_waiting = 0

    async def watch() -> None:
        nonlocal peak_reserved, most_waiting
        while True:
            peak_reserved = max(peak_reserved, IMAGE_MEMORY.reserved_bytes)
            most_waiting = max(most_waiting, IMAGE_MEMORY.waiting)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    baseline = start_peak_rss()
    try:
        async with asyncio.timeout(150):
            results = await asyncio.gather(*(run(ctx, "flat.png", blur=2) for _ in range(jobs)))
    finally:
        watcher.cancel()
    growth = peak_rss_growth(baseline)

    assert growth <= PROCESS_IMAGE_BYTES + SLACK_BYTES, f"peak RSS grew by {growth // MIB} MiB"
    assert peak_reserved <= PROCESS_IMAGE_BYTES
    assert most_waiting >= 1, "some job had to wait for memory"
    assert IMAGE_MEMORY.reserved_bytes == 0
    outputs = sorted(result["output"] for result in results)
    assert len(set(outputs)) == jobs
    first = ctx.files.read_bytes(outputs[0])
    assert all(ctx.files.read_bytes(name) == first for name in outputs[1:])
    with Image.open(io.BytesIO(first)) as output:
        assert output.size == (SIDE, SIDE)
        assert output.getextrema() == tuple((v, v) for v in FLAT_RGBA)


async def test_cancelled_jobs_release_their_reservations(ctx: TaskContext, flat_png: bytes) -> None:
    """Three jobs running and one waiting are cancelled; their threads give up
    at the next strip and release everything, and a job too large to fit
    beside what the three had reserved runs at once."""
    ctx.files.write_atomic("flat.png", flat_png)
    estimate = estimate_job_bytes(ctx.files, ProcessImagePayload(path="flat.png", blur=2))
    tasks = [asyncio.create_task(run(ctx, "flat.png", blur=2)) for _ in range(4)]
    await poll(lambda: IMAGE_MEMORY.waiting == 1 and IMAGE_MEMORY.reserved_bytes == 3 * estimate)
    for task in tasks:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    assert IMAGE_MEMORY.waiting == 0
    await poll(lambda: IMAGE_MEMORY.reserved_bytes == 0)

    following = ProcessImagePayload(path="flat.png", grayscale=True)
    assert estimate_job_bytes(ctx.files, following) > PROCESS_IMAGE_BYTES - 3 * estimate
    async with asyncio.timeout(60):
        result = await process_image(following, ctx)
    assert [info.name for info in ctx.files.list()] == ["flat.png", result["output"]]
    assert temporaries(ctx.files) == []


# ----- estimates against measurements --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "build", "operations"),
    [
        (
            "cmyk.jpg",
            lambda: encoded(noise("CMYK", 2500, 2500), "JPEG", progressive=True),
            {"invert": True},
        ),
        ("rgba.webp", lambda: encoded(noise("RGBA", 2000, 2000), "WEBP"), {"invert": True}),
        ("p.gif", lambda: encoded(noise("P", 2000, 2000), "GIF"), {"blur": 2}),
        (
            "rgb.tif",
            lambda: encoded(noise("RGB", 2500, 2500), "TIFF", compression="tiff_deflate"),
            {"grayscale": True},
        ),
        (
            "p.png",
            lambda: encoded(noise("P", 2000, 2000), "PNG", transparency=0),
            {"saturation": 50, "sharpen": 1},
        ),
        ("rgba.png", lambda: encoded(noise("RGBA", 2500, 2500), "PNG"), {"grayscale": True}),
    ],
)
async def test_every_format_stays_within_its_estimate(
    ctx: TaskContext, name: str, build: Callable[[], bytes], operations: dict[str, Any]
) -> None:
    ctx.files.write_atomic(name, build())
    estimate = estimate_job_bytes(ctx.files, ProcessImagePayload(path=name, **operations))
    baseline = start_peak_rss()
    await run(ctx, name, **operations)
    growth = peak_rss_growth(baseline)
    assert growth <= estimate, f"{name}: grew by {growth // MIB} MiB, estimated {estimate // MIB}"
