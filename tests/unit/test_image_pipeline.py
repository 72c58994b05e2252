"""The process_image pipeline, run in strips, gives exactly the result of one
whole-image Pillow call per operation (the pipeline as it was before it ran in
strips), for every working mode, operation and strip height."""

from __future__ import annotations

import os
from typing import Any

import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from taskflow.handlers.image_pipeline import plan_operations
from taskflow.models import ProcessImagePayload


def reference_operations(image: Image.Image, payload: ProcessImagePayload) -> Image.Image:
    """The documented operations, one whole-image Pillow call each."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    alpha = None
    if has_alpha:
        grey_alpha = image.mode in ("LA", "La", "L")
        with_alpha = image.convert("LA" if grey_alpha else "RGBA")
        base, alpha = with_alpha.convert("L" if grey_alpha else "RGB"), with_alpha.getchannel("A")
    elif image.mode.startswith("I"):
        base = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    else:
        base = image.convert("L" if image.mode in ("L", "1", "F") else "RGB")
    if payload.grayscale:
        base = base.convert("L")
    if payload.invert:
        base = ImageOps.invert(base)
    if payload.blur:
        base = base.filter(ImageFilter.GaussianBlur(radius=payload.blur))
    if payload.sharpen:
        percent = round(100 * payload.sharpen)
        base = base.filter(ImageFilter.UnsharpMask(radius=2, percent=percent, threshold=0))
    if payload.gamma is not None and payload.gamma != 1:
        table = [round(255 * (v / 255) ** (1 / payload.gamma)) for v in range(256)]
        base = base.point(table * len(base.getbands()))
    for amount, enhancer in (
        (payload.contrast, ImageEnhance.Contrast),
        (payload.brightness, ImageEnhance.Brightness),
        (payload.saturation, ImageEnhance.Color),
    ):
        if amount:
            base = enhancer(base).enhance(1 + amount / 100)
    if alpha is not None:
        base.putalpha(alpha)
    return base


def sample(mode: str, width: int, height: int) -> Image.Image:
    """Noise with some structure, in ``mode``; ``+t`` adds a transparent colour."""
    noise = Image.frombytes("RGBA", (width, height), os.urandom(width * height * 4))
    noise = noise.filter(ImageFilter.BoxBlur(1))
    base_mode, _, transparent = mode.partition("+")
    if base_mode == "P":
        image = noise.convert("RGB").quantize(64)
    elif base_mode == "I;16":
        image = Image.new("I;16", (width, height))
        image.frombytes(os.urandom(width * height * 2))
    else:
        image = noise.convert(base_mode)
    if transparent:
        image.info["transparency"] = image.getpixel((0, 0))
    return image


OPERATION_SETS: list[dict[str, Any]] = [
    {"grayscale": True},
    {"invert": True},
    {"blur": 0.5},
    {"blur": 7.3},
    {"sharpen": 1.5},
    {"gamma": 2.2},
    {"contrast": 37},
    {"contrast": -60},
    {"brightness": 45},
    {"brightness": -30},
    {"saturation": 80},
    {"saturation": -100},
    {
        "grayscale": True,
        "invert": True,
        "blur": 3,
        "sharpen": 0.7,
        "gamma": 0.6,
        "contrast": 20,
        "brightness": -10,
        "saturation": 50,
    },
    {"invert": True, "blur": 1.2, "sharpen": 2, "gamma": 1.7, "contrast": 90, "brightness": 100},
]


@pytest.mark.parametrize(
    "mode",
    ["RGB", "RGBA", "L", "LA", "P", "P+t", "RGB+t", "L+t", "I;16", "CMYK", "1", "La", "RGBa", "F"],
)
def test_strips_give_the_whole_image_result(mode: str) -> None:
    """Every operation set on images short and tall, in strips from one row
    up: tall images make blur and sharpen run in overlapping strips."""
    for width, height in ((37, 23), (1, 40), (23, 300)):
        source = sample(mode, width, height)
        for operations in OPERATION_SETS:
            payload = ProcessImagePayload(path="x.png", **operations)
            expected = reference_operations(source.copy(), payload)
            for strip_rows in (1, 7, 1000):
                plan = plan_operations(
                    width,
                    height,
                    source.mode,
                    "transparency" in source.info,
                    payload,
                    strip_bytes=4 * width * strip_rows,
                )
                result = plan.run(source.copy(), lambda: None)
                assert (result.mode, result.tobytes()) == (expected.mode, expected.tobytes()), (
                    width,
                    height,
                    operations,
                    strip_rows,
                )


def test_blur_strips_overlap_enough_for_every_radius() -> None:
    """Strips of one row (as tall as the overlap, then), for radii across the
    range: identical to Pillow's whole-image blur."""
    image = Image.frombytes("L", (7, 900), os.urandom(7 * 900))
    for radius in [step / 10 for step in range(1, 200)] + [33.3, 77.7]:
        expected = image.filter(ImageFilter.GaussianBlur(radius)).tobytes()
        payload = ProcessImagePayload(path="x.png", blur=radius)
        plan = plan_operations(7, 900, "L", False, payload, strip_bytes=1)
        assert plan.steps[0].extra_bytes < 2 * 7 * 900 or radius > 30, "runs in strips"
        assert plan.run(image.copy(), lambda: None).tobytes() == expected, radius
