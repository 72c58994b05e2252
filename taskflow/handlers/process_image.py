"""process_image: apply simple adjustments to one of the owner's images.

Operations run in this fixed order, each only when its field is given:

1. ``grayscale`` (true): convert to 8-bit luminance (ITU-R 601-2), so R = G = B.
2. ``invert`` (true): every channel value ``v`` becomes ``255 - v``.
3. ``blur`` (> 0): Gaussian blur; the value is the radius in pixels.
4. ``sharpen`` (> 0): unsharp mask with radius 2 px and threshold 0; the
   value is its strength, ``percent = 100 * sharpen`` (1.0 is a standard
   sharpening, 0.5 gentle, 3 strong).
5. ``gamma`` (> 0): ``out = 255 * (v / 255) ** (1 / gamma)``. gamma > 1
   brightens the mid-tones, gamma < 1 darkens them; black and white stay.
6. ``contrast``, 7. ``brightness``, 8. ``saturation``: percentages in
   [-100, 100]; 0 changes nothing, -100 gives flat grey / black / greyscale,
   +100 doubles (Pillow's ``ImageEnhance`` with factor ``1 + p / 100``).

Omitted fields, ``false``, ``gamma = 1`` and 0 % change nothing; when nothing
is left to do, the output is a byte-for-byte copy of the (verified) input.
Verified means the whole image decodes: a PNG's chunks up to the end of its
image data match their CRCs and the data inflates, a piece at a time, to every
row the header promises, with valid row filters; a JPEG is decoded at 1/8
scale, which still reads every coefficient; other formats are decoded in full.
A PNG or JPEG copy therefore never holds a full-size pixel buffer. A PNG is
checked the same way before it is processed, so one whose data stops early is
refused rather than padded with black rows, as Pillow alone would.

Colour operations work on the RGB (or grey) channels; an alpha channel is
kept as it was. When an operation applies, only the first frame of an
animated or multi-page image is used, and 16-bit, CMYK and other modes are
converted to 8-bit RGB or grey.

The output is a new file next to the input, ``<stem>.processed<ext>`` (then
``-2``, ``-3``, ...), in the input's format, written atomically; an output
that would take the owner's file area past its quota (``user_files_max_bytes``)
is not kept, and the task fails permanently, naming the quota. ``result`` is
``{"output", "width", "height", "format", "source", "operations"}``; it is
saved as progress right after the file lands, so a retry of an attempt that
died before finishing returns it instead of writing a second copy. Accepted
inputs: PNG, JPEG, GIF, WebP, BMP, TIFF. Anything else, a truncated file, an
image over ``MAX_IMAGE_PIXELS`` (a decompression bomb) or a TIFF whose first
directory lists more values than a real image needs (``image_formats``) fails
permanently.

Memory is bounded, whatever the file. Before any pixel is decoded, the job's
peak is estimated from the header: the decoded image, what its decoder holds
besides (``image_formats``), the pipeline's full-size images and strips
(``image_pipeline``) and what the encoder holds. A job over
``MAX_TASK_IMAGE_BYTES`` fails permanently, naming the limit. Otherwise it
reserves its estimate from ``IMAGE_MEMORY``, shared by every image job in the
process (``PROCESS_IMAGE_BYTES``), and waits, on the event loop and within its
task timeout, while the others hold too much; it releases the reservation when
its pixels are gone, even after its task was cancelled. The work runs in a
thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import IO, Any

from PIL import Image, UnidentifiedImageError

from taskflow.errors import (
    FileNotFound,
    PermanentError,
    QuotaExceeded,
    TransientError,
    ValidationFailed,
)
from taskflow.files import UserFiles, split_name
from taskflow.handlers import TaskContext, TaskType
from taskflow.handlers.image_formats import (
    check_tiff_directory,
    decoder_extra_bytes,
    encoder_extra_bytes,
    verify_png,
)
from taskflow.handlers.image_memory import MemoryBudget, run_holding
from taskflow.handlers.image_pipeline import Check, Plan, pixel_bytes, plan_operations
from taskflow.models import ProcessImagePayload

MIB = 1024 * 1024
# One job's peak: a 64 Mpx colour photo decoded (RGB is stored at 4 bytes a
# pixel) plus one full-size working image.
MAX_TASK_IMAGE_BYTES = 512 * MIB
# Every image job of one worker process together: with the default three task
# slots, two large jobs run at once and a third waits its turn.
PROCESS_IMAGE_BYTES = 1024 * MIB
# The pixel cap that follows: a colour image and one working copy, 8 bytes a
# pixel. Pillow warns above this and refuses above twice this; both are
# errors here.
MAX_IMAGE_PIXELS = MAX_TASK_IMAGE_BYTES // 8
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

IMAGE_MEMORY = MemoryBudget(PROCESS_IMAGE_BYTES)

# Held by any job: interpreter objects, codec state, the file itself (WebP
# reads it whole, libtiff maps it) and a few rows of up to 8 bytes a pixel.
_BASE_BYTES = 16 * MIB
_ROW_BUFFER_BYTES_PER_COLUMN = 32 * 8
# At 1/8 scale a JPEG decodes to an eighth of each side.
_JPEG_SCALE = 8

# Decoders only for common formats: Pillow can also open EPS (which runs
# Ghostscript) and dozens of rarely audited formats a user could upload.
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
# The JPEG decoder reports a phone's multi-picture JPEG as MPO; its first
# picture is written back as a plain JPEG.
_OUTPUT_FORMAT = {"MPO": "JPEG"}
_PRIMARY_EXTENSION = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
_SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "JPEG": {"quality": 92},
    "WEBP": {"quality": 92},
    "TIFF": {"compression": "tiff_deflate"},
}
_KEEPS_METADATA = frozenset({"PNG", "JPEG", "WEBP", "TIFF"})
_DECODE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
    OSError,  # "image file is truncated", "broken data stream", ...
    SyntaxError,  # what several Pillow plugins raise for corrupt headers
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
)


class _Abandoned(Exception):
    """The awaiting task was cancelled; the thread's work must not land."""


