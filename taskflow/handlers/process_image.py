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

Colour operations work on the RGB (or grey) channels; an alpha channel is
kept as it was. When an operation applies, only the first frame of an
animated or multi-page image is used, and 16-bit, CMYK and other modes are
converted to 8-bit RGB or grey.

The output is a new file next to the input, ``<stem>.processed<ext>`` (then
``-2``, ``-3``, ...), in the input's format, written atomically. ``result`` is
``{"output", "width", "height", "format", "source", "operations"}``; it is
saved as progress right after the file lands, so a retry of an attempt that
died before finishing returns it instead of writing a second copy. Accepted
inputs: PNG, JPEG, GIF, WebP, BMP, TIFF. Anything else, a truncated file or an
image over ``MAX_IMAGE_PIXELS`` (a decompression bomb) fails permanently.
The work runs in a thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import threading
from typing import IO, Any

from PIL import Image, ImageEnhance, ImageFilter, ImageOps, UnidentifiedImageError

from taskflow.errors import FileNotFound, PermanentError, ValidationFailed
from taskflow.files import UserFiles, split_name
from taskflow.handlers import TaskContext, TaskType
from taskflow.models import ProcessImagePayload

# 64 Mpx is a 9000x7000 photo; its RGBA buffer alone is 256 MiB. Pillow warns
# above this and refuses above twice this; both are errors here.
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

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


def _split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The colour part (mode RGB or L) and the alpha channel, if any."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or ("transparency" in image.info)
    if has_alpha:
        grey = image.mode in ("LA", "La") or (image.mode == "L")
        with_alpha = image.convert("LA" if grey else "RGBA")
        return with_alpha.convert("L" if grey else "RGB"), with_alpha.getchannel("A")
    if image.mode.startswith("I"):
        # 16-bit grey (PNG, TIFF): scale to 8 bits; a plain convert would clip
        # everything above 255 to white.
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L"), None
    if image.mode in ("L", "1", "F"):
        return image.convert("L"), None
    return image.convert("RGB"), None


def _colour_space(mode: str) -> str:
    if mode in ("RGB", "RGBA", "RGBa", "P", "PA"):
        return "rgb"
    if mode in ("L", "LA", "La", "1") or mode.startswith(("I", "F")):
        return "grey"
    return mode


def _gamma_table(gamma: float, bands: int) -> list[int]:
    exponent = 1.0 / gamma
    table = [round(255 * (value / 255) ** exponent) for value in range(256)]
    return table * bands


def apply_operations(image: Image.Image, payload: ProcessImagePayload) -> Image.Image:
    """The documented pipeline, on an already loaded image."""
    base, alpha = _split_alpha(image)
    if payload.grayscale:
        base = base.convert("L")
    if payload.invert:
        base = ImageOps.invert(base)
    if payload.blur:
        base = base.filter(ImageFilter.GaussianBlur(radius=payload.blur))
    if payload.sharpen:
        base = base.filter(
            ImageFilter.UnsharpMask(radius=2, percent=round(100 * payload.sharpen), threshold=0)
        )
    if payload.gamma is not None and payload.gamma != 1:
        base = base.point(_gamma_table(payload.gamma, len(base.getbands())))
    if payload.contrast:
        base = ImageEnhance.Contrast(base).enhance(1 + payload.contrast / 100)
    if payload.brightness:
        base = ImageEnhance.Brightness(base).enhance(1 + payload.brightness / 100)
    if payload.saturation:
        base = ImageEnhance.Color(base).enhance(1 + payload.saturation / 100)
    if alpha is not None:
        base.putalpha(alpha)
    return base


def _extension_for(source_name: str, image_format: str) -> str:
    """Keep the input's extension when it fits the format, e.g. ``.jpeg``."""
    _, suffix = split_name(source_name)
    if suffix and Image.registered_extensions().get(suffix.lower()) == image_format:
        return suffix
    return _PRIMARY_EXTENSION.get(image_format, "." + image_format.lower())


def _open_checked(handle: IO[bytes], name: str) -> Image.Image:
    image = Image.open(handle, formats=ACCEPTED_FORMATS)
    try:
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise PermanentError(
                f"{name!r} is {image.width}x{image.height} pixels, over the limit of "
                f"{MAX_IMAGE_PIXELS} (a decompression bomb?)"
            )
        image.load()
    except BaseException:
        image.close()
        raise
    return image


def _render(
    files: UserFiles, payload: ProcessImagePayload, abandoned: threading.Event
) -> dict[str, Any]:
    name = payload.path
    try:
        handle = files.open_read(name)
    except FileNotFound:
        raise PermanentError(f"image {name!r} not found") from None
    except ValidationFailed as exc:
        raise PermanentError(f"image {name!r} cannot be used: {exc.message}") from None
    with handle:
        try:
            image = _open_checked(handle, name)
        except PermanentError:
            raise
        except UnidentifiedImageError:
            raise PermanentError(
                f"{name!r} is not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PermanentError(f"{name!r} is too large to decode safely: {exc}") from None
        except _DECODE_ERRORS as exc:
            raise PermanentError(f"{name!r} is not a valid image: {exc}") from None
        with image:
            source_format = image.format or "PNG"
            output_format = _OUTPUT_FORMAT.get(source_format, source_format)
            stem, _ = split_name(name)
            output_name = files.unique_name(
                f"{stem}.processed", _extension_for(name, output_format)
            )
            width, height = image.size
            with files.atomic_writer(output_name, on_conflict="rename") as writer:
                if _is_identity(payload) and output_format == source_format:
                    handle.seek(0)
                    shutil.copyfileobj(handle, writer.file)
                else:
                    try:
                        result = apply_operations(image, payload)
                    except _DECODE_ERRORS as exc:
                        raise PermanentError(f"cannot process {name!r}: {exc}") from None
                    options = dict(_SAVE_OPTIONS.get(output_format, {}))
                    if output_format in _KEEPS_METADATA:
                        if image.info.get("exif"):
                            options["exif"] = image.info["exif"]
                        # A colour profile only fits pixels of its own colour
                        # space: not after CMYK -> RGB or RGB -> grey.
                        same_space = _colour_space(image.mode) == _colour_space(result.mode)
                        if image.info.get("icc_profile") and same_space:
                            options["icc_profile"] = image.info["icc_profile"]
                    try:
                        result.save(writer.file, format=output_format, **options)
                    except (KeyError, ValueError) as exc:
                        raise PermanentError(
                            f"cannot write {output_format} images: {exc}"
                        ) from None
                if abandoned.is_set():
                    raise _Abandoned
    return {"output": writer.name, "width": width, "height": height, "format": output_format}


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
    try:
        result = await asyncio.to_thread(_render, ctx.files, payload, abandoned)
    except asyncio.CancelledError:
        # The thread cannot be interrupted; make it drop its output instead.
        abandoned.set()
        raise
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
