"""Logging: one JSON object per line by default, written off the event loop.

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
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_SENSITIVE_KEYS = re.compile(r"pass(word)?|secret|token|authorization|cookie|body", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+")


def _clean(key: str, value: Any) -> Any:
    if _SENSITIVE_KEYS.search(key):
        return "[redacted]"
    if isinstance(value, str):
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


_listener: logging.handlers.QueueListener | None = None
_stream: logging.Handler | None = None


def setup_logging(component: str, *, level: str = "INFO", log_format: str = "json") -> None:
    """Route every record through a queue to a thread that writes stderr, so a
    slow terminal or pipe never blocks the event loop."""
    global _listener, _stream
    if _listener is not None:
        _listener.stop()
    stream = logging.StreamHandler(sys.stderr)
    _stream = stream
    stream.setFormatter(JsonFormatter(component) if log_format == "json" else TextFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level)
    for noisy in ("aiormq", "aio_pika", "asyncio", "hpack", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel("WARNING")
    _listener = logging.handlers.QueueListener(records, stream, respect_handler_level=False)
    _listener.start()
    atexit.register(stop_logging)


def stop_logging() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def write_directly() -> None:
    """Drain the queue and write synchronously from now on: for the last lines
    of a process whose server may re-raise a signal (uvicorn does) and exit
    before ``atexit`` would run."""
    stop_logging()
    if _stream is not None:
        logging.getLogger().handlers[:] = [_stream]
