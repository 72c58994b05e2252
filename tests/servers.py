"""Real local stand-ins for the outside world: an SMTP server and an HTTP server.

Both run in a background thread on 127.0.0.1 with an ephemeral port, so they
work from sync and async tests alike and from a worker in a subprocess. Use them
as context managers or through the fixtures at the bottom; import fixtures into
a test module explicitly::

    from tests.servers import http_server, smtp_server  # noqa: F401

``SMTPTestServer`` records every accepted message and can refuse on demand
(``data_reply = "554 5.7.1 no"``), offer STARTTLS or speak implicit TLS, and
require a login. ``HTTPTestServer`` serves the routes listed in its docstring
and records every request it receives, so a test can assert that a refused
download never reached it. ``handler_settings`` / ``handler_context`` build
what a handler needs to be called directly, without a worker.
"""

from __future__ import annotations

import asyncio
import copy
import email
import email.message
import email.policy
import functools
import hashlib
import http.server
import socket
import ssl
import struct
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from taskflow.config import Settings, load_settings
from taskflow.files import UserFiles
from taskflow.handlers import TaskContext

LOOPBACK = "127.0.0.1"


def refused_port() -> int:
    """A loopback port nobody listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


# ----- TLS -------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for ``localhost`` and ``127.0.0.1``."""

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_path))


def make_certificate(directory: Path) -> Certificate:
    """Generate a throwaway certificate with the ``openssl`` command line tool
    (the ``cryptography`` package is not a dependency)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key_path), "-out", str(cert_path),
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return Certificate(cert_path, key_path)


# ----- SMTP ------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None
    tls: bool

    @property
    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


class _Recorder:
    """aiosmtpd handler: records messages, answers as the server says."""

    def __init__(self, server: SMTPTestServer) -> None:
        self._server = server

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self._server.rcpt_reply is not None:
            return self._server.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        if self._server.data_reply is not None:
            return self._server.data_reply
        transport = smtp.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        credentials = session.auth_data
        login = credentials.login.decode() if isinstance(credentials, LoginPassword) else None
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        self._server.messages.append(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=content,
                login=login,
                tls=tls,
            )
        )
        return "250 Message accepted"


class SMTPTestServer:
    """An aiosmtpd server in its own thread and event loop.

    ``starttls``: a context to offer STARTTLS with; ``implicit_tls``: a context
    to speak TLS from the first byte (``MAIL_USE_TLS``); ``credentials``: logins
    accepted by AUTH (offered without TLS too, as test servers do).
    Set ``data_reply`` / ``rcpt_reply`` (e.g. ``"451 4.3.0 later"``) to refuse.
    """

    def __init__(
        self,
        *,
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        credentials: dict[str, str] | None = None,
    ) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.messages: list[ReceivedMessage] = []
        self.data_reply: str | None = None
        self.rcpt_reply: str | None = None
        self.failed_logins: list[str] = []
        self._starttls = starttls
        self._implicit_tls = implicit_tls
        self._credentials = credentials
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._protocols: list[SMTP] = []

    def _authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and self._credentials is not None:
            login, password = data.login.decode(), data.password.decode()
            if self._credentials.get(login) == password:
                return AuthResult(success=True, auth_data=data)
            self.failed_logins.append(login)
        return AuthResult(success=False, handled=False)

    def _make_protocol(self) -> SMTP:
        protocol = SMTP(
            _Recorder(self),
            hostname="smtp.taskflow.test",
            tls_context=self._starttls,
            require_starttls=False,
            authenticator=self._authenticate if self._credentials is not None else None,
            auth_require_tls=False,
            loop=self._loop,
        )
        self._protocols.append(protocol)
        return protocol

    def start(self) -> SMTPTestServer:
        self._thread.start()

        async def listen() -> asyncio.Server:
            return await self._loop.create_server(
                self._make_protocol, self.host, 0, ssl=self._implicit_tls
            )

        self._server = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            # Connections a client left open (a failed TLS handshake, say) are
            # closed here, or they would be garbage-collected in a later test.
            for protocol in self._protocols:
                if protocol.transport is not None:
                    protocol.transport.close()
            current = asyncio.current_task()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for _ in range(3):  # let connection_lost callbacks run
                await asyncio.sleep(0)
            if self._server is not None:
                await self._server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> SMTPTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class CommandLoggingSMTPTestServer(SMTPTestServer):
    """An :class:`SMTPTestServer` that also keeps the verb of every command it
    is given (``commands``: "EHLO", "STARTTLS", "AUTH", ..., in order, across
    connections), so a test can tell that a command never reached it. Verbs
    the server does not know are not kept."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.commands: list[str] = []

    def _make_protocol(self) -> SMTP:
        protocol = super()._make_protocol()
        # aiosmtpd dispatches every command line through this table of bound
        # methods, one per verb.
        table: dict[str, Callable[[str], Awaitable[None]]] = protocol._smtp_methods
        for verb, method in list(table.items()):
            table[verb] = self._noting(verb, method)
        return protocol

    def _noting(
        self, verb: str, method: Callable[[str], Awaitable[None]]
    ) -> Callable[[str], Awaitable[None]]:
        @functools.wraps(method)  # HELP lists the docstrings
        async def noted(arg: str) -> None:
            self.commands.append(verb)
            await method(arg)

        return noted


