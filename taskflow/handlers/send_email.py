"""send_email: one message through the configured SMTP server (``MAIL_*``).

- ``body`` is HTML; the message is ``multipart/alternative`` with a plain-text
  version derived from it, and ``multipart/mixed`` around that when files are
  attached. Attachments are names of the owner's files, typed with
  :mod:`mimetypes` (``application/octet-stream`` when unknown).
- Headers are built by :class:`email.message.EmailMessage` under the SMTP
  policy, which refuses CR/LF in any header value; the payload model already
  rejects them, so nothing a user types can add a header or a recipient. The
  envelope recipient is exactly ``to``.
- Connection: implicit TLS when ``MAIL_USE_TLS``, otherwise STARTTLS whenever
  the server offers it; certificates are checked against the system trust
  store. Login happens only when both ``MAIL_USERNAME`` and ``MAIL_PASSWORD``
  are set.
- Errors: SMTP 5xx replies, unusable or missing attachments are permanent;
  4xx replies, timeouts and connection problems are transient.
- At most once, as far as SMTP allows: once the server accepts the message the
  result is saved with ``"sent": true`` before anything else can fail, and an
  attempt that finds it in ``previous_result`` returns it without sending.
  The Message-ID derives from the task id, so even the one unavoidable
  duplicate (a crash between the server's "250" and that save) carries the same
  Message-ID and can be recognised downstream.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import re
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr
from html.parser import HTMLParser
from typing import Any

import aiosmtplib

from taskflow.errors import (
    FileNotFound,
    HandlerError,
    PermanentError,
    TransientError,
    ValidationFailed,
)
from taskflow.handlers import TaskContext, TaskType
from taskflow.models import SendEmailPayload

log = logging.getLogger(__name__)

# Most providers refuse messages above 25-35 MB; base64 adds a third on top.
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
SMTP_TIMEOUT_SECONDS = 30.0

_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}
_DOMAIN_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


# ----- HTML -> plain text ----------------------------------------------------

_BLOCK_TAGS = frozenset(
    "address article aside blockquote dd div dl dt fieldset figcaption figure footer form "  # noqa: SIM905
    "h1 h2 h3 h4 h5 h6 header hr main nav ol p pre section table tbody thead tfoot tr ul".split()
)
_SKIPPED_TAGS = frozenset({"head", "script", "style", "template", "title", "noscript"})


class _TextExtractor(HTMLParser):
    """A readable plain-text rendering: paragraphs on their own lines, list
    items as "- ", links followed by their target, scripts and styles dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth += 1
        elif tag == "br":
            self._parts.append("\n")
        elif tag == "li":
            self._parts.append("\n- ")
        elif tag in ("td", "th"):
            self._parts.append("\t")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._parts.append(alt)
        elif tag == "a":
            self._links.append(dict(attrs).get("href"))
        if tag in _BLOCK_TAGS:
            self._parts.append("\n\n")
        if tag == "pre":
            self._pre_depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "img", "hr"):
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "a" and self._links:
            href = self._links.pop()
            if href and href.startswith(("http://", "https://", "mailto:")):
                text_so_far = "".join(self._parts[-3:])
                if href.removeprefix("mailto:") not in text_so_far:
                    self._parts.append(f" ({href})")
        if tag in _BLOCK_TAGS:
            self._parts.append("\n\n")
        if tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._pre_depth:
            # Kept verbatim; the NUL markers shield it from the tidying in text().
            self._parts.append("\x00" + data.replace("\x00", "") + "\x00")
        else:
            self._parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        pieces = "".join(self._parts).split("\x00")
        # Even pieces are flowing text: drop the spaces around line breaks that
        # collapsing whitespace left; odd pieces are <pre> content.
        tidy = [
            re.sub(r" *\n *", "\n", piece) if index % 2 == 0 else piece
            for index, piece in enumerate(pieces)
        ]
        joined = re.sub(r"\n{3,}", "\n\n", "".join(tidy))
        return joined.strip("\n").rstrip()


def html_to_text(html: str) -> str:
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    return extractor.text()


# ----- the message -----------------------------------------------------------


def message_id_for(task_id: object, sender: str) -> str:
    """Stable across attempts of one task, unique across tasks."""
    domain = parseaddr(sender)[1].rpartition("@")[2]
    if not _DOMAIN_PATTERN.match(domain):
        domain = "taskflow.localhost"
    return f"<taskflow.{task_id}@{domain}>"


def attachment_type(name: str) -> tuple[str, str]:
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is not None:
        guessed = _ENCODING_TYPES.get(encoding, "application/octet-stream")
    maintype, _, subtype = (guessed or "application/octet-stream").partition("/")
    return maintype, subtype


