"""A downloaded body's Content-Encoding, decoded with bounded memory and CPU.

The download client sends ``Accept-Encoding: identity``, but a server may
encode the body anyway, and a hostile one sends a bomb: a few KiB of stacked
gzip inflate to gigabytes, and httpx's own decoding inflates each network read
in a single call through every layer before any size check can run. So the
handler reads the raw body and decodes it here:

- ``identity`` or no Content-Encoding: the bytes as they came.
- One ``gzip`` / ``x-gzip`` layer (several members in a row are one gzip file,
  RFC 1952) or one ``deflate`` layer (zlib-wrapped as RFC 9110 says, or the
  raw deflate some servers send instead): inflated in steps that each produce
  at most ``DECODE_STEP_BYTES``, so memory stays bounded whatever the ratio
  and the caller can stop at its size cap between two steps.
- Anything else is refused, naming it: stacked layers (a second layer only
  multiplies a bomb's ratio), ``br``, ``compress``, ``zstd``, unknown names.
  We asked for identity, so a retry would get the same answer: permanent.

Malformed bodies fail permanently: corrupt data, a bad checksum, and data
after the end of the stream other than a further gzip member, since saving
the part before it would store a file that differs from what was served.
A body that stops inside the stream fails permanently when the HTTP framing
(Content-Length, chunked) says it was complete, because a retry would fetch
the same bytes, and transiently when only a closing connection marked its
end, because a connection cut short looks exactly the same.
"""

from __future__ import annotations

import zlib
from collections.abc import Generator, Iterable, Iterator
from typing import Literal

from taskflow.errors import PermanentError, TransientError

# 256 KiB of output is well under a millisecond of inflating, hashing and
# writing, so a step never holds the event loop for long.
DECODE_STEP_BYTES = 256 * 1024
# Compressed input is handed to zlib this much at a time: after a gzip member
# ends, zlib copies all input left over, so a stream of tiny members would
# otherwise cost time quadratic in the size of a network read.
INFLATE_INPUT_BYTES = 16 * 1024
MAX_SHOWN_ENCODING_CHARS = 100

Encoding = Literal["identity", "gzip", "deflate"]
_NAMES: dict[str, Encoding] = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
_GZIP_MEMBER_WBITS = 16 + zlib.MAX_WBITS


def _shown(tokens: list[str]) -> str:
    text = ", ".join(tokens)
    if len(text) > MAX_SHOWN_ENCODING_CHARS:
        return text[:MAX_SHOWN_ENCODING_CHARS] + "..."
    return text


def _has_zlib_header(first_two: bytes) -> bool:
    """RFC 1950: method 8 (deflate), a window of at most 32 KiB, and the two
    bytes together a multiple of 31. A raw deflate stream starting like this
    by chance is as rare as it is for every client that sniffs the same way."""
    cmf, flags = first_two[0], first_two[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flags) % 31 == 0


class BodyDecoder:
    """Decodes one response body: :meth:`decode` each raw chunk in order,
    then :meth:`finish` once the body has ended."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding: Encoding = encoding
        self._inflater: zlib._Decompress | None = None
        # deflate: the first byte, until a second one tells zlib from raw.
        self._pending = b""

    @property
    def body_description(self) -> str:
        """``"file"`` or e.g. ``"gzip-encoded body"``, for messages."""
        return "file" if self.encoding == "identity" else f"{self.encoding}-encoded body"

    def decode(self, data: bytes) -> Iterator[bytes]:
        """The decoded form of ``data``, in pieces of at most DECODE_STEP_BYTES.

        Each piece is one bounded step of work and may be empty (a gzip member
        that held nothing); the caller can check its limits and give the event
        loop a turn between pieces.
        """
        if self.encoding == "identity":
            for start in range(0, len(data), DECODE_STEP_BYTES):
                yield data[start : start + DECODE_STEP_BYTES]
            return
        for start in range(0, len(data), INFLATE_INPUT_BYTES):
            yield from self._decode_compressed(data[start : start + INFLATE_INPUT_BYTES])

    def _decode_compressed(self, data: bytes) -> Iterator[bytes]:
        while data:
            inflater = self._inflater
            if inflater is None or inflater.eof:
                if self.encoding == "deflate":
                    if inflater is not None:
                        raise PermanentError(
                            "the deflate-encoded body has data after the end of its stream"
                        )
                    data = self._pending + data
                    if len(data) < 2:
                        self._pending = data
                        return
                    self._pending = b""
                    wbits = zlib.MAX_WBITS if _has_zlib_header(data) else -zlib.MAX_WBITS
                else:
                    wbits = _GZIP_MEMBER_WBITS
                inflater = self._inflater = zlib.decompressobj(wbits)
            data = yield from self._inflate(inflater, data)

    def _inflate(self, inflater: zlib._Decompress, data: bytes) -> Generator[bytes, None, bytes]:
        """Inflate ``data`` until it is used up or the stream ends; return
        what follows the end of the stream (``b""`` if nothing does)."""
        while True:
            try:
                piece = inflater.decompress(data, DECODE_STEP_BYTES)
            except zlib.error as exc:
                raise PermanentError(f"the {self.body_description} is corrupt ({exc})") from None
            yield piece
            if inflater.eof:
                return inflater.unused_data
            # Input the step had no room for waits in unconsumed_tail. A full
            # step may also leave output inside zlib with all input taken, so
            # only a short step with nothing left over means "done for now".
            data = inflater.unconsumed_tail
            if not data and len(piece) < DECODE_STEP_BYTES:
                return b""

    def finish(self, *, framed: bool) -> None:
        """Check that the body ended where its stream ends.

        ``framed``: a Content-Length or chunked coding marked the body's end;
        otherwise the connection closing did.
        """
        if self.encoding == "identity":
            return
        if self._inflater is None and not self._pending:
            return  # an empty body: nothing was encoded, nothing is missing
        if self._inflater is not None and self._inflater.eof:
            return
        message = f"the {self.body_description} is truncated: it ends inside the compressed stream"
        if framed:
            raise PermanentError(message)
        raise TransientError(f"{message} (the connection closed, perhaps cut short)")


def decoder_for(content_encodings: Iterable[str]) -> BodyDecoder:
    """The decoder for a response's Content-Encoding header values (every
    header line, in order; each may list several codings, comma-separated).

    Raises ``PermanentError`` naming the encoding unless it is identity or a
    single gzip or deflate layer.
    """
    tokens = [token.strip() for value in content_encodings for token in value.split(",")]
    tokens = [token for token in tokens if token]
    # "identity" is no coding at all; some servers list it anyway.
    layers = [token.lower() for token in tokens if token.lower() != "identity"]
    if not layers:
        return BodyDecoder("identity")
    if len(layers) > 1:
        raise PermanentError(
            f"refusing Content-Encoding {_shown(tokens)!r}: stacked encodings are not "
            "decoded (the request asked for identity)"
        )
    encoding = _NAMES.get(layers[0])
    if encoding is None:
        raise PermanentError(
            f"refusing Content-Encoding {_shown(tokens)!r}: only gzip and deflate are "
            "decoded (the request asked for identity)"
        )
    return BodyDecoder(encoding)
