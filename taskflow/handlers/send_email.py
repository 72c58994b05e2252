"""send_email: one message through the configured SMTP server (``MAIL_*``).

- ``body`` is HTML; the message is ``multipart/alternative`` with a plain-text
  version derived from it, and ``multipart/mixed`` around that when files are
  attached. Attachments are names of the owner's files, typed with
  :mod:`mimetypes` (``application/octet-stream`` when unknown).
- Headers are built by :class:`email.message.EmailMessage` under the SMTP
  policy, which refuses CR/LF in any header value; the payload model already
  rejects them, and text that the email package would decode as RFC 2047
  encoded words (which may hold a CR/LF) is handed to it already encoded, so
  nothing a user types can add a header or a recipient. The envelope
  recipient is exactly ``to``.
- Connection: implicit TLS when ``MAIL_USE_TLS``, otherwise STARTTLS whenever
  the server offers it; certificates are checked against the system trust
  store. Login happens only when both ``MAIL_USERNAME`` and ``MAIL_PASSWORD``
  are set, and only over TLS: without ``MAIL_USE_TLS`` a server that does not
  offer STARTTLS gets neither AUTH nor the message.
- Everything that grows with the payload (reading the attachments, deriving
  the text, encoding, flattening the message) runs in a thread, in time linear
  in its size, so the worker's event loop keeps heartbeating its leases and
  running its other tasks meanwhile.
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
import base64
import logging
import mimetypes
import re
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr
from typing import Any

import aiosmtplib
from aiosmtplib.email import flatten_message

from taskflow.errors import (
    FileNotFound,
    HandlerError,
    PermanentError,
    TransientError,
    ValidationFailed,
)
from taskflow.handlers import TaskContext, TaskType
from taskflow.handlers.html_text import html_to_text
from taskflow.models import SendEmailPayload

log = logging.getLogger(__name__)

# Most providers refuse messages above 25-35 MB; base64 adds a third on top.
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
SMTP_TIMEOUT_SECONDS = 30.0
# 39 bytes make 52 characters of base64, an encoded word of 64: with the
# "Subject: " before it, within the 78 a header line should not pass.
_ENCODED_WORD_BYTES = 39
NO_STARTTLS = "the SMTP server does not offer STARTTLS; refusing to send credentials unencrypted"

_ENCODING_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}
# Matched against the operator's MAIL_FROM only; its bounded repetition
# cannot backtrack over more than 253 characters.
_DOMAIN_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


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
        if "=?" in payload.subject:
            message.set_raw("Subject", encoded_words(payload.subject))
        else:
            message["Subject"] = payload.subject
        if message["Subject"] != payload.subject:
            raise ValueError("the subject does not survive as a header value")
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id
    if payload.body:
        message.set_content(html_to_text(payload.body))
        message.add_alternative(payload.body, subtype="html")
    elif not attachments:
        message.set_content("")
    for name, content in attachments:
        maintype, subtype = attachment_type(name)
        # An RFC 2231 value (filename*=utf-8''...) is never read as encoded words.
        filename = ("utf-8", "", name) if "=?" in name else name
        message.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    named = [part.get_filename() for part in message.iter_attachments()]
    if named != [name for name, _ in attachments]:
        raise ValueError("an attachment's name does not survive as a header value")
    return message


def encoded_words(text: str) -> str:
    """``text`` as a folded run of RFC 2047 encoded words, for a header value.

    The email package decodes any encoded word in a value it is given, and
    one may hold any character: a subject "=?utf-8?q?hi=0D=0ABcc:_x?=" would
    become a line break and a header of the user's own, and "=?utf-8?q?=FF?="
    makes its folding crash. Text that holds "=?" is therefore encoded here,
    as a whole, in lines short enough that the package writes them as they are;
    a reader decodes it back to the text as typed."""
    words: list[str] = []
    chunk = bytearray()
    for character in text:
        encoded = character.encode()
        if len(chunk) + len(encoded) > _ENCODED_WORD_BYTES:
            words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode()}?=")
            chunk.clear()
        chunk += encoded
    words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode()}?=")
    return "\n ".join(words)


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


def compose_message(
    payload: SendEmailPayload, ctx: TaskContext, *, sender: str, message_id: str
) -> EmailMessage:
    """Runs in a thread: reading the files, deriving the text and base64 all
    take time in proportion to the payload."""
    attachments = _read_attachments(ctx, list(payload.attached_files or []))
    try:
        return build_message(payload, sender=sender, message_id=message_id, attachments=attachments)
    except (ValueError, TypeError) as exc:
        raise PermanentError(f"cannot build the message: {exc}") from None


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
    try:
        if client.is_connected:
            await client.quit()
    except (aiosmtplib.SMTPException, OSError) as exc:
        # The message is accepted (or the attempt already failed): a QUIT that
        # goes wrong changes nothing for the task, so it is only noted.
        log.debug("smtp quit failed", extra={"event": "smtp_quit_failed", "error": repr(exc)})
    finally:
        # Also when the attempt is stopped (timeout, lost lease, shutdown)
        # while QUIT waits for its reply: the socket is closed here, not left
        # to the garbage collector. Closing twice is harmless.
        client.close()


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO (HELO for a server that knows no better), once per session."""
    if not client.is_ehlo_or_helo_needed:
        return
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        await client.helo()