def build_message(
    payload: SendEmailPayload,
    *,
    sender: str,
    message_id: str,
    attachments: list[tuple[str, bytes]],
) -> EmailMessage:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = sender
    # Address() parses the addr-spec itself: a value that is not exactly one
    # address raises instead of becoming extra recipients.
    message["To"] = Address(addr_spec=payload.to)
    if payload.subject:
        message["Subject"] = payload.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id
    if payload.body:
        message.set_content(html_to_text(payload.body))
        message.add_alternative(payload.body, subtype="html")
    elif not attachments:
        message.set_content("")
    for name, content in attachments:
        maintype, subtype = attachment_type(name)
        message.add_attachment(content, maintype=maintype, subtype=subtype, filename=name)
    return message


def _read_attachments(ctx: TaskContext, names: list[str]) -> list[tuple[str, bytes]]:
    """Runs in a thread: the files may be large."""
    loaded: list[tuple[str, bytes]] = []
    total = 0
    for name in names:
        try:
            size = ctx.files.stat(name).size
            total += size
            if total > MAX_ATTACHMENT_BYTES:
                raise PermanentError(
                    f"attachments exceed {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MiB in total"
                )
            loaded.append((name, ctx.files.read_bytes(name)))
        except FileNotFound:
            raise PermanentError(f"attachment {name!r} not found") from None
        except ValidationFailed as exc:
            raise PermanentError(f"attachment {name!r} cannot be used: {exc.message}") from None
    return loaded


# ----- SMTP ------------------------------------------------------------------


def _classify(exc: Exception) -> HandlerError:
    """SMTP reply codes decide: 5xx is final, anything else may pass."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [refusal.code for refusal in exc.recipients]
        details = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        text = f"SMTP server refused the recipient: {details}"
        if codes and all(code >= 500 for code in codes):
            return PermanentError(text)
        return TransientError(text)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = f"SMTP server replied {exc.code} {exc.message}"
        return PermanentError(text) if exc.code >= 500 else TransientError(text)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        # e.g. login configured but AUTH not offered, or a UTF-8 address the
        # server cannot take: a configuration problem a retry will not fix.
        return PermanentError(f"SMTP server does not support what is needed: {exc}")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return TransientError(f"SMTP server timed out: {exc}")
    return TransientError(f"cannot talk to the SMTP server: {exc}")


async def _close_quietly(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError) as exc:
        # The message is accepted (or the attempt already failed): a QUIT that
        # goes wrong changes nothing for the task, so it is only noted.
        log.debug("smtp quit failed", extra={"event": "smtp_quit_failed", "error": repr(exc)})
        client.close()


async def send_email(payload: SendEmailPayload, ctx: TaskContext) -> dict[str, Any]:
    previous = ctx.previous_result
    if isinstance(previous, dict) and previous.get("sent") is True:
        return previous

    settings = ctx.settings
    sender = settings.mail_sender
    names = list(payload.attached_files or [])
    attachments = await asyncio.to_thread(_read_attachments, ctx, names)
    message_id = message_id_for(ctx.task_id, sender)
    try:
        message = build_message(
            payload, sender=sender, message_id=message_id, attachments=attachments
        )
    except (ValueError, TypeError) as exc:
        raise PermanentError(f"cannot build the message: {exc}") from None

    password = settings.mail_password.get_secret_value() if settings.mail_password else None
    login = bool(settings.mail_username and password)
    client = aiosmtplib.SMTP(
        hostname=settings.mail_host,
        port=settings.mail_port,
        username=settings.mail_username if login else None,
        password=password if login else None,
        use_tls=settings.mail_use_tls,
        # None: upgrade with STARTTLS whenever the server offers it.
        start_tls=False if settings.mail_use_tls else None,
        timeout=min(SMTP_TIMEOUT_SECONDS, settings.timeout_for("send_email")),
    )
    try:
        try:
            await client.connect()
            await client.send_message(
                message, sender=parseaddr(sender)[1] or sender, recipients=[payload.to]
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _classify(exc) from None
        result = {"message_id": message_id, "to": payload.to, "attachments": names, "sent": True}
        # Saved before QUIT and before returning: from here on a retry must
        # not send again, whatever happens to this attempt.
        if ctx.save_progress is not None:
            await ctx.save_progress(result)
    finally:
        await _close_quietly(client)
    log.info(
        "email sent",
        extra={"event": "email_sent", "task_id": str(ctx.task_id), "attempt": ctx.attempt},
    )
    return result


TASK_TYPE = TaskType(
    name="send_email",
    payload_model=SendEmailPayload,
    handler=send_email,
    description="Send an HTML email with optional attachments from the owner's files.",
)
