"""The process_image operations on a full-size image, in bounded memory, and
what they cost.

Pillow makes a new full-size image for every ``convert``, ``point``,
``filter`` and ``ImageEnhance`` call, and its Gaussian blur also holds a
transposed copy: done naively, the eight operations held four or five
full-size buffers at once. Here every per-pixel operation runs in horizontal
strips written back into the one working image, and blur and sharpen run in
strips that overlap by more than the blur reaches. A plan holds one full-size
image plus a few strips, two images while it changes mode, and three only for
a blur too wide to run in strips (Pillow's result and transposed copy). Each
step gives exactly Pillow's own result: look-up tables come from Pillow's own
``blend`` over the 256 byte values, and strips share no state.

A :class:`Plan` is built from the image header alone; :meth:`Plan.peak_bytes`
walks the same steps that :meth:`Plan.run` runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageEnhance, ImageFilter, ImageStat

from taskflow.models import ProcessImagePayload

# A strip is about this much pixel data at 4 bytes per pixel.
STRIP_BYTES = 4 * 1024 * 1024
# Full strips alive at once in a per-pixel step: the crop, up to three
# intermediate conversions, the result and a channel.
_STRIP_COPIES = 6
# ImageFilter.GaussianBlur: three box blurs each way; UnsharpMask blurs too.
_BLUR_PASSES = 3
SHARPEN_RADIUS = 2

Check = Callable[[], None]
StripFunction = Callable[[Image.Image], Image.Image]


def pixel_bytes(mode: str) -> int:
    """Bytes Pillow stores per pixel: RGB is padded to 4, 16-bit grey is 2."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def working_mode(mode: str, has_transparency: bool) -> str:
    """L, RGB, LA or RGBA: what the operations run on. 16-bit, CMYK, palette
    and other modes become 8-bit grey or RGB; transparency becomes alpha."""
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or has_transparency:
        return "LA" if mode in ("LA", "La", "L") else "RGBA"
    if mode.startswith("I") or mode in ("L", "1", "F"):
        return "L"
    return "RGB"


def colour_part(image: Image.Image) -> Image.Image:
    """The image without its alpha channel."""
    if image.mode == "RGBA":
        return image.convert("RGB")
    if image.mode == "LA":
        return image.convert("L")
    return image


def _with_alpha_of(result: Image.Image, source: Image.Image) -> Image.Image:
    if source.mode in ("RGBA", "LA"):
        result.putalpha(source.getchannel("A"))
    return result


def _to_working(strip: Image.Image, mode: str) -> Image.Image:
    if mode == "L" and strip.mode.startswith("I"):
        # 16-bit grey: scale to 8 bits; a plain convert would clip everything
        # above 255 to white.
        return strip.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    return strip.convert(mode)


def _blend_table(flat_value: int, factor: float) -> list[int]:
    """``Image.blend(flat, image, factor)`` for each byte value, by Pillow
    itself: what ImageEnhance does when its degenerate image is one value."""
    ramp = Image.frombytes("L", (256, 1), bytes(range(256)))
    flat = Image.new("L", (256, 1), flat_value)
    return list(Image.blend(flat, ramp, factor).tobytes())


def _gamma_table(gamma: float) -> list[int]:
    exponent = 1.0 / gamma
    return [round(255 * (value / 255) ** exponent) for value in range(256)]


def blur_reach(radius: float) -> int:
    """Rows beyond a strip that a Gaussian blur of ``radius`` reads. Pillow's
    box radius is ``l + a`` with ``l = floor((sqrt(12 s2 + 1) - 1) / 2)`` and
    ``0 <= a <= 1``, and each pass reads one pixel past it; one more row per
    pass covers float rounding."""
    sigma2 = radius * radius / _BLUR_PASSES
    whole = math.floor((math.sqrt(12 * sigma2 + 1) - 1) / 2)
    return _BLUR_PASSES * (whole + 3)


Run = Callable[[Image.Image, Check], Image.Image]


@dataclass(frozen=True)
class Step:
    name: str
    mode: str  # the working image's mode after the step
    extra_bytes: int  # held beyond what was live before the step, at its peak
    held_bytes: int  # held beside the working image after the step (a detached alpha)
    run: Run