async def _secure(client: aiosmtplib.SMTP, *, login: bool) -> None:
    """STARTTLS whenever offered; with credentials, required. Without them the
    upgrade stays opportunistic, as a plain relay on port 25 offers none."""
    await _greet(client)
    if client.supports_extension("starttls"):
        await client.starttls()
    elif login:
        # Transient, like a certificate that does not verify: the server may
        # have been set up without STARTTLS, or someone on the path may have
        # stripped it from the EHLO reply. Either way the task itself is fine,
        # and a later attempt risks nothing, as it stops here again before AUTH.
        raise TransientError(NO_STARTTLS)


async def _transmit(
    client: aiosmtplib.SMTP, message: EmailMessage, *, sender: str, recipient: str
) -> None:
    """``SMTP.send_message``, but flattening the message (up to ~28 MB with
    its attachments) in a thread instead of on the event loop. What remains
    on the loop is aiosmtplib's own pass over the bytes in ``sendmail``
    (line endings, dot-stuffing): linear, about half a second at the cap."""
    await _greet(client)
    options: list[str] = []
    utf8 = not (sender + recipient).isascii()
    if utf8:
        if not client.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported(
                "an address is not ASCII and the server does not offer SMTPUTF8"
            )
        options.append("SMTPUTF8")
    cte_type = "7bit"
    if client.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
        cte_type = "8bit"
    data = await asyncio.to_thread(flatten_message, message, utf8=utf8, cte_type=cte_type)
    await client.sendmail(sender, [recipient], data, mail_options=options)


async def send_email(payload: SendEmailPayload, ctx: TaskContext) -> dict[str, Any]:
    previous = ctx.previous_result
    if isinstance(previous, dict) and previous.get("sent") is True:
        return previous

    settings = ctx.settings
    sender = settings.mail_sender
    names = list(payload.attached_files or [])
    message_id = message_id_for(ctx.task_id, sender)
    message = await asyncio.to_thread(
        compose_message, payload, ctx, sender=sender, message_id=message_id
    )

    username = settings.mail_username
    password = settings.mail_password.get_secret_value() if settings.mail_password else None
    credentials = (username, password) if username and password else None
    client = aiosmtplib.SMTP(
        hostname=settings.mail_host,
        port=settings.mail_port,
        use_tls=settings.mail_use_tls,
        # STARTTLS and login are done below, where the rules for them live.
        start_tls=False,
        timeout=min(SMTP_TIMEOUT_SECONDS, settings.timeout_for("send_email")),
    )
    try:
        try:
            await client.connect()
            if not settings.mail_use_tls:
                await _secure(client, login=credentials is not None)
            if credentials is not None:
                await client.login(*credentials)
            await _transmit(
                client, message, sender=parseaddr(sender)[1] or sender, recipient=payload.to
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
