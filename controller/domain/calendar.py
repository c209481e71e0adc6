"""The Polish business calendar and ticket windows, in Europe/Warsaw time (C1, C2)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

WARSAW = ZoneInfo("Europe/Warsaw")
#: 8x5 window: 09:00-17:00 Monday-Friday, Polish time (W1).
WINDOW_OPEN = time(9, 0)
WINDOW_CLOSE = time(17, 0)


@lru_cache(maxsize=64)
def _polish_holidays(year: int) -> holidays.HolidayBase:
    # C1: a maintained library, never a hand-written list (24 Dec is a holiday from 2025).
    return holidays.country_holidays("PL", years=year)


def is_holiday(day: date) -> bool:
    """True on a Polish public holiday or statutory day off."""
    return day in _polish_holidays(day.year)


def is_business_day(day: date) -> bool:
    """Monday to Friday and not a Polish holiday (C1)."""
    return day.weekday() < 5 and not is_holiday(day)


def next_business_day(day: date) -> date:
    """The first business day strictly after ``day``."""
    candidate = day + timedelta(days=1)
    while not is_business_day(candidate):
        candidate += timedelta(days=1)
    return candidate


def moment_text(moment: datetime) -> str:
    """``2026-12-09 01:00 +01:00``: a moment as messages show it, in its own zone (a site's
    time, for a window) with the offset, so the same words hold wherever they are read."""
    offset = moment.strftime("%z")
    return f"{moment.strftime('%Y-%m-%d %H:%M')} {offset[:3]}:{offset[3:]}"


def to_warsaw(moment: datetime) -> datetime:
    """``moment`` in Europe/Warsaw; a naive datetime is refused (C2: always explicit)."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: give an explicit offset")
    return moment.astimezone(WARSAW)


def warsaw_date(moment: datetime) -> date:
    """The Europe/Warsaw calendar date of ``moment`` (E1: day boundaries are Warsaw dates)."""
    return to_warsaw(moment).date()


def at_warsaw(day: date, clock: time) -> datetime:
    """The aware moment of ``clock`` on ``day`` in Warsaw."""
    return datetime.combine(day, clock, tzinfo=WARSAW)


def in_window_8x5(moment: datetime) -> bool:
    """True when ``moment`` falls inside the 8x5 ticket window (W1)."""
    local = to_warsaw(moment)
    return is_business_day(local.date()) and WINDOW_OPEN <= local.time() < WINDOW_CLOSE


def add_window_time(start: datetime, duration: timedelta, window: str) -> datetime:
    """``start`` plus ``duration`` counted only inside ``window`` (``8x5`` or ``24x7``) (E8).

    Outside an 8x5 window the clock waits for the next opening: Friday 16:30
    plus one hour is Monday 09:30, later after a holiday.
    """
    if window == "24x7":
        # Elapsed time, not wall-clock time: add in UTC so a DST change is counted right.
        return to_warsaw(start.astimezone(UTC) + duration)
    if window != "8x5":
        raise ValueError(f"unknown ticket window {window!r} (expected 8x5 or 24x7)")
    remaining = duration
    local = to_warsaw(start)
    while True:
        day = local.date()
        opens, closes = at_warsaw(day, WINDOW_OPEN), at_warsaw(day, WINDOW_CLOSE)
        if is_business_day(day) and local < closes:
            begin = max(local, opens)
            available = closes - begin
            if remaining <= available:
                return to_warsaw(begin + remaining)
            remaining -= available
        local = at_warsaw(next_business_day(day), WINDOW_OPEN)
