"""What pages ask of many devices at once (per site, rooms, cameras, versions) follows changes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller_testkit import AGENT, inventory
from testkit.clocks import SettableClock
from testkit.reports import batch, report, snapshot

from polyfleet.controller.services.inventory import DeviceFilter, Inventory
from polyfleet.shared.schema import ReportBatch

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def post(inv: Inventory, clock: SettableClock, *snaps: dict[str, Any]) -> None:
    """One batch from krk's agent with ``snaps`` collected now."""
    for snap in snaps:
        snap["collected_at"] = clock.now.isoformat()
    await inv.ingest(AGENT, ReportBatch.model_validate(batch(*(report(s) for s in snaps))))


def queries(inv: Inventory) -> dict[str, Any]:
    """Every answer the index gives, for comparing before and after a restart."""
    return {
        "krk": inv.serials("krk"),
        "waw": inv.serials("waw"),
        "rooms": inv.rooms(),
        "krk_rooms": inv.rooms("krk"),
        "waw_rooms": inv.rooms("waw"),
        "versions": inv.firmware_versions(),
        "cameras": inv.device_detail("G7")["cameras"],
        "sites": [(site["id"], site["devices"]) for site in inv.sites()],
        "waw_devices": [device["serial"] for device in inv.devices(DeviceFilter(site="waw"))],
    }


async def test_site_room_camera_and_version_answers_follow_every_device_change(
    tmp_path: Path,
) -> None:
    """Devices per site, rooms, E70 cameras per host and reported versions follow new reports,
    a firmware update, a move, a room set by hand or by the registry; a restart agrees."""
    clock = SettableClock(T0)
    async with inventory(tmp_path, clock) as (inv, store):
        for site in ("krk", "waw"):
            await inv.add_site(site, name=site, timezone="Europe/Warsaw")
        await post(
            inv,
            clock,
            snapshot("G7", model="g7500"),
            snapshot("CAM", model="studio_e70", host_serial="G7", version="1.3.0"),
            snapshot("X1"),
        )
        assert inv.serials("krk") == {"G7", "CAM", "X1"} and inv.serials("waw") == set()
        assert inv.device_detail("G7")["cameras"] == ["CAM"]
        assert inv.firmware_versions() == ["1.3.0", "4.1.0"]
        await inv.set_room("X1", "Wawel")
        clock.advance(60)
        await post(inv, clock, snapshot("X1", version="4.2.2"))
        assert inv.firmware_versions() == ["1.3.0", "4.1.0", "4.2.2"]
        assert inv.rooms("krk") == ["Wawel"]
        await inv.move_device("G7", "waw")
        assert inv.serials("waw") == {"G7", "CAM"} and inv.site_of("CAM") == "waw"
        seq, placed = inv.place({"G7": "Vistula", "X1": "not over an admin's room"})
        assert placed == ["G7"]
        await store.wait_durable(seq)
        await inv.set_room("X1", None)
        answers = queries(inv)
        assert answers == {
            "krk": {"X1"},
            "waw": {"G7", "CAM"},
            "rooms": ["Vistula"],
            "krk_rooms": [],
            "waw_rooms": ["Vistula"],
            "versions": ["1.3.0", "4.1.0", "4.2.2"],
            "cameras": ["CAM"],
            "sites": [("krk", 1), ("waw", 2)],
            "waw_devices": ["CAM", "G7"],
        }
    async with inventory(tmp_path, clock) as (again, _):
        assert queries(again) == answers
