"""Maintenance windows: planned work on a site, room or unit; its faults open no ticket."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict

from polyfleet.controller.domain.calendar import to_warsaw
from polyfleet.controller.errors import Conflict, Invalid


def when_text(moment: datetime) -> str:
    """A window's bound as messages show it: Warsaw time with its offset (C2)."""
    return to_warsaw(moment).isoformat(timespec="minutes")


class MaintenanceScope(StrEnum):
    SITE = "site"
    ROOM = "room"
    SERIAL = "serial"


class MaintenanceRefused(Invalid):
    """A window that cannot be: open-ended, ending before it starts, or already over (422
    ``invalid_maintenance``; ``field`` names the bound at fault)."""

    default_code = "invalid_maintenance"

    def __init__(self, message: str, *, field: str | None = None, why: str = "") -> None:
        super().__init__(message, field=field)
        #: Which refusal, for a face that words it itself: ``open_ended``,
        #: ``ends_before_start``, ``past`` ("" for the others).
        self.why = why


class MaintenanceOverlap(Conflict):
    """A window that overlaps another one of the same site, room or unit (409
    ``maintenance_overlap``): the message names it, so it can be ended or moved first."""

    default_code = "maintenance_overlap"

    def __init__(self, message: str, *, other: Maintenance) -> None:
        super().__init__(message)
        #: The window it overlaps.
        self.other = other


class Maintenance(BaseModel):
    """One window: ``scope`` and ``target`` say what (``site`` krk, ``room`` krk/Sala Wawel,
    ``serial`` X1), ``starts``..``ends`` when, ``reason`` why; ``ended_at`` is set when it
    was ended early (by hand, or by the rollout that opened it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    scope: MaintenanceScope
    target: str
    site: str | None = None
    room: str | None = None
    starts: AwareDatetime
    ends: AwareDatetime
    reason: str
    created_by: str = ""
    created_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    #: Set when a rollout opened it for a unit's update.
    rollout: str | None = None

    @property
    def until(self) -> datetime:
        """When it stops silencing: its end, or the moment it was ended early."""
        return self.ends if self.ended_at is None else min(self.ends, self.ended_at)

    def active(self, at: datetime) -> bool:
        return self.starts <= at < self.until

    def covers(self, *, serial: str | None, site: str | None, room: str | None) -> bool:
        """Whether a fault of ``serial`` (None: the site itself) at ``site`` in ``room`` is in
        this window's scope."""
        if self.scope is MaintenanceScope.SITE:
            return site == self.site
        if self.scope is MaintenanceScope.ROOM:
            return serial is not None and site == self.site and room == self.room
        return serial is not None and serial == self.target

    def state(self, at: datetime) -> str:
        """``planned``, ``active`` or ``over`` at ``at``."""
        if at >= self.until or (self.ended_at is not None and at >= self.ended_at):
            return "over"
        return "planned" if at < self.starts else "active"

    def as_document(self, at: datetime) -> dict[str, object]:
        doc: dict[str, object] = self.model_dump(mode="json")
        doc["state"] = self.state(at)
        return doc


def check_window(new: Maintenance, existing: Iterable[Maintenance], now: datetime) -> None:
    """Refuse a window that ends before it starts or is over already, and one that
    overlaps another still running or planned for the same site, room or unit."""
    if new.ends <= new.starts:
        raise MaintenanceRefused(
            f"until ({when_text(new.ends)}) must be after from ({when_text(new.starts)})",
            field="until",
            why="ends_before_start",
        )
    if new.ends <= now:
        raise MaintenanceRefused(
            f"until ({when_text(new.ends)}) is already past: a window must end in the future",
            field="until",
            why="past",
        )
    for other in existing:
        if other.scope is not new.scope or other.target != new.target:
            continue
        if other.until <= now:
            continue
        if new.starts < other.until and other.starts < new.ends:
            raise MaintenanceOverlap(
                f"{new.scope.value} {new.target} is already in maintenance {other.id} from "
                f"{when_text(other.starts)} until {when_text(other.until)} ({other.reason}); "
                f"end it first (polyfleet controller maintenance end {other.id}) or choose "
                "times that do not overlap",
                other=other,
            )
