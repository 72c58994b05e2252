"""send_email against a real aiosmtpd server on loopback."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from taskflow.config import Settings
from taskflow.errors import PermanentError, TransientError
from taskflow.handlers.html_text import html_to_text
from taskflow.handlers.send_email import TASK_TYPE, message_id_for, send_email
from taskflow.models import SendEmailPayload
from tests import servers
from tests.servers import (
    Certificate,
    CommandLoggingSMTPTestServer,
    ProgressRecorder,
    SMTPTestServer,
    handler_context,
    handler_settings,
    png_bytes,
    refused_port,
)

# Fixtures from tests.servers, bound here so pytest finds them in this module.
smtp_server = servers.smtp_server
smtp_starttls_server = servers.smtp_starttls_server
tls_certificate = servers.tls_certificate

HTML = (
    "<html><head><title>ignored</title><style>p {color: red}</style></head><body>"
    "<h1>Report</h1><p>Hello <b>Bob</b>,<br>see <a href='https://example.com/r'>the report</a>."
    "</p><ul><li>one</li><li>two</li></ul><script>alert(1)</script></body></html>"
)


def settings_for(server: SMTPTestServer, tmp_path: Path, **overrides: Any) -> Settings:
    return handler_settings(
        tmp_path / "files",
        mail_host=server.host,
        mail_port=server.port,
        mail_from="TaskFlow <robot@taskflow.test>",
        **overrides,
    )


def test_task_type_is_registered_under_its_name() -> None:
    assert TASK_TYPE.name == "send_email"
    assert TASK_TYPE.payload_model is SendEmailPayload


async def test_message_headers_parts_and_attachments(
    smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    settings = settings_for(smtp_server, tmp_path)
    progress = ProgressRecorder()
    task_id = uuid.uuid4()
    ctx = handler_context(settings, task_type="send_email", task_id=task_id, progress=progress)
    image = png_bytes(3, 2)
    ctx.files.write_atomic("chart.png", image)
    ctx.files.write_atomic("report.pdf", b"%PDF-1.4 fake")
    ctx.files.write_atomic("data.weird-ext", b"\x00\x01\x02")
    payload = SendEmailPayload(
        to="bob@example.com",
        subject="Monthly report ✓",
        body=HTML,
        attached_files=["chart.png", "report.pdf", "data.weird-ext"],
    )

    result = await send_email(payload, ctx)

    assert len(smtp_server.messages) == 1
    received = smtp_server.messages[0]
    assert received.rcpt_tos == ["bob@example.com"]
    assert received.mail_from == "robot@taskflow.test"
    assert received.login is None
    message = received.message
    assert message["To"] == "bob@example.com"
    assert message["From"] == "TaskFlow <robot@taskflow.test>"
    assert message["Subject"] == "Monthly report ✓"
    assert message["Message-ID"] == f"<taskflow.{task_id}@taskflow.test>"
    assert message["Date"]
    assert message.get_content_type() == "multipart/mixed"

    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert html.get_content().strip() == HTML
    plain = text.get_content().replace("\r\n", "\n")
    for unwanted in ("<", "alert", "color: red"):
        assert unwanted not in plain
    assert "ignored" not in plain
    assert "Hello Bob," in plain
    assert "the report (https://example.com/r)" in plain
    assert "- one\n- two" in plain

    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert set(attachments) == {"chart.png", "report.pdf", "data.weird-ext"}
    assert attachments["chart.png"].get_content_type() == "image/png"
    assert attachments["chart.png"].get_content() == image
    assert attachments["report.pdf"].get_content_type() == "application/pdf"
    assert attachments["report.pdf"].get_content() == b"%PDF-1.4 fake"
    assert attachments["data.weird-ext"].get_content_type() == "application/octet-stream"
    assert attachments["data.weird-ext"].get_content() == b"\x00\x01\x02"

    assert result == {
        "message_id": f"<taskflow.{task_id}@taskflow.test>",
        "to": "bob@example.com",
        "attachments": ["chart.png", "report.pdf", "data.weird-ext"],
        "sent": True,
    }
    assert progress.saved == [result], "the send is recorded before returning"


async def test_subject_only_and_attachment_only(
    smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    settings = settings_for(smtp_server, tmp_path)
    ctx = handler_context(settings, task_type="send_email")
    ctx.files.write_atomic("notes.txt", "héllo".encode())
    await send_email(SendEmailPayload(to="a@example.com", subject="just a subject"), ctx)
    await send_email(SendEmailPayload(to="a@example.com", attached_files=["notes.txt"]), ctx)

    first, second = (received.message for received in smtp_server.messages)
    assert first["Subject"] == "just a subject"
    assert first.get_content_type() == "text/plain"
    assert second["Subject"] is None
    [attachment] = list(second.iter_attachments())
    assert attachment.get_content_type() == "text/plain"
    assert attachment.get_payload(decode=True) == "héllo".encode()


def test_payload_model_rejects_header_injection() -> None:
    for fields in (
        {"to": "bob@example.com", "subject": "hi\r\nBcc: eve@evil.test"},
        {"to": "bob@example.com", "subject": "hi\nBcc: eve@evil.test"},
        {"to": "bob@example.com\r\nBcc: eve@evil.test", "subject": "hi"},
        {"to": "bob@example.com, eve@evil.test", "subject": "hi"},
        {"to": "bob@example.com", "attached_files": ["../../etc/passwd"]},
        {"to": "bob@example.com", "attached_files": ["/etc/passwd"]},
        {"to": "bob@example.com", "attached_files": [".hidden"]},
        {"to": "bob@example.com"},
    ):
        with pytest.raises(ValidationError):
            SendEmailPayload.model_validate(fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"to": "bob@example.com", "subject": "hi\r\nBcc: eve@evil.test"},
        {"to": "bob@example.com\r\nBcc: eve@evil.test", "subject": "hi"},
        {"to": "bob@example.com>, <eve@evil.test", "subject": "hi"},
    ],
)
async def test_injection_is_refused_even_past_the_model(
    smtp_server: SMTPTestServer, tmp_path: Path, fields: dict[str, Any]
) -> None:
    """A payload that skipped validation (model_construct) still cannot add
    a header or a recipient: the email package refuses to build it."""
    ctx = handler_context(settings_for(smtp_server, tmp_path), task_type="send_email")
    payload = SendEmailPayload.model_construct(**fields)
    with pytest.raises(PermanentError):
        await send_email(payload, ctx)
    assert smtp_server.messages == []


async def test_encoded_words_cannot_smuggle_in_a_header(
    smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    """The email package decodes RFC 2047 encoded words in the values it is
    given, and one may hold a line break: a subject or a file name that is one
    must reach the wire as text, never as a header of its own."""
    injection = "=?utf-8?q?hi=0D=0ABcc:_eve@evil.test=0D=0AX-Injected:_1?="
    name = "=?utf-8?b?YQ0KQmNjOiBldmVAZXZpbC50ZXN0DQpYLUluamVjdGVkOiAx?=.txt"
    ctx = handler_context(settings_for(smtp_server, tmp_path), task_type="send_email")
    ctx.files.write_atomic(name, b"attached")
    payload = SendEmailPayload(
        to="bob@example.com", subject=injection, body="<p>hi</p>", attached_files=[name]
    )

    await send_email(payload, ctx)

    [received] = smtp_server.messages
    assert received.rcpt_tos == ["bob@example.com"]
    lines = received.data.splitlines()
    for forbidden in (b"bcc:", b"x-injected:"):
        assert not [line for line in lines if line.lower().startswith(forbidden)], lines
    message = received.message
    assert sorted(message.keys()) == sorted(
        ["From", "To", "Subject", "Date", "Message-ID", "Content-Type", "MIME-Version"]
    )
    [attachment] = list(message.iter_attachments())
    assert sorted(attachment.keys()) == sorted(
        ["Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "MIME-Version"]
    )
    assert attachment.get_payload(decode=True) == b"attached"


@pytest.mark.parametrize(
    "subject",
    [
        "=?utf-8?q?hi=0D=0ABcc:_eve@evil.test?=",
        "price =?utf-8?q?=41?= is not an A",
        "\u200b =?utf-8?q?=FF?= bytes that are no UTF-8, and a long tail " + "é" * 900,
    ],
    ids=["a header in disguise", "an encoded word", "undecodable bytes"],
)
async def test_a_subject_that_looks_encoded_arrives_as_typed(
    smtp_server: SMTPTestServer, tmp_path: Path, subject: str
) -> None:
    ctx = handler_context(settings_for(smtp_server, tmp_path), task_type="send_email")
    await send_email(SendEmailPayload(to="bob@example.com", subject=subject), ctx)
    [received] = smtp_server.messages
    assert received.message["Subject"] == subject
    assert max(len(line) for line in received.data.splitlines()) <= 78


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/passwd", "a/b", ".hidden", "x\x00y"])
async def test_hostile_attachment_names_are_permanent_errors(
    smtp_server: SMTPTestServer, tmp_path: Path, name: str
) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "outside.txt").write_bytes(b"another user's data")
    ctx = handler_context(settings_for(smtp_server, tmp_path), task_type="send_email")
    payload = SendEmailPayload.model_construct(to="bob@example.com", attached_files=[name])
    with pytest.raises(PermanentError, match="attachment"):
        await send_email(payload, ctx)
    assert smtp_server.messages == []


async def test_symlinked_attachment_is_refused(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"server secrets")
    ctx = handler_context(settings_for(smtp_server, tmp_path), task_type="send_email")
    (ctx.files.ensure_root() / "innocent.txt").symlink_to(secret)
    payload = SendEmailPayload(to="bob@example.com", attached_files=["innocent.txt"])
    with pytest.raises(PermanentError, match="symbolic link"):
        await send_email(payload, ctx)
    assert smtp_server.messages == []


async def test_missing_attachment_is_permanent(smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    ctx = handler_context(settings_for(smtp_server, tmp_path), task_type="send_email")
    payload = SendEmailPayload(to="bob@example.com", attached_files=["nope.pdf"])
    with pytest.raises(PermanentError, match=r"'nope\.pdf' not found"):
        await send_email(payload, ctx)
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    ("where", "reply", "expected"),
    [
        ("data", "554 5.7.1 Message rejected", PermanentError),
        ("data", "552 5.3.4 Message too big", PermanentError),
        ("data", "451 4.3.0 Try again later", TransientError),
        ("rcpt", "550 5.1.1 No such user", PermanentError),
        ("rcpt", "450 4.2.1 Mailbox busy", TransientError),
    ],
)
async def test_smtp_replies_decide_permanent_or_transient(
    smtp_server: SMTPTestServer,
    tmp_path: Path,
    where: str,
    reply: str,
    expected: type[Exception],
) -> None:
    if where == "data":
        smtp_server.data_reply = reply
    else:
        smtp_server.rcpt_reply = reply
    progress = ProgressRecorder()
    ctx = handler_context(
        settings_for(smtp_server, tmp_path), task_type="send_email", progress=progress
    )
    with pytest.raises(expected) as caught:
        await send_email(SendEmailPayload(to="bob@example.com", subject="hi"), ctx)
    assert reply.split()[0] in str(caught.value)
    assert smtp_server.messages == []
    assert progress.saved == [], "nothing was sent, so nothing is recorded as sent"


async def test_connection_refused_is_transient(tmp_path: Path) -> None:
    settings = handler_settings(tmp_path / "files", mail_host="127.0.0.1", mail_port=refused_port())
    ctx = handler_context(settings, task_type="send_email")
    with pytest.raises(TransientError):
        await send_email(SendEmailPayload(to="bob@example.com", subject="hi"), ctx)


async def test_a_retry_after_a_recorded_send_does_not_send_again(
    smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    settings = settings_for(smtp_server, tmp_path)
    task_id = uuid.uuid4()
    payload = SendEmailPayload(to="bob@example.com", subject="once only")
    first_progress = ProgressRecorder()
    first = handler_context(
        settings, task_type="send_email", task_id=task_id, progress=first_progress
    )
    result = await send_email(payload, first)
    assert len(smtp_server.messages) == 1

    # The worker died after the send: the next attempt sees the saved progress.
    second = handler_context(
        settings,
        task_type="send_email",
        task_id=task_id,
        attempt=2,
        previous_result=first_progress.last,
    )
    assert await send_email(payload, second) == result
    assert len(smtp_server.messages) == 1


async def test_message_id_is_stable_across_attempts(
    smtp_server: SMTPTestServer, tmp_path: Path
) -> None:
    settings = settings_for(smtp_server, tmp_path)
    task_id = uuid.uuid4()
    payload = SendEmailPayload(to="bob@example.com", subject="retry me")
    smtp_server.data_reply = "451 4.3.0 later"
    with pytest.raises(TransientError):
        await send_email(
            payload, handler_context(settings, task_type="send_email", task_id=task_id)
        )
    smtp_server.data_reply = None
    result = await send_email(
        payload, handler_context(settings, task_type="send_email", task_id=task_id, attempt=2)
    )
    assert result["message_id"] == message_id_for(task_id, settings.mail_sender)
    assert smtp_server.messages[0].message["Message-ID"] == result["message_id"]


async def test_login_only_when_username_and_password_are_set_and_only_over_starttls(
    tls_certificate: Certificate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_certificate.cert_path))
    with CommandLoggingSMTPTestServer(
        starttls=tls_certificate.server_context(), credentials={"robot": "s3cret"}
    ) as server:
        with_login = settings_for(server, tmp_path, mail_username="robot", mail_password="s3cret")
        await send_email(
            SendEmailPayload(to="a@example.com", subject="with login"),
            handler_context(with_login, task_type="send_email"),
        )
        with_login_commands = list(server.commands)
        username_only = settings_for(server, tmp_path, mail_username="robot")
        await send_email(
            SendEmailPayload(to="a@example.com", subject="no login"),
            handler_context(username_only, task_type="send_email"),
        )
        wrong = settings_for(server, tmp_path, mail_username="robot", mail_password="wrong")
        with pytest.raises(PermanentError, match="535"):
            await send_email(
                SendEmailPayload(to="a@example.com", subject="bad login"),
                handler_context(wrong, task_type="send_email"),
            )
    assert [(m.message["Subject"], m.login, m.tls) for m in server.messages] == [
        ("with login", "robot", True),
        ("no login", None, True),
    ]
    assert set(server.failed_logins) == {"robot"}
    # The upgrade comes first; AUTH only on the encrypted session.
    assert with_login_commands == [
        "EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"
    ]  # fmt: skip


async def test_credentials_are_never_sent_to_a_server_without_starttls(tmp_path: Path) -> None:
    """A server (or someone in the middle, stripping the offer from the EHLO
    reply) that offers AUTH but not STARTTLS: the attempt fails before AUTH,
    and nothing, the message included, is sent in clear."""
    with CommandLoggingSMTPTestServer(credentials={"robot": "s3cret"}) as server:
        settings = settings_for(server, tmp_path, mail_username="robot", mail_password="s3cret")
        progress = ProgressRecorder()
        ctx = handler_context(settings, task_type="send_email", progress=progress)
        with pytest.raises(TransientError) as caught:
            await send_email(SendEmailPayload(to="bob@example.com", subject="secret"), ctx)
    assert caught.value.message == (
        "the SMTP server does not offer STARTTLS; refusing to send credentials unencrypted"
    )
    assert server.commands == ["EHLO", "QUIT"]
    assert "AUTH" not in server.commands
    assert server.messages == []
    assert server.failed_logins == []
    assert progress.saved == []


async def test_without_credentials_a_server_without_starttls_still_gets_the_message(
    tmp_path: Path,
) -> None:
    with CommandLoggingSMTPTestServer() as server:
        ctx = handler_context(settings_for(server, tmp_path), task_type="send_email")
        await send_email(SendEmailPayload(to="bob@example.com", subject="plain"), ctx)
    [received] = server.messages
    assert received.tls is False
    assert received.login is None
    assert "AUTH" not in server.commands


async def test_starttls_is_used_when_offered(
    smtp_starttls_server: SMTPTestServer,
    tls_certificate: Certificate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The system trust store honours SSL_CERT_FILE, as it would for a private CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_certificate.cert_path))
    ctx = handler_context(settings_for(smtp_starttls_server, tmp_path), task_type="send_email")
    await send_email(SendEmailPayload(to="bob@example.com", subject="secret"), ctx)
    [received] = smtp_starttls_server.messages
    assert received.tls is True


async def test_untrusted_starttls_certificate_is_not_accepted(
    smtp_starttls_server: SMTPTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    ctx = handler_context(settings_for(smtp_starttls_server, tmp_path), task_type="send_email")
    with pytest.raises(TransientError):
        await send_email(SendEmailPayload(to="bob@example.com", subject="secret"), ctx)
    assert smtp_starttls_server.messages == []


async def test_implicit_tls(
    tls_certificate: Certificate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_certificate.cert_path))
    with SMTPTestServer(
        implicit_tls=tls_certificate.server_context(), credentials={"robot": "s3cret"}
    ) as server:
        settings = settings_for(server, tmp_path, mail_use_tls=True)
        await send_email(
            SendEmailPayload(to="bob@example.com", subject="tls"),
            handler_context(settings, task_type="send_email"),
        )
        with_login = settings_for(
            server, tmp_path, mail_use_tls=True, mail_username="robot", mail_password="s3cret"
        )
        await send_email(
            SendEmailPayload(to="bob@example.com", subject="tls and login"),
            handler_context(with_login, task_type="send_email"),
        )
    assert [(m.message["Subject"], m.login, m.tls) for m in server.messages] == [
        ("tls", None, True),
        ("tls and login", "robot", True),
    ]


def test_html_to_text() -> None:
    assert html_to_text("<p>a</p><p>b</p>") == "a\n\nb"
    assert html_to_text("x &amp; y &lt;z&gt;") == "x & y <z>"
    assert html_to_text("<pre>  keep\n  lines</pre>") == "  keep\n  lines"
    assert html_to_text("<a href='mailto:a@b.c'>a@b.c</a>") == "a@b.c"
    assert html_to_text("<img alt='logo'> hi") == "logo hi"
    assert html_to_text("<p>one <br> two</p>   <p> three </p>") == "one\ntwo\n\nthree"
