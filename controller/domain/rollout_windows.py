"""Maintenance windows in site time as they really fall on each night, and hops placed in them.

A window is written in wall-clock time (``01:00-05:00``), but everything measured inside it
is elapsed time: its length, the spacing of hops, a meeting's overlap. So arithmetic runs
on UTC instants and only what people read is shown in the site's zone (an aware datetime
minus another with the same ``tzinfo`` is wall-clock arithmetic in Python: never used here).

On a spring-forward night a window may be shortened (``01:00-05:00`` lasts 3 hours in
Warsaw on 2027-03-28) or not exist at all (``02:00-03:00`` that night): its start is moved
to the first moment that exists, and a night without it is skipped. On a fall-back night
it is longer; a wall-clock time that happens twice is read as its first occurrence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from polyfleet.controller.errors import Invalid

#: The planned length of one hop on one unit: download, install, reboot and verification.
DEFAULT_HOP_LENGTH = timedelta(minutes=45)
#: How many nights a hop may be pushed on before the search gives up (meetings every night).
MAX_NIGHTS_AHEAD = 60


class PlanError(Invalid, ValueError):
    """A plan request that cannot be planned (422 ``invalid_plan``); ``field`` names the flag
    or key to fix, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", code="invalid_plan", field=field)
        self.reason = reason