# ----- HTTP ------------------------------------------------------------------

_PATTERN = bytes(range(251)) * 4177  # about 1 MiB; 251 is prime, so no short cycles


def body_of(size: int) -> bytes:
    """The deterministic body ``/bytes/<size>`` serves."""
    repeats = size // len(_PATTERN) + 1
    return (_PATTERN * repeats)[:size]


def png_bytes(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid solid-colour RGB PNG, built with the standard library only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG_BYTES = png_bytes()

CONTENT_KINDS: dict[str, tuple[str | None, bytes]] = {
    "png": ("image/png", PNG_BYTES),
    "jpeg": ("image/jpeg", b"\xff\xd8\xff\xe0 not really a jpeg"),
    "pdf": ("application/pdf", b"%PDF-1.4\n% taskflow test\n%%EOF\n"),
    "html": ("text/html; charset=utf-8", b"<!doctype html><title>t</title><p>hello</p>"),
    "text": ("text/plain; charset=utf-8", b"plain text\n"),
    "octet": ("application/octet-stream", b"\x00\x01\x02binary"),
    "unknown": ("application/x-taskflow-unknown", b"who knows"),
    "none": (None, b"no content type at all"),
}


Framing = Literal["length", "chunked", "close"]


@dataclass(frozen=True)
class RawResponse:
    """What ``/raw/<key>`` sends: the status, these headers verbatim (a name may
    repeat) and the body's bytes untouched, framed by a Content-Length, by
    chunked transfer coding, or by closing the connection. A callable body is
    called per request and its pieces are sent as they come, so a test can
    serve a stream far larger than it would want to hold in memory."""

    body: bytes | Callable[[], Iterable[bytes]]
    headers: tuple[tuple[str, str], ...] = ()
    status: int = 200
    framing: Framing = "length"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _ThreadingServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not access logs."""

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._record(RecordedRequest("GET", self.path, dict(self.headers.items())))
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        segments = [segment for segment in parts.path.split("/") if segment]
        route = segments[0] if segments else ""
        argument = segments[1] if len(segments) > 1 else ""
        try:
            self._dispatch(route, argument, query)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            # The client gave up (a timeout or size cap under test): expected.
            self.close_connection = True

    def _dispatch(self, route: str, argument: str, query: dict[str, str]) -> None:
        owner = self.server.owner
        if route == "type" and argument in CONTENT_KINDS:
            content_type, body = CONTENT_KINDS[argument]
            self._send(200, body, content_type)
        elif route == "bytes" and argument.isdigit():
            self._send(200, body_of(int(argument)), query.get("type", "application/octet-stream"))
        elif route == "named":
            # Any path, e.g. /named/../../etc/passwd.png, served with ?type=.
            self._send(200, body_of(64), query.get("type"))
        elif route == "redirect":
            self._redirect(int(query.get("status", "302")), query["to"])
        elif route == "redirect-chain" and argument.isdigit():
            hops = int(argument)
            if hops == 0:
                self._send(200, body_of(32), "application/octet-stream")
            else:
                self._redirect(302, f"/redirect-chain/{hops - 1}")
        elif route == "slow":
            self._send_slowly(float(query.get("delay", "5")), int(query.get("size", "1024")))
        elif route == "oversized" and argument.isdigit():
            announce = query.get("announce", "1") == "1"
            self._send(200, body_of(int(argument)), "application/octet-stream", announce)
        elif route == "status" and argument.isdigit():
            headers = {"Retry-After": query["retry_after"]} if "retry_after" in query else {}
            self._send(int(argument), b"status body\n", "text/plain", extra=headers)
        elif route == "raw" and (raw := owner._raw_response(argument)) is not None:
            self._send_raw(raw)
        elif route == "flaky" and argument:
            failures_wanted = int(query.get("failures", "2"))
            if owner._count_attempt(argument) <= failures_wanted:
                self._send(int(query.get("status", "503")), b"not yet\n", "text/plain")
            else:
                self._send(200, body_of(int(query.get("size", "4096"))), "image/png")
        else:
            self._send(404, b"no such route\n", "text/plain")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        announce_length: bool = True,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        if announce_length:
            self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        # Without a length the body ends when the connection closes.
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        view = memoryview(body)
        for start in range(0, len(view), 256 * 1024):
            self.wfile.write(view[start : start + 256 * 1024])

    def _send_raw(self, raw: RawResponse) -> None:
        self.send_response(raw.status)
        for name, value in raw.headers:
            self.send_header(name, value)
        if raw.framing == "length":
            assert isinstance(raw.body, bytes), "a Content-Length needs the whole body"
            self.send_header("Content-Length", str(len(raw.body)))
        elif raw.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        pieces = [raw.body] if isinstance(raw.body, bytes) else raw.body()
        stopping = self.server.owner._stopping
        for piece in pieces:
            if stopping.is_set():
                return
            if raw.framing == "chunked":
                if piece:
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                continue
            view = memoryview(piece)
            for start in range(0, len(view), 256 * 1024):
                self.wfile.write(view[start : start + 256 * 1024])
        if raw.framing == "chunked":
            self.wfile.write(b"0\r\n\r\n")

    def _redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _send_slowly(self, delay_seconds: float, size: int) -> None:
        body = body_of(size)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(body[: size // 2])
        self.wfile.flush()
        # Waits on the stop event so shutting the server down never hangs.
        self.server.owner._stopping.wait(delay_seconds)
        self.wfile.write(body[size // 2 :])


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops SYNs when 20 downloads connect
    # at once, and each dropped SYN costs the client a one-second retransmit.
    request_queue_size = 128
    owner: HTTPTestServer


class HTTPTestServer:
    """A threaded HTTP(S) server on 127.0.0.1 that records every request.

    Routes (all GET):

    - ``/type/<kind>``: a small body with the Content-Type of ``kind`` in
      :data:`CONTENT_KINDS` (png, jpeg, pdf, html, text, octet, unknown, none).
    - ``/bytes/<n>[?type=...]``: ``body_of(n)``, default application/octet-stream.
    - ``/named/<anything>[?type=...]``: 64 bytes, for file-name derivation.
    - ``/redirect?to=<url>[&status=302]``: a redirect to ``to``.
    - ``/redirect-chain/<n>``: ``n`` redirects, then 32 bytes.
    - ``/slow?delay=<s>&size=<n>``: half the body, a pause, the rest.
    - ``/oversized/<n>[?announce=0]``: ``n`` bytes, with or without Content-Length.
    - ``/status/<code>[?retry_after=<s>]``: that status.
    - ``/flaky/<key>?failures=2[&status=503&size=4096]``: fails the first
      ``failures`` requests for ``key``, then serves ``body_of(size)`` as PNG.
    - ``/raw/<key>``: exactly the :class:`RawResponse` registered with
      :meth:`serve_raw` (any headers, e.g. a Content-Encoding, any bytes).
    """

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._attempts: dict[str, int] = {}
        self._raw: dict[str, RawResponse] = {}
        self._stopping = threading.Event()
        self._server = _ThreadingServer((LOOPBACK, 0), _Handler)
        self._server.owner = self
        if tls is not None:
            # Handshake in the request thread, not in the accepting loop.
            self._server.socket = tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if tls is not None else "http"
        self.host = LOOPBACK
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str, *, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def serve_raw(
        self,
        key: str,
        body: bytes | Callable[[], Iterable[bytes]],
        *,
        headers: Iterable[tuple[str, str]] = (),
        status: int = 200,
        framing: Framing = "length",
    ) -> str:
        """Serve ``body`` with ``headers`` at ``/raw/<key>``; returns its URL."""
        if framing == "length" and not isinstance(body, bytes):
            raise ValueError("a streamed body is framed by 'chunked' or 'close'")
        with self._lock:
            self._raw[key] = RawResponse(body, tuple(headers), status, framing)
        return self.url(f"/raw/{key}")

    def _raw_response(self, key: str) -> RawResponse | None:
        with self._lock:
            return self._raw.get(key)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def hits(self, path: str) -> int:
        """How many requests asked for exactly ``path`` (with its query)."""
        return sum(1 for request in self.requests if request.path == path)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _count_attempt(self, key: str) -> int:
        with self._lock:
            self._attempts[key] = self._attempts.get(key, 0) + 1
            return self._attempts[key]

    def start(self) -> HTTPTestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()

    def __enter__(self) -> HTTPTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(
    condition: Any, *, timeout_seconds: float = 5, interval_seconds: float = 0.02
) -> None:
    """Poll ``condition()`` until true or fail after the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_seconds}s")
        time.sleep(interval_seconds)


