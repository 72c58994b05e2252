"""Logging: one JSON object per line, or text for a person at a terminal,
written off the event loop.

Messages are constant strings; context goes in ``extra`` with stable keys
(``event``, ``task_id``, ``task_type``, ``attempt``, ``worker_id``,
``request_id``). Tokens, passwords, message bodies and file contents are never
logged; the redaction below is a safety net, not the mechanism.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import re
import sys
import threading
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_SENSITIVE_KEYS = re.compile(r"pass(word)?|secret|token|authorization|cookie|body", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+")


_sensitive_key_cache: dict[str, bool] = {}


def _is_sensitive(key: str) -> bool:
    # A handful of distinct keys, seen on every line: decide each once.
    known = _sensitive_key_cache.get(key)
    if known is None:
        known = _sensitive_key_cache[key] = bool(_SENSITIVE_KEYS.search(key))
    return known


def _clean(key: str, value: Any) -> Any:
    if _is_sensitive(key):
        return "[redacted]"
    if isinstance(value, str) and "Bearer" in value:
        return _BEARER.sub(r"\1[redacted]", value)
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "component": self.component,
            "pid": record.process,
            "msg": _BEARER.sub(r"\1[redacted]", record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = _clean(key, value)
        if record.exc_info:
            entry["exc"] = "".join(traceback.format_exception(*record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={_clean(key, value)}"
            for key, value in vars(record).items()
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
        )
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: "
        line += _BEARER.sub(r"\1[redacted]", record.getMessage())
        if extras:
            line += f" [{extras}]"
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info))
        return line


class _RecordQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are. The stock handler
    formats each record once here and again in the thread, and copies it; our
    messages are constant strings, so only a library's ``%`` arguments need
    merging now, before the objects they name can change."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        return record


class _Writer(threading.Thread):
    """Formats and writes what the queue holds, a batch of lines per write
    and flush: one system call per burst of records, not one per record."""

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord | None],
        stream: logging.StreamHandler[Any],
    ) -> None:
        super().__init__(name="taskflow-log-writer", daemon=True)
        self.records = records
        self.stream = stream

    def run(self) -> None:
        while True:
            batch = [self.records.get()]
            while len(batch) < 1000:
                try:
                    batch.append(self.records.get_nowait())
                except queue.Empty:
                    break
            stopping = batch[-1] is None
            lines = []
            for record in batch:
                if record is None:
                    continue
                try:
                    lines.append(self.stream.format(record))
                except Exception:
                    self.stream.handleError(record)
            if lines:
                try:
                    self.stream.stream.write("\n".join(lines) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass  # stderr closed: nowhere left to say it
            if stopping:
                return


_writer: _Writer | None = None
_records: queue.SimpleQueue[logging.LogRecord | None] | None = None
_stream: logging.StreamHandler[Any] | None = None


def choose_log_format(configured: str | None, stream: TextIO) -> str:
    """The format asked for; if none, text for a person reading a terminal and
    JSON for whatever else reads the stream (a supervisor, a pipe, a file)."""
    if configured:
        return configured
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no fileno, or already closed
        return "json"


def setup_logging(component: str, *, level: str = "INFO", log_format: str | None = None) -> None:
    """Route every record through a queue to a thread that writes stderr, so a
    slow terminal or pipe never blocks the event loop. ``log_format`` None:
    see :func:`choose_log_format`."""
    global _writer, _records, _stream
    stop_logging()
    stream: logging.StreamHandler[Any] = logging.StreamHandler(sys.stderr)
    _stream = stream
    chosen = choose_log_format(log_format, sys.stderr)
    stream.setFormatter(JsonFormatter(component) if chosen == "json" else TextFormatter())
    records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    root = logging.getLogger()
    root.handlers[:] = [_RecordQueueHandler(records)]
    root.setLevel(level)
    for noisy in ("aiormq", "aio_pika", "asyncio", "hpack", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel("WARNING")
    _records = records
    _writer = _Writer(records, stream)
    _writer.start()
    atexit.register(stop_logging)


def stop_logging() -> None:
    """Write what is queued, then stop the writer thread."""
    global _writer, _records
    if _writer is not None and _records is not None:
        _records.put(None)
        _writer.join(timeout=5)
    _writer = _records = None


def write_directly() -> None:
    """Drain the queue and write synchronously from now on: for the last lines
    of a process whose server may re-raise a signal (uvicorn does) and exit
    before ``atexit`` would run."""
    stop_logging()
    if _stream is not None:
        logging.getLogger().handlers[:] = [_stream]
