"""Room calendars as the site agents read them: when each unit's room is booked.

Owns the ``room_calendars`` collection (key = serial): ``{serial, site_id, state, detail,
read_at, start, end, meetings: [{start, end}], received_at}``: the last reading of the unit's
calendar between ``start`` and ``end``. A meeting's subject never reaches the controller:
agents send start and end only. Kept in memory by serial (read once at first use, kept with
every reading taken), so a plan or a runner tick reads no collection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from polyfleet.controller.clock import Clock
from polyfleet.controller.domain.rollout import RoomCalendar
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.store.base import Doc, Store
from polyfleet.shared.schema import RoomCalendarBatch

log = logging.getLogger(__name__)

ROOM_CALENDARS = "room_calendars"


class RoomCalendars:
    """The latest calendar reading of each unit, as the planner and the runner read them."""

    def __init__(self, store: Store, clock: Clock, inventory: Inventory) -> None:
        self._store = store
        self._clock = clock
        self._inventory = inventory
        self._known: dict[str, RoomCalendar] | None = None

    def _index(self) -> dict[str, RoomCalendar]:
        if self._known is None:
            self._known = {
                serial: RoomCalendar.from_doc(doc)
                for serial, doc in list(self._store.scan(ROOM_CALENDARS).items())
            }
        return self._known

    def of(self, serial: str) -> RoomCalendar | None:
        """The unit's latest reading, or None when its agent has read none."""
        return self._index().get(serial)

    def known(self) -> Mapping[str, RoomCalendar]:
        """Every unit's latest reading, by serial (read-only)."""
        return self._index()

    async def take(self, site_id: str, batch: RoomCalendarBatch) -> int:
        """Keep the readings of units at the agent's site; how many were kept (a unit the
        inventory places at another site is not this agent's to speak for)."""
        now = self._clock()
        docs: dict[str, Doc] = {}
        for reading in batch.calendars:
            site = self._inventory.site_of(reading.serial)
            if site is not None and site != site_id:
                log.warning(
                    "calendar of %s from an agent of %s ignored: the unit is at %s",
                    reading.serial,
                    site_id,
                    site,
                )
                continue
            doc = reading.model_dump(mode="json")
            docs[reading.serial] = {**doc, "site_id": site_id, "received_at": now.isoformat()}
        if not docs:
            return 0
        await self._store.wait_durable(self._store.apply({ROOM_CALENDARS: docs}))
        index = self._index()
        for serial, doc in docs.items():
            index[serial] = RoomCalendar.from_doc(doc)
        return len(docs)
