"""A clock the test sets and moves: services take it where they would read the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: Monday 2 March 2026, 10:00 in Warsaw: a working day.
MONDAY_MORNING = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class SettableClock:
    """Time that tests set (``clock.now = ...``) or move forward (``advance``)."""

    def __init__(self, start: datetime = MONDAY_MORNING) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
