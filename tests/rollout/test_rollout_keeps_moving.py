"""A rollout on the lab through all its states on a timeline the test sets: waves open when
their window opens, and a unit that cannot finish its hops tonight resumes the next night."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rollout_kit import WARSAW, World, rollout_world
from testkit.clocks import SettableClock
from testkit.waiting import wait_until

from polyfleet.simulator.testing import make_device


def poly(serial: str, firmware: str = "4.1.0_00.180034") -> object:
    return make_device(serial, firmware=firmware, provider="poly")


async def entry_of(world: World, rollout_id: str, serial: str) -> dict[str, Any]:
    rollout = await world.rollout(rollout_id)
    entry: dict[str, Any] = next(d for d in rollout["devices"] if d["serial"] == serial)
    return entry


async def wait_entry(
    world: World, rollout_id: str, serial: str, *statuses: str, hop_index: int | None = None
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        entry = await entry_of(world, rollout_id, serial)
        if entry["status"] not in statuses:
            return None
        if hop_index is not None and entry["hop_index"] != hop_index:
            return None
        return entry

    found: dict[str, Any] = await wait_until(
        check, what=f"{serial} {statuses} (hop {hop_index})", timeout=25, interval=0.1
    )
    return found


@pytest.mark.expected_seconds(20)
async def test_a_unit_moved_to_tomorrow_holds_no_later_wave(tmp_path: Path) -> None:
    """The demo's stall: the 10% wave's two-hop unit runs out of window after its first hop;
    the 100% wave still opens in its own window, and the unit resumes its second hop in its
    next window, saying so, until the rollout is done."""
    night = (datetime.now(WARSAW) + timedelta(days=2)).date()

    def at(day_offset: int, hour: int, minute: int, second: int = 0) -> datetime:
        local = datetime(night.year, night.month, night.day, hour, minute, second, tzinfo=WARSAW)
        return (local + timedelta(days=day_offset)).astimezone(UTC)

    clock = SettableClock(datetime.now(UTC))  # the controller's; the agents keep real time
    sites = {
        "krakow": [
            poly("A1"),  # the canary
            poly("M0", firmware="4.1.0.382263"),  # two hops, the 10% wave
            poly("Z1"),
            poly("Z2"),
        ]
    }
    async with rollout_world(tmp_path, sites, clock=clock) as world:  # type: ignore[arg-type]
        plan = await world.plan(
            waves="10%,100%",
            window="01:00-02:00",
            start=night.isoformat(),
            wave_gap="1h",
            hop_length="20m",
            per_site=2,
        )
        rollout_id = plan["id"]
        waves = {w["name"]: w["devices"] for w in plan["waves"]}
        assert waves == {"canary": ["A1"], "10%": ["M0"], "100%": ["Z1", "Z2"]}
        await world.act(rollout_id, "start")

        # The canary night: A1 in its window, nothing else yet.
        clock.now = at(0, 1, 5)
        await wait_entry(world, rollout_id, "A1", "done")
        assert (await entry_of(world, rollout_id, "Z1"))["status"] == "waiting_window"

        # The 10% wave, one second before its window closes: M0's first hop is ordered...
        clock.now = at(0, 2, 59, 59)
        await wait_entry(world, rollout_id, "M0", "downloading", "installing", "verifying")
        # ...and it ends after the window has closed: the second hop waits for tomorrow.
        clock.now = at(0, 3, 5)
        moved = await wait_entry(world, rollout_id, "M0", "waiting_window", hop_index=1)
        assert moved["window"]["start"] == at(1, 2, 0).astimezone(WARSAW).isoformat()
        (resumes,) = [n for n in moved["notes"] if n["code"] == "resumes_next_window"]
        assert "hop 1 of 2 done" in resumes["text"]
        assert world.devices["M0"].firmware_version == "4.1.0_00"

        # The 100% wave opens in its own window although M0 is not finished.
        for serial in ("Z1", "Z2"):
            await wait_entry(world, rollout_id, serial, "done")
        assert (await world.rollout(rollout_id))["status"] == "running"

        # The next night, M0 goes on where it stopped and the rollout ends.
        clock.now = at(1, 2, 10)
        done = await world.wait_status(rollout_id, "done", "halted", timeout=25)
        assert done["status"] == "done", done.get("halt")
        assert {d["serial"]: d["status"] for d in done["devices"]} == dict.fromkeys(
            ("A1", "M0", "Z1", "Z2"), "done"
        )
        assert [d.version for d in world.devices["M0"].downloads] == [
            "4.1.0_00.180034",
            "4.2.2-408037",
        ]
        assert world.devices["M0"].firmware_version == "4.2.2"
        assert [h["action"] for h in done["history"]][-1] == "finish"
        # Each unit once, counted once, and shown with the version it reports now.
        assert sorted(d["serial"] for d in done["devices"]) == ["A1", "M0", "Z1", "Z2"]
        assert done["summary"]["by_status"] == {"done": 4}
        assert {d["installed"] for d in done["devices"]} == {"4.2.2.408037"}


async def test_a_unit_whose_window_passed_is_judged_again_at_its_new_moment(
    tmp_path: Path,
) -> None:
    """S4 at run time: planned on its contract's last day, the unit's windows pass unused;
    its next window falls after the contract, so it is held not_entitled with the day its
    entitlement ended instead of being ordered."""
    last_day = datetime(2028, 1, 9).date()  # the kit's contracts end on 2028-01-09
    clock = SettableClock(datetime.now(UTC))  # the controller's; the agents keep real time
    sites = {"krakow": [poly("L1"), poly("L2")]}
    async with rollout_world(tmp_path, sites, clock=clock) as world:  # type: ignore[arg-type]
        plan = await world.plan(
            waves="100%", window="01:00-02:00", start=last_day.isoformat(), wave_gap="1h"
        )
        assert {d["serial"]: d["status"] for d in plan["devices"]} == {
            "L1": "planned",
            "L2": "planned",
        }
        await world.act(plan["id"], "start")
        # The controller was down through both windows of its last day.
        clock.now = datetime(2028, 1, 10, 0, 30, tzinfo=WARSAW).astimezone(UTC)
        done = await world.wait_status(plan["id"], "done", "halted", timeout=20)
        for entry in done["devices"]:
            assert entry["status"] == "held", entry
            (reason,) = [r for r in entry["reasons"] if r["code"] == "not_entitled"]
            assert "2028-01-09" in reason["text"], reason
            assert "at 2028-01-10 0" in reason["text"], reason  # its next window
        assert world.devices["L1"].downloads == world.devices["L2"].downloads == []