# ----- handler contexts ------------------------------------------------------


class ProgressRecorder:
    """A ``save_progress`` that keeps a copy of everything it was given."""

    def __init__(self) -> None:
        self.saved: list[Any] = []

    async def __call__(self, result: Any) -> None:
        self.saved.append(copy.deepcopy(result))

    @property
    def last(self) -> Any:
        return self.saved[-1] if self.saved else None


def handler_settings(files_root: Path, **overrides: Any) -> Settings:
    """Settings for calling a handler directly (no database is contacted)."""
    environ = {
        "DATABASE_URL": "postgresql://taskflow@127.0.0.1/unused",
        "AMQP_URL": "off",
        "BASE_FILE_PATH": str(files_root),
        "TASKFLOW_ENV_FILE": "/nonexistent/.env",
    }
    return load_settings(environ, overrides=overrides)


def handler_context(
    settings: Settings,
    *,
    task_type: str,
    user_id: int = 1,
    task_id: uuid.UUID | None = None,
    attempt: int = 1,
    max_retries: int = 3,
    previous_result: Any = None,
    progress: ProgressRecorder | None = None,
) -> TaskContext:
    return TaskContext(
        task_id=task_id or uuid.uuid4(),
        user_id=user_id,
        task_type=task_type,
        attempt=attempt,
        max_retries=max_retries,
        settings=settings,
        files=UserFiles(settings.base_file_path, user_id),
        previous_result=previous_result,
        save_progress=progress if progress is not None else ProgressRecorder(),
    )


