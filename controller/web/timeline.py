"""A device's health history drawn as a timeline: one coloured band per state, as SVG shapes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from polyfleet.controller.store.base import Doc

#: Width of the drawing in SVG user units (it scales to the page).
WIDTH = 1000.0


@dataclass(frozen=True)
class Band:
    """One state from ``start`` until ``end`` (the next change, or now), placed on the axis."""

    state: str
    start: datetime
    end: datetime
    problems: tuple[str, ...]
    x: float
    width: float


@dataclass(frozen=True)
class Timeline:
    start: datetime
    end: datetime
    bands: tuple[Band, ...]
    ticks: tuple[tuple[float, datetime], ...]


def timeline(changes: Sequence[Doc], now: datetime, *, ticks: int = 4) -> Timeline | None:
    """The bands of a health history (``{at, state, problems}``, oldest first) up to ``now``."""
    points = [(datetime.fromisoformat(change["at"]), change) for change in changes]
    if not points:
        return None
    start = points[0][0]
    end = max(now, points[-1][0])
    span = (end - start).total_seconds() or 1.0
    bands: list[Band] = []
    for index, (at, change) in enumerate(points):
        until = points[index + 1][0] if index + 1 < len(points) else end
        x = (at - start).total_seconds() / span * WIDTH
        width = max((until - at).total_seconds() / span * WIDTH, 1.0)
        problems = tuple(str(p.get("code", "?")) for p in change.get("problems") or ())
        bands.append(Band(str(change["state"]), at, until, problems, x, width))
    marks = tuple((WIDTH * i / ticks, start + (end - start) * i / ticks) for i in range(ticks + 1))
    return Timeline(start=start, end=end, bands=tuple(bands), ticks=marks)