@dataclass(frozen=True)
class Plan:
    width: int
    height: int
    source_mode: str
    steps: tuple[Step, ...]

    @property
    def mode(self) -> str:
        return self.steps[-1].mode if self.steps else self.source_mode

    def image_bytes(self, mode: str) -> int:
        return self.width * self.height * pixel_bytes(mode)

    def peak_bytes(self) -> int:
        """The most pixel memory held at once, the source image included."""
        live = peak = self.image_bytes(self.source_mode)
        for step in self.steps:
            peak = max(peak, live + step.extra_bytes)
            live = self.image_bytes(step.mode) + step.held_bytes
        return peak

    def run(self, image: Image.Image, check: Check) -> Image.Image:
        """Apply every step to ``image``, which is closed (its memory freed)
        as soon as a step replaces it."""
        for step in self.steps:
            check()
            result = step.run(image, check)
            if result is not image:
                image.close()
                image = result
        return image


class _Strips:
    """One image size, processed a strip of rows at a time."""

    def __init__(self, width: int, height: int, strip_bytes: int) -> None:
        self.width, self.height = width, height
        self.rows = max(1, strip_bytes // (4 * width))
        self.extra_bytes = _STRIP_COPIES * 4 * width * min(self.rows, height)

    def boxes(self, rows: int) -> list[tuple[int, int, int, int]]:
        return [
            (0, top, self.width, min(top + rows, self.height))
            for top in range(0, self.height, rows)
        ]

    def in_place(self, function: StripFunction) -> Run:
        def run(image: Image.Image, check: Check) -> Image.Image:
            for box in self.boxes(self.rows):
                check()
                image.paste(function(image.crop(box)), box)
            return image

        return run

    def into_new(self, mode: str, function: StripFunction) -> Run:
        def run(image: Image.Image, check: Check) -> Image.Image:
            result = Image.new(mode, image.size)
            for box in self.boxes(self.rows):
                check()
                result.paste(function(image.crop(box)), box)
            return result

        return run

    def table(self, values: Callable[[Image.Image, Check], list[int]]) -> Run:
        """A per-channel look-up table on the colour channels; alpha stays."""

        def run(image: Image.Image, check: Check) -> Image.Image:
            colour_bands = 1 if image.mode in ("L", "LA") else 3
            alpha = list(range(256)) if image.mode in ("LA", "RGBA") else []
            full = values(image, check) * colour_bands + alpha
            return self.in_place(lambda strip: strip.point(full))(image, check)

        return run

    def mean_luminance(self, image: Image.Image, check: Check) -> int:
        """ImageEnhance.Contrast's mean, from a histogram summed over strips."""
        histogram = [0] * 256
        for box in self.boxes(self.rows):
            check()
            luminance = colour_part(image.crop(box)).convert("L")
            histogram = [a + b for a, b in zip(histogram, luminance.histogram(), strict=True)]
        return int(ImageStat.Stat(histogram).mean[0] + 0.5)

    def filter_cost(self, mode: str, margin: int) -> tuple[bool, int]:
        """Whether to filter in strips, and the bytes it holds. In strips: the
        strip and its margins three times (source, result, Pillow's transposed
        copy), the rows kept, their alpha and the margin carried to the next
        strip. Whole: the result and the transposed copy."""
        rows = max(margin, self.rows)
        in_strips = (5 * rows + 8 * margin) * self.width * pixel_bytes(mode)
        whole = 2 * self.width * self.height * pixel_bytes(mode)
        return in_strips < whole, min(in_strips, whole)

    def filter(self, mode: str, image_filter: ImageFilter.Filter, margin: int) -> Run:
        in_strips, _ = self.filter_cost(mode, margin)
        rows = max(margin, self.rows)  # so the next strip's margin lies within this one

        def run(image: Image.Image, check: Check) -> Image.Image:
            if not in_strips:
                return _with_alpha_of(image.filter(image_filter), image)
            carry: Image.Image | None = None  # the original rows above the strip
            for left, top, right, bottom in self.boxes(rows):
                check()
                above, below = max(0, top - margin), min(self.height, bottom + margin)
                source = image.crop((left, above, right, below))
                if carry is not None:
                    source.paste(carry, (0, 0))
                kept = (left, top - above, right, bottom - above)
                result = _with_alpha_of(source.filter(image_filter).crop(kept), source.crop(kept))
                carry = source.crop((left, bottom - margin - above, right, bottom - above))
                image.paste(result, (left, top))
            return image

        return run


class _Builder:
    """Steps in order, tracking the working mode and any detached alpha."""

    def __init__(self, width: int, height: int, mode: str, strips: _Strips) -> None:
        self.pixels = width * height
        self.strips = strips
        self.mode = mode
        self.held_bytes = 0
        self.steps: list[Step] = []

    @property
    def grey(self) -> bool:
        return self.mode in ("L", "LA")

    def add(self, name: str, run: Run, extra_bytes: int) -> None:
        self.steps.append(Step(name, self.mode, extra_bytes, self.held_bytes, run))

    def add_in_place(self, name: str, run: Run) -> None:
        self.add(name, run, self.strips.extra_bytes)

    def add_new_image(self, name: str, mode: str, run: Run, *, held_bytes: int = 0) -> None:
        self.mode, self.held_bytes = mode, held_bytes
        self.add(name, run, self.pixels * pixel_bytes(mode) + held_bytes + self.strips.extra_bytes)


def plan_operations(
    width: int,
    height: int,
    mode: str,
    has_transparency: bool,
    payload: ProcessImagePayload,
    *,
    strip_bytes: int = STRIP_BYTES,
) -> Plan:
    """The steps the documented operations take on an image of this header."""
    strips = _Strips(width, height, strip_bytes)
    plan = _Builder(width, height, mode, strips)
    target = working_mode(mode, has_transparency)
    if target != mode:
        plan.add_new_image(
            "normalise", target, strips.into_new(target, lambda strip: _to_working(strip, target))
        )
    alpha: list[Image.Image] = []  # detached by grayscale, put back at the end
    if payload.grayscale and not plan.grey:
        if plan.mode == "RGBA":
            # L plus a detached alpha is 2 bytes a pixel where LA is 4.
            def grey_detached(image: Image.Image, check: Check) -> Image.Image:
                alpha.append(image.getchannel("A"))
                return strips.into_new("L", lambda strip: colour_part(strip).convert("L"))(
                    image, check
                )

            plan.add_new_image("grayscale", "L", grey_detached, held_bytes=plan.pixels)
        else:
            plan.add_new_image(
                "grayscale", "L", strips.into_new("L", lambda strip: strip.convert("L"))
            )
    if payload.invert:
        plan.add_in_place("invert", strips.table(lambda _, __: [255 - v for v in range(256)]))
    filters: list[tuple[str, float, ImageFilter.Filter]] = []
    if payload.blur:
        filters.append(("blur", payload.blur, ImageFilter.GaussianBlur(radius=payload.blur)))
    if payload.sharpen:
        percent = round(100 * payload.sharpen)
        unsharp = ImageFilter.UnsharpMask(radius=SHARPEN_RADIUS, percent=percent, threshold=0)
        filters.append(("sharpen", SHARPEN_RADIUS, unsharp))
    for name, radius, image_filter in filters:
        margin = blur_reach(radius)
        _, extra_bytes = strips.filter_cost(plan.mode, margin)
        plan.add(name, strips.filter(plan.mode, image_filter, margin), extra_bytes)
    if payload.gamma is not None and payload.gamma != 1:
        gamma = payload.gamma
        plan.add_in_place("gamma", strips.table(lambda _, __: _gamma_table(gamma)))
    if payload.contrast:
        contrast = 1 + payload.contrast / 100

        def contrast_table(image: Image.Image, check: Check) -> list[int]:
            return _blend_table(strips.mean_luminance(image, check), contrast)

        plan.add_in_place("contrast", strips.table(contrast_table))
    if payload.brightness:
        brightness = 1 + payload.brightness / 100
        plan.add_in_place("brightness", strips.table(lambda _, __: _blend_table(0, brightness)))
    if payload.saturation and not plan.grey:
        # Saturation of a grey image changes nothing: blend(v, v) == v.
        saturation = 1 + payload.saturation / 100
        plan.add_in_place(
            "saturation",
            strips.in_place(
                lambda strip: _with_alpha_of(
                    ImageEnhance.Color(colour_part(strip)).enhance(saturation), strip
                )
            ),
        )
    if plan.held_bytes:

        def attach_alpha(image: Image.Image, check: Check) -> Image.Image:
            image.putalpha(alpha.pop())  # converts L to LA in a new buffer
            return image

        plan.add_new_image("alpha", "LA", attach_alpha)
    return Plan(width, height, mode, tuple(plan.steps))