def resolve(naive: datetime, zone: tzinfo) -> datetime:
    """The instant (UTC) at which a site's wall clock shows ``naive``.

    Shown twice (autumn): the first time. Never shown (spring forward): the first moment
    that exists after the jump, which is when the clocks jump.
    """
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # In the gap: fold=1 reads it with the offset after the jump (an instant before the
    # jump), fold=0 with the one before (an instant after). The jump lies between.
    low = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first
    if low > high:
        low, high = high, low
    after = high.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + timedelta(seconds=int((high - low).total_seconds()) // 2)
        if middle.astimezone(zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return high


def utc(moment: datetime) -> datetime:
    """``moment`` as a UTC instant (the only form arithmetic is done on)."""
    return moment.astimezone(UTC)


def split_shift(shift: timedelta) -> tuple[int, timedelta]:
    """Whole days (moved on the calendar: the window stays at its wall-clock time) and the
    rest (elapsed time, as a wave gap of 30 minutes is)."""
    days = shift.days
    return days, shift - timedelta(days=days)


@dataclass(frozen=True)
class Window:
    """A daily maintenance window in site time; ``end`` before ``start`` crosses midnight."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> Window:
        """``HH:MM-HH:MM``; PlanError names the problem."""
        parts = text.strip().split("-")
        if len(parts) != 2:
            raise PlanError("window", f"{text!r} is not HH:MM-HH:MM (e.g. 01:00-05:00)")
        try:
            start, end = (time.fromisoformat(part.strip()) for part in parts)
        except ValueError:
            raise PlanError("window", f"{text!r} is not HH:MM-HH:MM (e.g. 01:00-05:00)") from None
        if start == end:
            raise PlanError("window", f"{text!r} is empty: start and end are the same time")
        return cls(start.replace(second=0, microsecond=0), end.replace(second=0, microsecond=0))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    @property
    def nominal(self) -> timedelta:
        """Its length on a night without a clock change."""
        day = date(2001, 1, 1)
        length = datetime.combine(day, self.end) - datetime.combine(day, self.start)
        return length if length > timedelta(0) else length + timedelta(days=1)

    def night(self, day: date, zone: tzinfo, offset: timedelta = timedelta(0)) -> Night:
        """The window opening on ``day`` in ``zone``, ``offset`` (less than a day) later, as
        it really falls that night (it may be shortened or not exist: ``Night.exists``)."""
        wall_start = datetime.combine(day, self.start)
        wall_end = wall_start + self.nominal
        start = resolve(wall_start, zone) + offset
        end = resolve(wall_end, zone) + offset
        return Night(window=self, zone=zone, day=day, offset=offset, start=start, end=end)

    def on(
        self, day: date, zone: tzinfo, shift: timedelta = timedelta(0)
    ) -> tuple[datetime, datetime]:
        """Start and end (in ``zone``) of the window opening on ``day`` moved by ``shift``
        (whole days on the calendar, the rest elapsed), DST-right."""
        days, rest = split_shift(shift)
        night = self.night(day + timedelta(days=days), zone, rest)
        return night.local(night.start), night.local(night.end)


@dataclass(frozen=True, kw_only=True)
class Night:
    """One night's window: UTC instants, shown in the site's zone."""

    window: Window
    zone: tzinfo
    #: The site's calendar day the window opens on.
    day: date
    #: Elapsed time after the window's wall-clock start (a wave gap shorter than a day).
    offset: timedelta
    start: datetime
    end: datetime

    @property
    def length(self) -> timedelta:
        return max(self.end - self.start, timedelta(0))

    @property
    def exists(self) -> bool:
        return self.end > self.start

    @property
    def notice(self) -> str | None:
        """``window_missing``, ``window_shortened`` or ``window_lengthened`` when the clocks
        change inside it that night; None on an ordinary night."""
        if not self.exists:
            return "window_missing"
        if self.length < self.window.nominal:
            return "window_shortened"
        if self.length > self.window.nominal:
            return "window_lengthened"
        return None

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.zone)

    def following(self) -> Night:
        """The same window on the next night that has it."""
        day = self.day
        for _ in range(7):
            day += timedelta(days=1)
            night = self.window.night(day, self.zone, self.offset)
            if night.exists:
                return night
        raise AssertionError(f"{self.window} never exists after {self.day}")  # no zone does this

    def first_existing(self) -> Night:
        """This night when its window exists, else the next night that has it."""
        return self if self.exists else self.following()

    def first_ending_after(self, moment: datetime) -> Night:
        """This night or a later one, the first whose window ends after ``moment``."""
        night = self.first_existing()
        while night.end <= moment:
            night = night.following()
        return night

    def to_json(self) -> dict[str, str]:
        return {
            "start": self.local(self.start).isoformat(),
            "end": self.local(self.end).isoformat(),
        }

    def describe(self) -> str:
        """What happens to the window that night, in words (for notes)."""
        shown = f"{self.window} on {self.day.isoformat()}"
        nominal = _hours(self.window.nominal)
        if self.notice == "window_missing":
            return f"{shown} does not exist in {self.zone} (the clocks go forward)"
        if self.notice == "window_shortened":
            return (
                f"{shown} lasts {_hours(self.length)} instead of {nominal} in {self.zone} "
                f"(the clocks go forward): from {self.local(self.start):%H:%M %z} to "
                f"{self.local(self.end):%H:%M %z}"
            )
        if self.notice == "window_lengthened":
            return (
                f"{shown} lasts {_hours(self.length)} instead of {nominal} in {self.zone} "
                "(the clocks go back)"
            )
        return shown


def _hours(length: timedelta) -> str:
    minutes = int(length.total_seconds()) // 60
    hours, rest = divmod(minutes, 60)
    if rest == 0:
        return f"{hours}h"
    if hours == 0:
        return f"{rest}m"
    return f"{hours}h{rest:02d}m"


Busy = tuple[datetime, datetime]


def free_slot(
    night: Night, earliest: datetime, length: timedelta, busy: Sequence[Busy] = ()
) -> datetime | None:
    """The first moment from ``earliest`` on at which ``length`` fits in ``night``'s window
    without touching a busy span (meetings); None when nothing fits that night."""
    moment = max(earliest, night.start)
    spans = sorted((utc(start), utc(end)) for start, end in busy)
    while moment + length <= night.end:
        clash = next(
            (span for span in spans if span[0] < moment + length and span[1] > moment), None
        )
        if clash is None:
            return moment
        moment = clash[1]
    return None


def first_clash(moment: datetime, length: timedelta, busy: Sequence[Busy]) -> Busy | None:
    """The first busy span ``[moment, moment + length)`` overlaps, if any."""
    end = moment + length
    clashes = sorted(
        (span for span in busy if utc(span[0]) < end and utc(span[1]) > moment),
        key=lambda span: utc(span[0]),
    )
    return clashes[0] if clashes else None


@dataclass(frozen=True)
class Slot:
    """Where one hop is placed: its moment and the night whose window holds it."""

    at: datetime
    night: Night


def place_hops(
    count: int,
    first: Night,
    length: timedelta,
    *,
    busy: Sequence[Busy] = (),
    earliest: datetime | None = None,
) -> list[Slot]:
    """``count`` hops one after another, each ``length`` long, from ``first``'s window on.

    A hop that no longer fits in a night's window (or only across a meeting) goes to the
    next night's window, and the hops after it follow it there.
    """
    slots: list[Slot] = []
    night = first.first_existing()
    moment = night.start if earliest is None else max(night.start, earliest)
    for _ in range(count):
        for _attempt in range(MAX_NIGHTS_AHEAD):
            found = free_slot(night, moment, length, busy)
            if found is not None:
                break
            night = night.following()
            moment = night.start
        else:
            # Booked every night for two months: placed at the window's start all the same.
            found = night.start
        slots.append(Slot(found, night))
        moment = found + length
    return slots
