"""Maintenance windows: list, add, end; a window silences the faults of what it covers."""

from __future__ import annotations

from datetime import datetime

from polyfleet.controller.core import Controller
from polyfleet.controller.domain.admin_input import printable_text
from polyfleet.controller.domain.maintenance import MaintenanceRefused, MaintenanceScope
from polyfleet.controller.features.caller import Caller, Permission, record
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.store.base import Doc

#: Longest reason a window takes.
REASON_MAX_CHARS = 200


def _documents(core: Controller) -> list[Doc]:
    now = core.clock()
    service = core.tickets.service
    silenced = [] if service is None else service.silenced_faults()
    found: list[Doc] = []
    for window in core.maintenance.windows():
        doc = window.as_document(now)
        # What it holds back: faults recorded during it that have no ticket yet.
        doc["silenced_faults"] = [
            {
                "serial": fault.get("serial"),
                "site": fault.get("site"),
                "fault": fault.get("fault"),
                "first_seen": fault.get("first_seen"),
            }
            for fault in silenced
            if fault.get("maintenance") == window.id
        ]
        found.append(doc)
    return found


def list_maintenance(core: Controller, caller: Caller) -> list[Doc]:
    """Every window, earliest start first, with its state (planned, active, over) and the
    faults it holds back."""
    caller.require(Permission.READ)
    return _documents(core)


def device_maintenance(core: Controller, caller: Caller, serial: str) -> list[Doc]:
    """The windows in force or planned that cover the unit where it is now (its own, its
    room's and its site's), earliest start first, each with its state."""
    caller.require(Permission.READ)
    device = core.inventory.device(serial)
    site, room = device.get("site_id"), device.get("room")
    now = core.clock()
    return [
        window.as_document(now)
        for window in core.maintenance.windows()
        if window.until > now
        and window.covers(
            serial=serial,
            site=site if isinstance(site, str) else None,
            room=room if isinstance(room, str) else None,
        )
    ]


async def add_maintenance(
    core: Controller,
    caller: Caller,
    *,
    site: str | None = None,
    room: str | None = None,
    serial: str | None = None,
    starts: datetime,
    ends: datetime | None,
    reason: str,
) -> Doc:
    """A window for one site, room (``SITE/ROOM``) or unit: faults in it are recorded and
    shown but open no ticket; one still present when it ends gets its ticket at once.

    Refused: not exactly one of site, room, serial; no end (open-ended); an end before the
    start or already past (422); an overlap with another window of the same target (409).
    """
    caller.require(Permission.OPERATE)
    given = [
        (scope, value)
        for scope, value in (
            (MaintenanceScope.SITE, site),
            (MaintenanceScope.ROOM, room),
            (MaintenanceScope.SERIAL, serial),
        )
        if value
    ]
    if len(given) != 1:
        raise MaintenanceRefused("give exactly one of site, room or serial", field="site")
    if ends is None:
        raise MaintenanceRefused(
            "until is required: open-ended maintenance would silence faults forever",
            field="until",
            why="open_ended",
        )
    text = printable_text(reason, field="reason", max_chars=REASON_MAX_CHARS)
    ((scope, target),) = given
    window = await core.maintenance.add(
        scope=scope, target=target, starts=starts, ends=ends, reason=text, by=caller.actor.name
    )
    await record(
        core,
        caller,
        AuditAction.MAINTENANCE_ADD,
        f"maintenance:{window.id}",
        {
            "scope": scope.value,
            "target": window.target,
            "from": starts.isoformat(),
            "until": ends.isoformat(),
            "reason": text,
        },
        site=window.site,
    )
    return window.as_document(core.clock())


async def end_maintenance(core: Controller, caller: Caller, window_id: str) -> Doc:
    """End a window now (cancel one not started); its faults still present get tickets."""
    caller.require(Permission.OPERATE)
    window = await core.maintenance.end(window_id)
    await record(
        core, caller, AuditAction.MAINTENANCE_END, f"maintenance:{window.id}", {}, site=window.site
    )
    service = core.tickets.service
    if service is not None:
        await service.release_after_maintenance()
    return window.as_document(core.clock())
