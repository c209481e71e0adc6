"""The controller's notion of now: services take a ``Clock`` so tests set the time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

# Ordering stored times is a pure rule, kept in the domain; offered here for the services.
from polyfleet.controller.domain.timestamps import earlier

__all__ = ["Clock", "earlier", "system_clock"]

#: Returns the current time, timezone-aware, in UTC.
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The real time, in UTC."""
    return datetime.now(UTC)
