"""How the operator commands print: durations and times as psql's helpers
print them, aligned tables, and JSON with RFC 3339 times and durations in
seconds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

ERROR_WIDTH = 90


def format_duration(value: timedelta | float | None) -> str:
    """Like taskflow_format_duration() in SQL: 850ms, 4.2s, 46s, 3m 12s, 2h 5m, 3d 4h."""
    if value is None:
        return "-"
    seconds = abs(value.total_seconds() if isinstance(value, timedelta) else value)
    whole = int(seconds)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    if seconds < 3600:
        return f"{whole // 60}m {whole % 60}s"
    if seconds < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def format_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def shorten(text: str | None, width: int = ERROR_WIDTH) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def json_summary(value: Any) -> str | None:
    return None if value is None else shorten(json.dumps(value, default=str), 200)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[cell(value) for value in row] for row in rows]
    numeric = [
        bool(rows)
        and all(
            isinstance(row[i], int | float | Decimal) and not isinstance(row[i], bool)
            for row in rows
        )
        for i in range(len(headers))
    ]
    widths = [
        max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(widths[i]) if numeric[i] else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def to_jsonable(value: Any) -> Any:
    """Durations as seconds, times as RFC 3339 UTC, ids and decimals as JSON scalars."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, UUID):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # inet addresses and the like


def render_json(value: Any) -> str:
    return json.dumps(to_jsonable(value), indent=2) + "\n"
