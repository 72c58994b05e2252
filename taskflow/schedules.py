"""Schedules (SPEC §9): 5-field cron expressions in an IANA time zone, and the
missed-slot rule. Pure: no database, no clock of its own (every function is
given its "now").

Cron expressions are evaluated by cronsim (``minute hour day-of-month month
day-of-week``; ranges, steps, lists, ``JAN``/``MON`` names, ``L``, ``LW`` and
``MON#2`` as cronsim documents them). When both day fields are restricted,
either may match, as in Debian cron.

Daylight saving time follows Debian cron, as cronsim does. In Europe/Berlin the
clocks go from 02:00 to 03:00 on the last Sunday of March and from 03:00 back
to 02:00 on the last Sunday of October:

- A job at a fixed local time (neither the minute nor the hour field starts
  with ``*``) runs once a day. Spring forward: ``30 2 * * *`` has no 02:30
  that day and runs at 03:00 CEST, the first minute after the gap (01:00 UTC);
  ``0,30 2 * * *`` runs once then too. Fall back: ``30 2 * * *`` meets 02:30
  twice and runs only at the first, 02:30 CEST (00:30 UTC), not again an hour
  later. A time outside the changed hour is not affected: ``30 1 * * *`` in
  Berlin runs once on either day, at 01:30 local (23:30 UTC the day before
  while on CEST). In America/New_York, which falls back from 02:00 to 01:00,
  it is ``30 1 * * *`` that meets 01:30 twice: it runs at the first, 01:30 EDT
  (05:30 UTC).
- A job whose minute or hour field starts with ``*`` (``*/15 * * * *``,
  ``30 * * * *``) follows real time: it runs in both passes of the repeated
  hour, and the slots inside the skipped hour do not exist.

Slots are returned in UTC and always move forward: the next slot after a time
is strictly later than it, also inside a repeated hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

DEFAULT_TIMEZONE = "UTC"
CRON_MAX_LENGTH = 200
CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_ONE_MICROSECOND = timedelta(microseconds=1)


@lru_cache(maxsize=1)
def _known_timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(name: str) -> str:
    """An IANA time zone name (``Europe/Berlin``); raise ValueError otherwise."""
    if name != DEFAULT_TIMEZONE and name not in _known_timezones():
        raise ValueError("must be an IANA time zone name, such as Europe/Berlin or UTC")
    return name


def zone(name: str) -> tzinfo:
    """The time zone of this name; ValueError when the system has no such zone."""
    # UTC needs no time zone data: the default works on a system without any.
    if name == DEFAULT_TIMEZONE:
        return UTC
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:
        raise ValueError(f"unknown time zone {name!r}") from None


def _slots(cron: str, timezone: str, start: datetime, *, reverse: bool = False) -> CronSim:
    """cronsim's walk through the slots from ``start``; ValueError for a cron
    expression it cannot read."""
    try:
        return CronSim(cron, start.astimezone(zone(timezone)), reverse=reverse)
    except CronSimError as exc:
        raise ValueError(f"{str(exc).lower()} field in the cron expression") from None


def normalise_cron(expression: str) -> str:
    """A valid 5-field cron expression, with single spaces; raise ValueError
    saying what is wrong."""
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        raise ValueError("must have 5 fields: " + " ".join(CRON_FIELDS))
    text = " ".join(fields)
    if not text.isascii() or not text.isprintable():
        raise ValueError("must hold only printable ASCII characters")
    if next_slot(text, DEFAULT_TIMEZONE, datetime.now(UTC)) is None:
        raise ValueError("the cron expression never fires")
    return text


def _utc(moment: datetime) -> datetime:
    # Two datetimes with the same tzinfo compare by wall time, ignoring fold:
    # inside a repeated hour only UTC tells which is later.
    return moment.astimezone(UTC)


def next_slot(cron: str, timezone: str, after: datetime) -> datetime | None:
    """The first slot strictly after ``after``, in UTC; None when there is
    none within 50 years."""
    after = _utc(after)
    for slot in _slots(cron, timezone, after):
        # From the second pass of a repeated hour, cronsim's first answer
        # can be the slot of the first pass, already behind.
        if _utc(slot) > after:
            return _utc(slot)
    return None


def latest_slot(cron: str, timezone: str, at: datetime) -> datetime | None:
    """The last slot at or before ``at``, in UTC; None when there is none
    within 50 years."""
    at = _utc(at)
    latest = None
    # Walking backwards, cronsim starts a second before a whole-second time;
    # a microsecond later, it starts at ``at`` itself.
    for slot in _slots(cron, timezone, at + _ONE_MICROSECOND, reverse=True):
        if _utc(slot) <= at:
            latest = _utc(slot)
            break
    if latest is None:
        return None
    # Backwards from the second pass of a repeated hour, cronsim misses the
    # slot of the first pass: the forward walk, which the schedule follows,
    # has the last word.
    while (later := next_slot(cron, timezone, latest)) is not None and later <= at:
        latest = later
    return latest


@dataclass(frozen=True, slots=True)
class Plan:
    """What a scheduler does with a schedule now."""

    # The slot to create a task for now; None: no slot is due.
    slot: datetime | None
    # The schedule's next due slot; None: it never fires again.
    next_run_at: datetime | None


def plan_schedule(cron: str, timezone: str, next_run_at: datetime | None, now: datetime) -> Plan:
    """The missed-slot rule of SPEC §9, for a schedule whose next slot was
    ``next_run_at`` (None: not planned yet, as after a resume).

    A slot that has come creates one task. When a scheduler returns after
    missing several (none ran), only the latest slot up to ``now`` runs, once;
    the older ones are skipped. Either way the schedule moves on to its first
    slot after ``now``, so a schedule never fires a burst of old slots, and an
    unplanned one starts from its next future slot.
    """
    now = _utc(now)
    if next_run_at is None:
        return Plan(slot=None, next_run_at=next_slot(cron, timezone, now))
    due = _utc(next_run_at)
    if due > now:
        return Plan(slot=None, next_run_at=due)
    latest = latest_slot(cron, timezone, now)
    # next_run_at is the due slot itself when the cron no longer names it (it
    # was changed by hand) or names nothing later up to now.
    slot = latest if latest is not None and latest > due else due
    return Plan(slot=slot, next_run_at=next_slot(cron, timezone, max(slot, now)))
