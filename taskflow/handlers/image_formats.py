"""What each accepted image format costs to decode and encode beyond the
image itself, and how to verify a file without its full-size pixel buffer.

The per-pixel costs were measured with Pillow 13 on noise images, the worst
case for every codec here, and rounded up:

- JPEG keeps all DCT coefficients (2 bytes a sample) when the file has several
  scans: progressive, or a first scan without every component.
- TIFF: libtiff maps the file and decodes a whole strip or tile at a time.
- WebP: libwebp's own canvas plus a copy handed to Pillow as bytes; encoding
  holds several more planes.
- GIF: encoding quantises to a palette; for RGB by median cut, with a copy of
  every pixel and a histogram of up to 2**24 colours.
- BMP: the run-length decoder builds the image in Python buffers first.
- PNG, JPEG, BMP and TIFF encode a few rows at a time.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections import deque
from typing import IO

from PIL import Image, TiffImagePlugin

# Bytes per pixel held beyond the decoded image while decoding.
_DECODE_BYTES_PER_PIXEL = {"WEBP": 16, "BMP": 2}
# Bytes per pixel of the working image held while encoding.
_ENCODE_BYTES_PER_PIXEL = {"TIFF": 1.0, "PNG": 0.25, "JPEG": 0.25, "BMP": 0.25}
# WebP compresses an alpha plane losslessly, which costs more than the colour.
_WEBP_ENCODE_BYTES_PER_PIXEL = 32
_WEBP_ALPHA_ENCODE_BYTES_PER_PIXEL = 52
_GIF_ENCODE_BYTES_PER_PIXEL = {"L": 3, "LA": 4, "RGB": 10, "RGBA": 10}
_GIF_COLOUR_ENTRY_BYTES = 24
_PROGRESSIVE_FRAMES = (0xC2, 0xC6, 0xCA, 0xCE)
# JPEG coefficient blocks cover whole MCUs: up to 16 pixels past each edge.
_MCU_PADDING = 16

READ_BYTES = 1024 * 1024


def jpeg_has_several_scans(handle: IO[bytes], components: int) -> bool:
    """Walk the markers up to the first scan. Anything unexpected counts as
    several scans: the estimate errs high, and the decoder will refuse a file
    that is really broken."""
    handle.seek(2)
    while True:
        lead = handle.read(1)
        if lead != b"\xff":
            return True
        code = b"\xff"
        while code == b"\xff":  # fill bytes
            code = handle.read(1)
        if not code:
            return True
        marker = code[0]
        if marker in _PROGRESSIVE_FRAMES:
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue  # markers without a length
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return True
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:
            return True  # a length that covers not even itself
        if marker == 0xDA:
            count = handle.read(1)
            return not count or count[0] < components
        handle.seek(length - 2, os.SEEK_CUR)


# Pillow reads a TIFF's first directory whole when it opens the file and
# keeps every numeric tag value as a Python object, about 125 bytes each: a
# 23 MB file of strip offsets took 750 MiB before any pixel was decoded. Real
# images need one offset and one size per strip or tile, far fewer than this.
MAX_TIFF_TAG_VALUES = 1 << 19
_TIFF_MAX_ENTRIES = 0xFFFF  # what a classic TIFF can hold
# TIFF field types whose values Pillow keeps as bytes or text, not one by one.
_TIFF_BYTE_TYPES = frozenset({1, 2, 6, 7})


def check_tiff_directory(handle: IO[bytes]) -> None:
    """Refuse a TIFF whose first directory holds more numeric values than
    MAX_TIFF_TAG_VALUES, from its raw entries, before Pillow reads it.
    Anything that is not a TIFF is left alone."""
    handle.seek(0)
    head = handle.read(16)
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or len(head) < 16:
        return
    (version,) = struct.unpack(order + "H", head[2:4])
    if version == 42:
        (offset,) = struct.unpack(order + "I", head[4:8])
        count_format, entry_format = "H", "HHI"
    elif version == 43:  # BigTIFF
        (offset,) = struct.unpack(order + "Q", head[8:16])
        count_format, entry_format = "Q", "HHQ8x"
    else:
        return
    handle.seek(offset)
    count_bytes = handle.read(struct.calcsize(order + count_format))
    if not count_bytes:
        return  # Pillow will report the broken file
    (entries,) = struct.unpack(order + count_format, count_bytes)
    if entries > _TIFF_MAX_ENTRIES:
        raise ValueError(f"its TIFF directory has {entries} entries")
    entry_size = struct.calcsize(order + entry_format) + (0 if version == 43 else 4)
    values = 0
    for _ in range(entries):
        entry = handle.read(entry_size)
        if len(entry) < entry_size:
            break
        _, field_type, field_count = struct.unpack_from(order + entry_format, entry)
        if field_type not in _TIFF_BYTE_TYPES:
            values += field_count
    if values > MAX_TIFF_TAG_VALUES:
        raise ValueError(
            f"its TIFF directory holds {values} values, over the limit of {MAX_TIFF_TAG_VALUES}"
        )


def decoder_extra_bytes(handle: IO[bytes], image: Image.Image) -> int:
    """What decoding ``image`` holds besides its own pixels."""
    width, height = image.size
    if image.format in ("JPEG", "MPO"):
        components = int(getattr(image, "layers", len(image.getbands())))
        if jpeg_has_several_scans(handle, components):
            return 2 * components * (width + _MCU_PADDING) * (height + _MCU_PADDING)
        return 0
    if isinstance(image, TiffImagePlugin.TiffImageFile):
        tags = image.tag_v2
        bits = max(_tag_values(tags, TiffImagePlugin.BITSPERSAMPLE, 8))
        samples = max(_tag_values(tags, TiffImagePlugin.SAMPLESPERPIXEL, 1))
        # libtiff's RGBA reading path (YCbCr, old-style JPEG) uses 4 bytes a pixel.
        raw = max(math.ceil(bits * samples / 8), 4)
        if TiffImagePlugin.TILEWIDTH in tags:
            block = max(_tag_values(tags, TiffImagePlugin.TILEWIDTH, 1)) * max(
                _tag_values(tags, TiffImagePlugin.TILELENGTH, 1)
            )
        else:
            block = width * min(
                max(_tag_values(tags, TiffImagePlugin.ROWSPERSTRIP, height)), height
            )
        return raw * block
    return _DECODE_BYTES_PER_PIXEL.get(image.format or "", 0) * width * height


def _tag_values(tags: TiffImagePlugin.ImageFileDirectory_v2, key: int, default: int) -> list[int]:
    value = tags.get(key, default)
    values = value if isinstance(value, tuple) else (value,)
    return [int(item) for item in values] or [default]


def encoder_extra_bytes(image_format: str, mode: str, pixels: int) -> int:
    """What saving a ``mode`` image of ``pixels`` as ``image_format`` holds
    besides the image."""
    if image_format == "GIF":
        colours = _GIF_COLOUR_ENTRY_BYTES * min(pixels, 1 << 24) if mode == "RGB" else 0
        return _GIF_ENCODE_BYTES_PER_PIXEL.get(mode, 10) * pixels + colours
    if image_format == "WEBP":
        alpha = mode in ("LA", "RGBA")
        return (
            _WEBP_ALPHA_ENCODE_BYTES_PER_PIXEL if alpha else _WEBP_ENCODE_BYTES_PER_PIXEL
        ) * pixels
    return math.ceil(_ENCODE_BYTES_PER_PIXEL[image_format] * pixels)


# ----- PNG verification without a pixel buffer ----------------------------------------

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: first column, first row, column step, row step.
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_PNG_FILTER_TYPES = 5


class _Scanlines:
    """Checks inflated PNG image data: every row starts with a valid filter
    type, and the data covers every row the header promises."""

    def __init__(self, header: bytes) -> None:
        width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
        if colour_type not in _PNG_CHANNELS:
            raise SyntaxError(f"unknown PNG colour type {colour_type}")
        bits = depth * _PNG_CHANNELS[colour_type]
        passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
        self._passes: deque[tuple[int, int]] = deque()  # (rows, bytes per row)
        for column, row, column_step, row_step in passes:
            columns = (width - column + column_step - 1) // column_step
            rows = (height - row + row_step - 1) // row_step
            if columns > 0 and rows > 0:
                self._passes.append((rows, 1 + (columns * bits + 7) // 8))
        self._offset = 0  # into the current pass

    @property
    def complete(self) -> bool:
        return not self._passes

    def feed(self, data: bytes) -> None:
        while data and self._passes:
            rows, row_bytes = self._passes[0]
            part = data[: rows * row_bytes - self._offset]
            filters = part[(-self._offset) % row_bytes :: row_bytes]
            if filters and max(filters) >= _PNG_FILTER_TYPES:
                raise SyntaxError("broken PNG file (unknown scanline filter)")
            self._offset += len(part)
            data = data[len(part) :]
            if self._offset == rows * row_bytes:
                self._passes.popleft()
                self._offset = 0


def verify_png(handle: IO[bytes]) -> None:
    """Check every chunk up to the end of the image data against its CRC and
    inflate the data, in bounded pieces, to the full size the header promises.
    Raises what Pillow raises for the same faults."""
    handle.seek(8)
    inflater = zlib.decompressobj()
    scanlines: _Scanlines | None = None
    in_image_data = False
    while True:
        head = handle.read(8)
        if len(head) < 8:
            raise OSError("image file is truncated")
        length, kind = struct.unpack(">I4s", head)
        if kind != b"IDAT" and in_image_data:
            break  # the pixels are all in consecutive IDAT chunks
        checksum = zlib.crc32(kind)
        remaining = length
        while remaining:
            piece = handle.read(min(remaining, READ_BYTES))
            if not piece:
                raise OSError("image file is truncated")
            remaining -= len(piece)
            checksum = zlib.crc32(piece, checksum)
            if kind == b"IHDR" and scanlines is None:
                scanlines = _Scanlines(piece[:13])
            elif kind == b"IDAT" and scanlines is not None:
                _inflate(inflater, piece, scanlines)
        stored = handle.read(4)
        if len(stored) < 4:
            raise OSError("image file is truncated")
        if struct.unpack(">I", stored)[0] != checksum:
            raise SyntaxError(f"broken PNG file (bad checksum in {kind.decode('latin-1')!r})")
        in_image_data = kind == b"IDAT"
        if kind == b"IEND":
            break
    if scanlines is None or not scanlines.complete:
        raise OSError("image file is truncated")


def _inflate(inflater: zlib._Decompress, data: bytes, scanlines: _Scanlines) -> None:
    # Inflate at most READ_BYTES at a time: a few KB of deflate data can
    # expand a thousandfold. Data past the last row is never inflated.
    while data and not scanlines.complete:
        scanlines.feed(inflater.decompress(data, READ_BYTES))
        data = inflater.unconsumed_tail
