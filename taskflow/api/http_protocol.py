"""The HTTP/1.1 protocol the API is served with: uvicorn's httptools
protocol, plus bounds on what a client may take to send.

uvicorn (0.55) has none of these. Its only timer is keep-alive, armed once a
response is complete; ``limit_concurrency`` counts connections, so slow
clients would use it up and legitimate ones get the 503s. A client that
connects and sends nothing, or sends its request line and headers a byte at a
time (slowloris), holds its connection, descriptor and parser state for as
long as it likes; enough of them exhaust the process's descriptors. Nor is
there a limit on the size of request headers (h11 has one, httptools none):
one endless header line is buffered whole, as fast as the client sends it.

Here, with ``timeout`` the ``http_header_timeout_seconds`` setting:

- a request's line and headers must arrive within ``timeout`` of the
  connection opening (the first request) or of their first byte (later
  requests on a kept-alive connection; the wait between requests is
  keep-alive's), and in at most ``MAX_HEADER_BYTES``: else a 408 or a 431
  (a connection that never sent a byte is closed without an answer);
- a request answered before its body was all in (refused, or an upload past
  its deadline) must send the rest within ``timeout`` of the answer: else
  the connection is closed. Bodies still being read have their own
  deadlines (uploads: ``taskflow.api.uploads``).

After a 408 or 431 the connection closes only once the client has had a
moment to read the answer: closing on input not yet read makes the kernel
send a reset, which can destroy the answer before the client sees it.

The cost is a timer per request and a byte count, on the event loop; the
parsing stays httptools'.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from taskflow.api.responses import dumps

# Request line and headers; a request carries a token and a few short headers.
MAX_HEADER_BYTES = 64 * 1024
# How long a refused client has to read its answer before the connection goes.
LINGER_SECONDS = 1.0


def http_protocol(header_timeout_seconds: float) -> Callable[..., BoundedHeadersProtocol]:
    """For uvicorn's ``http=`` option, which takes a protocol factory. A
    partial of a module-level class pickles, so uvicorn can hand it to the
    API processes it spawns (``taskflow api --processes N``)."""
    return functools.partial(BoundedHeadersProtocol, header_timeout_seconds=header_timeout_seconds)


class BoundedHeadersProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the bounds above."""

    def __init__(self, *args: Any, header_timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_seconds = header_timeout_seconds
        # Armed while a request's headers are arriving, and only then.
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        # Armed while the rest of an answered request's body is awaited.
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self._later(self._headers_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: only read so as not to reset
        if self._header_timer is not None:
            # Checked before parsing more: at most one read past the limit
            # is ever buffered.
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(431, f"request headers are larger than {MAX_HEADER_BYTES} bytes")
                return
            self._header_bytes += len(data)
        super().data_received(data)

    # ----- httptools callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The first request's timer has run since the connection opened.
        if self._header_timer is None:
            self._header_timer = self._later(self._headers_timed_out)

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        self._header_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._stop_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        # more_body: the request's body had not all arrived when its answer
        # was complete (the newest cycle only: a pipelined one behind it has
        # not been answered).
        if cycle.response_complete and cycle.more_body and not self.transport.is_closing():
            self._body_timer = self._later(self.transport.close)

    # ----- timers and refusals

    def _later(self, callback: Callable[[], object]) -> asyncio.TimerHandle:
        return self.loop.call_later(self.header_timeout_seconds, callback)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self._header_bytes == 0 and self.cycle is None:
            # Not a byte of a request yet (a connection opened ahead of
            # need, or an idle attacker): nothing to answer, as keep-alive.
            self.transport.close()
            return
        self._refuse(408, f"request headers not received within {self.header_timeout_seconds:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` (JSON, as every error), then hang up."""
        self._stop_header_timer()
        if self.transport.is_closing():
            return
        self._refused = True
        # Only between responses: in the middle of one (a pipelined request
        # behind it), bytes of another would corrupt it.
        if self.cycle is None or self.cycle.response_complete:
            body = dumps({"error": message})
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