def _is_identity(payload: ProcessImagePayload) -> bool:
    return not (
        payload.grayscale
        or payload.invert
        or payload.blur
        or payload.sharpen
        or (payload.gamma is not None and payload.gamma != 1)
        or payload.contrast
        or payload.brightness
        or payload.saturation
    )


def _colour_space(mode: str) -> str:
    if mode in ("RGB", "RGBA", "RGBa", "P", "PA"):
        return "rgb"
    if mode in ("L", "LA", "La", "1") or mode.startswith(("I", "F")):
        return "grey"
    return mode


def _extension_for(source_name: str, image_format: str) -> str:
    """Keep the input's extension when it fits the format, e.g. ``.jpeg``."""
    _, suffix = split_name(source_name)
    if suffix and Image.registered_extensions().get(suffix.lower()) == image_format:
        return suffix
    return _PRIMARY_EXTENSION.get(image_format, "." + image_format.lower())


def _open_source(files: UserFiles, name: str) -> IO[bytes]:
    try:
        return files.open_read(name)
    except FileNotFound:
        raise PermanentError(f"image {name!r} not found") from None
    except ValidationFailed as exc:
        raise PermanentError(f"image {name!r} cannot be used: {exc.message}") from None


def _open_image(handle: IO[bytes], name: str) -> Image.Image:
    """The image with its header read and checked; no pixel is decoded."""
    try:
        check_tiff_directory(handle)
        handle.seek(0)
        image = Image.open(handle, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        supported = ", ".join(ACCEPTED_FORMATS)
        raise PermanentError(
            f"{name!r} is not an image in a supported format ({supported})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PermanentError(f"{name!r} is too large to decode safely: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise PermanentError(f"{name!r} is not a valid image: {exc}") from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise PermanentError(
            f"{name!r} is {image.width}x{image.height} pixels, over the limit of "
            f"{MAX_IMAGE_PIXELS} (a decompression bomb?)"
        )
    return image


@dataclass(frozen=True)
class _Job:
    output_format: str
    plan: Plan | None  # None: the output is a verified copy of the input
    estimate_bytes: int


def _examine(
    handle: IO[bytes], image: Image.Image, name: str, payload: ProcessImagePayload
) -> _Job:
    """What the job will do and the most memory it will hold at once; refuses
    a job that can never fit."""
    source_format = image.format or "PNG"
    output_format = _OUTPUT_FORMAT.get(source_format, source_format)
    width, height = image.size
    pixels = width * height
    base = _BASE_BYTES + os.fstat(handle.fileno()).st_size + width * _ROW_BUFFER_BYTES_PER_COLUMN
    decoder_extra = decoder_extra_bytes(handle, image)
    decoded = pixels * pixel_bytes(image.mode) + decoder_extra
    plan: Plan | None = None
    if _is_identity(payload) and output_format == source_format:
        peak = decoded
        if source_format == "PNG":
            peak = 0
        elif source_format == "JPEG":
            scaled = -(-width // _JPEG_SCALE) * -(-height // _JPEG_SCALE)
            peak = scaled * pixel_bytes(image.mode) + decoder_extra
    else:
        plan = plan_operations(width, height, image.mode, "transparency" in image.info, payload)
        encoding = encoder_extra_bytes(output_format, plan.mode, pixels)
        peak = max(decoded, plan.peak_bytes(), plan.image_bytes(plan.mode) + encoding)
    job = _Job(output_format, plan, base + peak)
    if job.estimate_bytes > MAX_TASK_IMAGE_BYTES:
        raise PermanentError(
            f"{name!r} ({width}x{height} {image.mode}) needs about "
            f"{-(-job.estimate_bytes // MIB)} MiB to process with these operations, over the "
            f"per-task image memory limit of {MAX_TASK_IMAGE_BYTES // MIB} MiB"
        )
    return job


def estimate_job_bytes(files: UserFiles, payload: ProcessImagePayload) -> int:
    """The most memory the job will hold at once, from the image header alone;
    raises PermanentError for a job that can never run."""
    with (
        _open_source(files, payload.path) as handle,
        _open_image(handle, payload.path) as image,
    ):
        return _examine(handle, image, payload.path, payload).estimate_bytes


def _verify(handle: IO[bytes], image: Image.Image) -> None:
    if image.format == "PNG":
        verify_png(handle)
        return
    if image.format == "JPEG":
        image.draft(image.mode, (1, 1))  # the smallest scale libjpeg offers
    image.load()


def _render(
    files: UserFiles, payload: ProcessImagePayload, reserved_bytes: int, check: Check
) -> dict[str, Any]:
    name = payload.path
    with _open_source(files, name) as handle, _open_image(handle, name) as image:
        job = _examine(handle, image, name, payload)
        if job.estimate_bytes > reserved_bytes:
            raise TransientError(f"{name!r} was replaced by a larger image while it waited")
        source_mode, info = image.mode, image.info
        width, height = image.size
        stem, _ = split_name(name)
        output_name = files.unique_name(
            f"{stem}.processed", _extension_for(name, job.output_format)
        )
        with files.atomic_writer(output_name, on_conflict="rename") as writer:
            if job.plan is None:
                try:
                    _verify(handle, image)
                except _DECODE_ERRORS as exc:
                    raise PermanentError(f"{name!r} is not a valid image: {exc}") from None
                handle.seek(0)
                shutil.copyfileobj(handle, writer.file)
            else:
                try:
                    if image.format == "PNG":
                        verify_png(handle)
                    image.load()
                except _DECODE_ERRORS as exc:
                    raise PermanentError(f"{name!r} is not a valid image: {exc}") from None
                try:
                    result = job.plan.run(image, check)
                except _DECODE_ERRORS as exc:
                    raise PermanentError(f"cannot process {name!r}: {exc}") from None
                with result:
                    _save(result, job.output_format, source_mode, info, writer.file)
            check()
    return {"output": writer.name, "width": width, "height": height, "format": job.output_format}


def _save(
    image: Image.Image,
    image_format: str,
    source_mode: str,
    info: dict[Any, Any],
    output: IO[bytes],
) -> None:
    options = dict(_SAVE_OPTIONS.get(image_format, {}))
    if image_format in _KEEPS_METADATA:
        if info.get("exif"):
            options["exif"] = info["exif"]
        # A colour profile only fits pixels of its own colour space: not
        # after CMYK -> RGB or RGB -> grey.
        if info.get("icc_profile") and _colour_space(source_mode) == _colour_space(image.mode):
            options["icc_profile"] = info["icc_profile"]
    try:
        image.save(output, format=image_format, **options)
    except (KeyError, ValueError) as exc:
        raise PermanentError(f"cannot write {image_format} images: {exc}") from None


def _operations(payload: ProcessImagePayload) -> dict[str, Any]:
    return payload.model_dump(exclude_none=True, exclude={"path"})


def _earlier_output(ctx: TaskContext, payload: ProcessImagePayload) -> dict[str, Any] | None:
    """The result of an earlier attempt that wrote its output but did not get
    to finish, if it was for this very payload and the file is still there."""
    previous = ctx.previous_result
    if not (
        isinstance(previous, dict)
        and isinstance(previous.get("output"), str)
        and previous.get("source") == payload.path
        and previous.get("operations") == _operations(payload)
    ):
        return None
    try:
        return previous if ctx.files.exists(previous["output"]) else None
    except ValidationFailed:
        return None


async def process_image(payload: ProcessImagePayload, ctx: TaskContext) -> dict[str, Any]:
    earlier = _earlier_output(ctx, payload)
    if earlier is not None:
        return earlier
    abandoned = threading.Event()

    def check() -> None:
        if abandoned.is_set():
            raise _Abandoned

    try:
        estimate_bytes = await asyncio.to_thread(estimate_job_bytes, ctx.files, payload)
        reservation = await IMAGE_MEMORY.reserve(estimate_bytes)
        result = await run_holding(
            reservation, lambda: _render(ctx.files, payload, estimate_bytes, check)
        )
    except asyncio.CancelledError:
        # The thread cannot be interrupted; make it drop its output instead.
        abandoned.set()
        raise
    except QuotaExceeded as exc:
        # Retrying writes the same bytes into the same full area.
        raise PermanentError(exc.message) from None
    result["source"] = payload.path
    result["operations"] = _operations(payload)
    if ctx.save_progress is not None:
        await ctx.save_progress(result)
    return result


TASK_TYPE = TaskType(
    name="process_image",
    payload_model=ProcessImagePayload,
    handler=process_image,
    description="Adjust one of the owner's images; the result is a new file.",
)
