"""The transition table and the payload rules of SPEC §5."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from taskflow.models import (
    CANCELLABLE,
    EDITABLE,
    RETRYABLE,
    TERMINAL,
    TRANSITIONS,
    DownloadFilesPayload,
    ProcessImagePayload,
    SendEmailPayload,
    TaskStatus,
    can_transition,
)

S = TaskStatus

# The diagram of SPEC §3, written out edge by edge, independently of models.py.
SPEC_EDGES = {
    (S.BLOCKED, S.QUEUED),
    (S.BLOCKED, S.POSTPONED),
    (S.BLOCKED, S.CANCELLED),
    (S.POSTPONED, S.QUEUED),
    (S.RETRYING, S.QUEUED),
    (S.QUEUED, S.PROCESSING),
    (S.PROCESSING, S.DONE),
    (S.PROCESSING, S.RETRYING),
    (S.PROCESSING, S.FAILED),
    (S.PROCESSING, S.QUEUED),
    (S.POSTPONED, S.CANCELLED),
    (S.QUEUED, S.CANCELLED),
    (S.RETRYING, S.CANCELLED),
    (S.PROCESSING, S.CANCELLED),
    (S.FAILED, S.QUEUED),
    (S.CANCELLED, S.QUEUED),
}


@pytest.mark.parametrize("source", list(S))
@pytest.mark.parametrize("target", list(S))
def test_every_pair_matches_the_spec(source: TaskStatus, target: TaskStatus) -> None:
    assert can_transition(source, target) == ((source, target) in SPEC_EDGES)


def test_derived_sets() -> None:
    assert {S.DONE, S.FAILED, S.CANCELLED} == TERMINAL
    assert {S.BLOCKED, S.POSTPONED, S.QUEUED, S.RETRYING, S.PROCESSING} == CANCELLABLE
    assert {S.POSTPONED, S.QUEUED, S.RETRYING} == EDITABLE
    assert {S.FAILED, S.CANCELLED} == RETRYABLE
    assert set(TRANSITIONS) == set(S)
    assert TRANSITIONS[S.DONE] == frozenset()


# ----- payloads (SPEC §5)


def test_send_email_rules() -> None:
    SendEmailPayload(to="a@example.com", subject="hi")
    SendEmailPayload(to="a@example.com", body="<b>x</b>")
    SendEmailPayload(to="a@example.com", attached_files=["report.pdf"])
    with pytest.raises(ValidationError, match="at least one of"):
        SendEmailPayload(to="a@example.com")
    with pytest.raises(ValidationError):
        SendEmailPayload(subject="hi")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SendEmailPayload(to="not-an-address", subject="hi")
    with pytest.raises(ValidationError):
        SendEmailPayload(to="a@example.com\r\nBcc: x@evil.com", subject="hi")
    with pytest.raises(ValidationError, match="line breaks"):
        SendEmailPayload(to="a@example.com", subject="hi\r\nBcc: x@evil.com")
    for bad in ("../etc/passwd", "/etc/passwd", "a/b", ".hidden", "x\x00y", "a\\b", ""):
        with pytest.raises(ValidationError):
            SendEmailPayload(to="a@example.com", attached_files=[bad])
    with pytest.raises(ValidationError, match="extra"):
        SendEmailPayload.model_validate({"to": "a@example.com", "subject": "s", "cc": "x"})


def test_process_image_rules() -> None:
    ProcessImagePayload(path="a.png")
    ProcessImagePayload(
        path="a.png",
        blur=1,
        sharpen=1,
        gamma=1,
        contrast=1,
        brightness=1,
        saturation=1,
        grayscale=True,
        invert=True,
    )
    ProcessImagePayload(path="a.png", contrast=-100, brightness=100, saturation=0)
    for field in ("blur", "sharpen", "gamma"):
        for bad in (0, -1):
            with pytest.raises(ValidationError):
                ProcessImagePayload.model_validate({"path": "a.png", field: bad})
    for field in ("contrast", "brightness", "saturation"):
        for bad in (-101, 101, 1000):
            with pytest.raises(ValidationError):
                ProcessImagePayload.model_validate({"path": "a.png", field: bad})
    with pytest.raises(ValidationError):
        ProcessImagePayload.model_validate({"blur": 1})
    with pytest.raises(ValidationError):
        ProcessImagePayload.model_validate({"path": "a.png", "grayscale": "yes"})
    with pytest.raises(ValidationError):
        ProcessImagePayload.model_validate({"path": "../a.png"})


def test_download_files_rules() -> None:
    DownloadFilesPayload(urls=["https://go.dev/"])
    DownloadFilesPayload(urls=[f"http://example.com/{i}" for i in range(20)])
    for bad in (
        [],
        [f"http://example.com/{i}" for i in range(21)],
        ["ftp://example.com/x"],
        ["file:///etc/passwd"],
        ["javascript:alert(1)"],
        ["http://"],
        ["http://user:pw@example.com/"],
        ["http://example.com/a b"],
        ["http://example.com:99999/"],
        ["http://example.com/" + "a" * 3000],
        "http://example.com/",
    ):
        with pytest.raises(ValidationError):
            DownloadFilesPayload.model_validate({"urls": bad})


@pytest.mark.parametrize("name", ["", "9a", "Send", "a-b", "a\n", "a" * 65])
def test_a_plugin_type_with_a_bad_name_is_refused_at_registration(name: str) -> None:
    from taskflow.errors import ConfigError
    from taskflow.handlers import Registry, TaskType

    async def handler(payload: SendEmailPayload, ctx: object) -> None:
        return None

    with pytest.raises(ConfigError, match="names are"):
        Registry().register(TaskType(name, SendEmailPayload, handler))
    Registry().register(TaskType("a" * 64, SendEmailPayload, handler))
