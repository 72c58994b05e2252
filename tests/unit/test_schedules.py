"""Cron expressions, time zones, DST and the missed-slot rule (taskflow.schedules),
with the clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from taskflow.models import ScheduleCreate, SchedulePatch
from taskflow.schedules import (
    Plan,
    check_timezone,
    latest_slot,
    next_slot,
    normalise_cron,
    plan_schedule,
)

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def slots(cron: str, timezone: str, start: datetime, count: int) -> list[datetime]:
    found = []
    at = start
    for _ in range(count):
        slot = next_slot(cron, timezone, at)
        assert slot is not None
        found.append(slot)
        at = slot
    return found


# ----- expressions and time zones


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("0 9 * * MON", "0 9 * * MON"),
        ("  */15   8-18 * *   1-5 ", "*/15 8-18 * * 1-5"),
        ("0 0 L * *", "0 0 L * *"),
        ("0 0 29 2 *", "0 0 29 2 *"),
        ("30 2 * jan,jul sun#2", "30 2 * jan,jul sun#2"),
    ],
)
def test_valid_cron_expressions_are_stored_with_single_spaces(given: str, stored: str) -> None:
    assert normalise_cron(given) == stored


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "must have 5 fields"),
        ("0 * * * * *", "must have 5 fields"),
        ("", "must have 5 fields"),
        ("60 * * * *", "bad minute field"),
        ("0 24 * * *", "bad hour field"),
        ("0 0 32 * *", "bad day-of-month field"),
        ("0 0 * 13 *", "bad month field"),
        ("0 0 * * 8", "bad day-of-week field"),
        ("*/0 * * * *", "bad minute field"),
        ("5-1 * * * *", "bad minute field"),
        ("0 0 30 2 *", "bad day-of-month field"),
        ("0 0 31 4,6 *", "bad day-of-month field"),
        ("@daily * * * *", "bad minute field"),
        ("٣ * * * *", "printable ASCII"),
    ],
)
def test_invalid_cron_expressions_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalise_cron(expression)


def test_time_zones_are_iana_names() -> None:
    for name in ("UTC", BERLIN, NEW_YORK, "Asia/Kolkata"):
        assert check_timezone(name) == name
    for name in ("Mars/Olympus", "CEST+1", "../../etc/passwd", "", "europe/berlin"):
        with pytest.raises(ValueError, match="IANA time zone"):
            check_timezone(name)


def test_the_request_models_check_cron_and_timezone() -> None:
    created = ScheduleCreate.model_validate(
        {"name": "report", "cron": "0  9 * * 1", "type": "t", "payload": {}}
    )
    assert (created.cron, created.timezone, created.max_retries, created.priority) == (
        "0 9 * * 1",
        "UTC",
        3,
        0,
    )
    with pytest.raises(ValidationError) as caught:
        ScheduleCreate.model_validate(
            {"name": "x", "cron": "0 25 * * *", "timezone": "Nowhere/City", "type": "t"}
        )
    fields = {error["loc"][0] for error in caught.value.errors()}
    assert fields == {"cron", "timezone", "payload"}
    with pytest.raises(ValidationError, match="at least one"):
        SchedulePatch.model_validate({})


# ----- slots


def test_every_monday_at_nine_in_berlin() -> None:
    # Monday 2026-01-05 09:00 CET is 08:00 UTC; in summer 07:00 UTC.
    assert slots("0 9 * * MON", BERLIN, utc(2026, 1, 1), 2) == [
        utc(2026, 1, 5, 8),
        utc(2026, 1, 12, 8),
    ]
    assert next_slot("0 9 * * MON", BERLIN, utc(2026, 7, 1)) == utc(2026, 7, 6, 7)


def test_the_next_slot_is_strictly_after_and_the_latest_is_at_or_before() -> None:
    nine = utc(2026, 1, 5, 9)
    assert next_slot("0 9 * * *", "UTC", nine) == utc(2026, 1, 6, 9)
    assert next_slot("0 9 * * *", "UTC", nine - timedelta(microseconds=1)) == nine
    assert latest_slot("0 9 * * *", "UTC", nine) == nine
    assert latest_slot("0 9 * * *", "UTC", nine + timedelta(microseconds=999_999)) == nine
    assert latest_slot("0 9 * * *", "UTC", nine - timedelta(microseconds=1)) == utc(2026, 1, 4, 9)


# ----- daylight saving time (documented in taskflow/schedules.py)


def test_spring_forward_runs_a_time_in_the_gap_once_after_it() -> None:
    # Berlin, Sunday 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
    assert slots("30 2 * * *", BERLIN, utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # no 02:30 today: 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    # Two times in the gap still make one run.
    assert slots("0,30 2 * * *", BERLIN, utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 0),
    ]
    # An hourly job has no slot in the hour that does not exist.
    assert slots("30 * * * *", BERLIN, utc(2026, 3, 28, 23, 45), 3) == [
        utc(2026, 3, 29, 0, 30),  # 01:30 CET
        utc(2026, 3, 29, 1, 30),  # 03:30 CEST
        utc(2026, 3, 29, 2, 30),
    ]


def test_fall_back_runs_a_time_in_the_repeated_hour_once() -> None:
    # Berlin, Sunday 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC).
    assert slots("30 2 * * *", BERLIN, utc(2026, 10, 23, 12), 3) == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST); not again at 02:30 CET
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    # Outside the repeated hour nothing changes but the offset.
    assert slots("30 1 * * *", BERLIN, utc(2026, 10, 23, 12), 3) == [
        utc(2026, 10, 23, 23, 30),
        utc(2026, 10, 24, 23, 30),
        utc(2026, 10, 26, 0, 30),
    ]
    # New York falls back from 02:00 EDT to 01:00 EST: 01:30 comes twice.
    assert slots("30 1 * * *", NEW_YORK, utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 30),  # the first 01:30 (EDT) only
        utc(2026, 11, 2, 6, 30),
    ]
    # An hourly job runs in both passes of the repeated hour.
    assert slots("30 * * * *", BERLIN, utc(2026, 10, 24, 23, 45), 3) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 1, 30),  # 02:30 CET
        utc(2026, 10, 25, 2, 30),  # 03:30 CET
    ]


def test_slots_move_forward_from_inside_the_repeated_hour() -> None:
    # 02:10 CET, the second pass: 02:30 CEST (an hour earlier in UTC) is behind.
    second_pass = utc(2026, 10, 25, 1, 10)
    assert next_slot("30 2 * * *", BERLIN, second_pass) == utc(2026, 10, 26, 1, 30)
    assert latest_slot("30 2 * * *", BERLIN, second_pass) == utc(2026, 10, 25, 0, 30)
    # Just after the gap, the latest slot is the one moved out of it.
    assert latest_slot("30 2 * * *", BERLIN, utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 29, 1, 0)


# ----- the missed-slot rule (SPEC §9)


def test_a_due_slot_runs_and_the_next_one_is_planned() -> None:
    due = utc(2026, 5, 4, 9)
    assert plan_schedule("0 9 * * *", "UTC", due, due + timedelta(seconds=1)) == Plan(
        slot=due, next_run_at=utc(2026, 5, 5, 9)
    )


def test_after_missed_slots_only_the_latest_runs_once() -> None:
    # No scheduler ran from 09:00 to 09:07:30: seven slots were missed.
    plan = plan_schedule("* * * * *", "UTC", utc(2026, 5, 4, 9), utc(2026, 5, 4, 9, 7, 30))
    assert plan == Plan(slot=utc(2026, 5, 4, 9, 7), next_run_at=utc(2026, 5, 4, 9, 8))
    # Days of a daily job: yesterday's 09:00 runs, once.
    plan = plan_schedule("0 9 * * *", BERLIN, utc(2026, 5, 1, 7), utc(2026, 5, 4, 12))
    assert plan == Plan(slot=utc(2026, 5, 4, 7), next_run_at=utc(2026, 5, 5, 7))


def test_a_slot_not_due_yet_waits() -> None:
    later = utc(2026, 5, 4, 9)
    assert plan_schedule("0 9 * * *", "UTC", later, later - timedelta(seconds=1)) == Plan(
        slot=None, next_run_at=later
    )


def test_an_unplanned_schedule_starts_from_its_next_future_slot() -> None:
    # Resumed at 09:07:30 after a pause: no burst of the slots it missed.
    plan = plan_schedule("* * * * *", "UTC", None, utc(2026, 5, 4, 9, 7, 30))
    assert plan == Plan(slot=None, next_run_at=utc(2026, 5, 4, 9, 8))


def test_a_due_time_the_cron_does_not_name_runs_once_itself() -> None:
    # next_run_at set by hand to 09:05 for an hourly job: that time runs, once.
    plan = plan_schedule("0 * * * *", "UTC", utc(2026, 5, 4, 9, 5), utc(2026, 5, 4, 9, 30))
    assert plan == Plan(slot=utc(2026, 5, 4, 9, 5), next_run_at=utc(2026, 5, 4, 10))


def test_missed_slots_across_a_dst_change() -> None:
    # Down from Saturday to Sunday 03:30 CEST, spring forward in between:
    # Sunday's run, moved to 03:00 CEST, is the one that runs.
    plan = plan_schedule("30 2 * * *", BERLIN, utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30))
    assert plan == Plan(slot=utc(2026, 3, 29, 1, 0), next_run_at=utc(2026, 3, 30, 0, 30))


def test_invalid_stored_values_raise_value_error() -> None:
    with pytest.raises(ValueError, match="bad minute"):
        plan_schedule("61 * * * *", "UTC", None, utc(2026, 1, 1))
    with pytest.raises(ValueError, match="unknown time zone"):
        plan_schedule("0 * * * *", "Nowhere/City", None, utc(2026, 1, 1))
