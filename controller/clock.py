"""The controller's notion of now: services take a ``Clock`` so tests set the time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

#: Returns the current time, timezone-aware, in UTC.
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The real time, in UTC."""
    return datetime.now(UTC)


def earlier(text: str, other: str) -> bool:
    """Whether the time in ``text`` is before the one in ``other`` (ISO 8601 texts with offsets).

    Stored times are mostly pydantic's JSON form, UTC with ``Z``: two such texts of one length
    compare as strings, which spares two parses per report on the ingest path; anything else
    is parsed.
    """
    if len(text) == len(other) and text[-1] == "Z" and other[-1] == "Z":
        return text < other
    return datetime.fromisoformat(text) < datetime.fromisoformat(other)
