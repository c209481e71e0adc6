"""Maintenance windows: stored, listed, ended, and asked which one covers a fault now."""

from __future__ import annotations

import secrets
from datetime import datetime

from polyfleet.controller.clock import Clock
from polyfleet.controller.domain.maintenance import (
    Maintenance,
    MaintenanceOverlap,
    MaintenanceRefused,
    MaintenanceScope,
    check_window,
)
from polyfleet.controller.errors import Conflict, NotFound
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.store.base import Store

#: The collection of maintenance windows (this module alone reads it).
MAINTENANCE = "maintenance"


class UnknownMaintenance(NotFound, KeyError):
    def __init__(self, window: str) -> None:
        super().__init__(
            f"no maintenance window {window!r}; list them with: polyfleet controller "
            "maintenance list",
            field="id",
        )


class MaintenanceService:
    """The windows, kept in memory (a fault asks on every report), written through."""

    def __init__(self, store: Store, clock: Clock, inventory: Inventory) -> None:
        self._store = store
        self._clock = clock
        self._inventory = inventory
        self._windows: dict[str, Maintenance] = {}

    def load(self) -> None:
        self._windows = {
            key: Maintenance.model_validate(doc)
            for key, doc in self._store.scan(MAINTENANCE).items()
        }

    def windows(self) -> list[Maintenance]:
        """Every window, earliest start first."""
        return sorted(self._windows.values(), key=lambda w: (w.starts, w.id))

    def get(self, window: str) -> Maintenance:
        found = self._windows.get(window)
        if found is None:
            raise UnknownMaintenance(window)
        return found

    def resolve(self, scope: MaintenanceScope, target: str) -> tuple[str, str | None, str | None]:
        """(target as stored, site, room) of ``target``: a site id, a room (``SITE/ROOM``, or
        its name alone when one site has it) or a serial the inventory knows."""
        if scope is MaintenanceScope.SITE:
            self._inventory.site(target)
            return target, target, None
        if scope is MaintenanceScope.SERIAL:
            device = self._inventory.find_device(target)
            if device is None:
                raise NotFound(f"no device {target!r}", field="serial")
            site = device.get("site_id")
            room = device.get("room")
            return (
                target,
                site if isinstance(site, str) else None,
                room if isinstance(room, str) else None,
            )
        site_part, _, room_part = target.rpartition("/")
        rooms = {
            (str(doc.get("site_id")), str(doc.get("room")))
            for doc in self._inventory.fleet().values()
            if doc.get("room")
            and (not site_part or doc.get("site_id") == site_part)
            and doc.get("room") == room_part
        }
        if not rooms:
            raise NotFound(f"no room {target!r} holds a device", field="room")
        if len(rooms) > 1:
            sites = ", ".join(sorted(site for site, _ in rooms))
            raise MaintenanceRefused(
                f"room {room_part!r} is in several sites ({sites}); write it as SITE/ROOM",
                field="room",
            )
        ((site, room),) = rooms
        return f"{site}/{room}", site, room

    async def add(
        self,
        *,
        scope: MaintenanceScope,
        target: str,
        starts: datetime,
        ends: datetime,
        reason: str,
        by: str = "",
        rollout: str | None = None,
    ) -> Maintenance:
        """A new window, refused when it is not a proper future one or overlaps another."""
        stored, site, room = self.resolve(scope, target)
        now = self._clock()
        window = Maintenance(
            id=f"MW-{secrets.token_hex(4).upper()}",
            scope=scope,
            target=stored,
            site=site,
            room=room,
            starts=starts,
            ends=ends,
            reason=reason,
            created_by=by,
            created_at=now,
            rollout=rollout,
        )
        check_window(window, self._windows.values(), now)
        await self._put(window)
        return window

    async def end(self, window_id: str) -> Maintenance:
        """End a window now (one not yet started is cancelled); refused when it is over."""
        window = self.get(window_id)
        now = self._clock()
        if window.until <= now:
            raise Conflict(
                f"maintenance {window_id} is already over (since {window.until})",
                template="maintenance {id} is already over (since {since})",
                params={"id": window_id, "since": window.until},
            )
        ended = window.model_copy(update={"ended_at": now})
        await self._put(ended)
        return ended

    async def open_for_update(
        self, serial: str, *, rollout: str, version: str, starts: datetime, ends: datetime
    ) -> Maintenance | None:
        """Put a unit into maintenance for its update by ``rollout``; None when it is not
        in the inventory or already in maintenance then (that window silences it already)."""
        if self._inventory.find_device(serial) is None:
            return None
        try:
            return await self.add(
                scope=MaintenanceScope.SERIAL,
                target=serial,
                starts=starts,
                ends=ends,
                reason=f"firmware update to {version} (rollout {rollout})",
                by=f"rollout {rollout}",
                rollout=rollout,
            )
        except (MaintenanceOverlap, MaintenanceRefused):
            return None

    async def end_for_update(self, serial: str, *, rollout: str) -> None:
        """End the unit's update maintenance of ``rollout`` (its update is over)."""
        now = self._clock()
        for window in list(self._windows.values()):
            if window.rollout == rollout and window.target == serial and window.until > now:
                await self._put(window.model_copy(update={"ended_at": now}))

    def covering(self, serial: str | None, site: str | None, at: datetime) -> Maintenance | None:
        """The window silencing a fault of ``serial`` (None: the site itself) at ``site`` at
        ``at``, or None."""
        room = None
        if serial is not None:
            device = self._inventory.find_device(serial)
            if device is not None:
                site = site or device.get("site_id")
                found = device.get("room")
                room = found if isinstance(found, str) else None
        for window in self._windows.values():
            if window.active(at) and window.covers(serial=serial, site=site, room=room):
                return window
        return None

    async def _put(self, window: Maintenance) -> None:
        doc = window.model_dump(mode="json")
        await self._store.wait_durable(self._store.apply({MAINTENANCE: {window.id: doc}}))
        self._windows[window.id] = window
