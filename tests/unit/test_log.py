"""Log lines: JSON, or text for a terminal, written by a thread, secrets redacted."""

from __future__ import annotations

import logging
import os
import pty
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from taskflow import log as taskflow_log


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    taskflow_log.stop_logging()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restored_logging")
def test_json_lines_with_context_redaction_and_tracebacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    taskflow_log.setup_logging("api", level="INFO", log_format="json")
    logger = logging.getLogger("taskflow.test")
    logger.info("request", extra={"event": "http_request", "status": 201, "user_id": 7})
    logger.warning(
        "odd header",
        extra={"password": "hunter2", "header": "Bearer abc.def.ghi", "note": "no secret here"},
    )
    mutable = ["before"]
    logging.getLogger("library").warning("library says %s", mutable)
    mutable[0] = "after"  # formatted when logged, not when written
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        logger.error("failed", exc_info=exc, extra={"event": "crash"})
    logger.debug("not at INFO")
    taskflow_log.stop_logging()  # writes everything queued

    written = capsys.readouterr().err
    lines = [orjson.loads(line) for line in written.splitlines()]
    assert [line["msg"] for line in lines] == [
        "request",
        "odd header",
        "library says ['before']",
        "failed",
    ]
    first = lines[0]
    assert first["component"] == "api"
    assert first["level"] == "info"
    assert (first["event"], first["status"], first["user_id"]) == ("http_request", 201, 7)
    assert first["ts"].endswith("+00:00")
    assert lines[1]["password"] == "[redacted]"
    assert lines[1]["header"] == "Bearer [redacted]"
    assert lines[1]["note"] == "no secret here"
    assert "RuntimeError: boom" in lines[3]["exc"]
    assert "hunter2" not in written
    assert "abc.def.ghi" not in written


@pytest.mark.usefixtures("restored_logging")
def test_text_format_and_writing_directly_after_stop(capsys: pytest.CaptureFixture[str]) -> None:
    taskflow_log.setup_logging("worker", level="DEBUG", log_format="text")
    logging.getLogger("taskflow.test").debug("claimed", extra={"task_id": "t1"})
    taskflow_log.write_directly()
    logging.getLogger("taskflow.test").info("last words", extra={"event": "stopped"})
    text = capsys.readouterr().err
    assert "DEBUG   taskflow.test: claimed [task_id=t1]" in text
    assert text.rstrip().endswith("last words [event=stopped]")


def test_the_format_follows_the_terminal_unless_one_is_configured(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    read_end, write_end = os.pipe()
    with (
        os.fdopen(follower, "w") as terminal,
        os.fdopen(write_end, "w") as pipe,
        (tmp_path / "log").open("w") as file,
    ):
        assert taskflow_log.choose_log_format(None, terminal) == "text"
        assert taskflow_log.choose_log_format(None, pipe) == "json"
        assert taskflow_log.choose_log_format(None, file) == "json"
        assert taskflow_log.choose_log_format("json", terminal) == "json"
        assert taskflow_log.choose_log_format("text", pipe) == "text"
    assert taskflow_log.choose_log_format(None, terminal) == "json"  # closed: no terminal
    os.close(leader)
    os.close(read_end)


@pytest.mark.usefixtures("restored_logging")
def test_unconfigured_logging_writes_json_where_no_person_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    taskflow_log.setup_logging("worker")  # stderr is captured here: not a terminal
    logging.getLogger("taskflow.test").info("claimed", extra={"task_id": "t1"})
    taskflow_log.stop_logging()
    [line] = capsys.readouterr().err.splitlines()
    assert orjson.loads(line)["task_id"] == "t1"