# ----- fixtures --------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp_server() -> Iterator[SMTPTestServer]:
    with SMTPTestServer() as server:
        yield server


@pytest.fixture
def smtp_starttls_server(tls_certificate: Certificate) -> Iterator[SMTPTestServer]:
    with SMTPTestServer(starttls=tls_certificate.server_context()) as server:
        yield server


@pytest.fixture
def http_server() -> Iterator[HTTPTestServer]:
    with HTTPTestServer() as server:
        yield server


@pytest.fixture
def https_server(tls_certificate: Certificate) -> Iterator[HTTPTestServer]:
    with HTTPTestServer(tls=tls_certificate.server_context()) as server:
        yield server


__all__ = [
    "CONTENT_KINDS",
    "PNG_BYTES",
    "Certificate",
    "CommandLoggingSMTPTestServer",
    "HTTPTestServer",
    "ProgressRecorder",
    "RawResponse",
    "ReceivedMessage",
    "RecordedRequest",
    "SMTPTestServer",
    "body_of",
    "handler_context",
    "handler_settings",
    "http_server",
    "https_server",
    "make_certificate",
    "png_bytes",
    "refused_port",
    "sha256_of",
    "smtp_server",
    "smtp_starttls_server",
    "tls_certificate",
    "wait_until",
]
